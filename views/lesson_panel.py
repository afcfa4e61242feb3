"""The lesson panel: the step's text, the question, an answer box and feedback.

It plays a `lessons.runner.LessonSession`: moves the app's replay model to each step's position,
checks answers typed in its box, and asks the app to redraw.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Markdown, Static


class LessonPanel(Vertical):
    DEFAULT_CSS = """
    LessonPanel { height: 14; border-top: heavy $accent; padding: 0 1; }
    LessonPanel > Markdown { height: auto; max-height: 8; margin: 0; }
    LessonPanel > #feedback { height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Markdown(id="lesson-text")
        yield Static(id="feedback")
        yield Input(id="answer", placeholder="type your answer, then Enter (Enter alone continues)")

    def show(self, title: str, number: int, total: int, text: str, prompt: str | None,
             options: list[str] | None) -> None:
        body = f"**{title}** — step {number}/{total}\n\n{text.strip()}"
        if prompt:
            body += f"\n\n**Question:** {prompt}"
            if options:
                body += "  \nOptions (type one, or its number): " + ", ".join(
                    f"{i} `{o}`" for i, o in enumerate(options, 1))
        self.query_one("#lesson-text", Markdown).update(body)
        self.query_one("#feedback", Static).update("")
        self.query_one("#answer", Input).value = ""

    def feedback(self, text: str, style: str = "") -> None:
        from rich.text import Text

        self.query_one("#feedback", Static).update(Text(text, style=style))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        app = self.app
        lesson = app.lesson
        if lesson is None or event.input.id != "answer":
            return
        event.stop()
        if not lesson.answered:
            if not event.value.strip():
                self.feedback("Type an answer first.", "yellow")
                return
            fb = lesson.answer(event.value)
            style = "bold green" if fb.correct else ("bold yellow" if fb.revealed else "red")
            self.feedback(fb.message + ("  (Enter to continue)" if lesson.answered else ""), style)
            event.input.value = ""
            return
        if lesson.next():
            show_lesson_step(app)
        else:
            self.feedback(f"Lesson complete: {lesson.lesson.title}. Press q to quit.", "bold green")
            app.message = "lesson complete"
        app.refresh_view()


def show_lesson_step(app) -> None:
    """Move the app to the lesson step's position and show its text and question."""
    lesson = app.lesson
    step = lesson.step
    if lesson.position is not None:
        layer, index = lesson.position
        app.replay.go_to(layer, index)
    q = step.question
    app.query_one(LessonPanel).show(lesson.lesson.title, lesson.index + 1, len(lesson.lesson.steps), step.text,
                                    q.prompt if q else None, lesson.options())
    app.refresh_view()
