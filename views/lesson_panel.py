"""The lesson panel: the step's text, the question or task, feedback and an answer box.

It plays a `lessons.runner.LessonSession`: moves the app's replay model to each step's position and
unit, withholds what a question hides, checks answers and tasks, and asks the app to redraw. The
app's keys stay commands while the answer box is not focused: `a` focuses it, Escape leaves it.
"""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Input, Markdown, Static


class AnswerBox(Input):
    """The answer line; Escape gives the keys back to the app."""

    BINDINGS = [Binding("escape", "leave", "back to the app keys")]
    DEFAULT_CSS = "AnswerBox, AnswerBox:focus { border: none; height: 1; padding: 0 1; background: $boost; }"

    def action_leave(self) -> None:
        self.app.query_one("#main").focus()


class LessonPanel(Vertical):
    DEFAULT_CSS = """
    LessonPanel { height: auto; max-height: 50%; border-top: heavy $accent; border-title-style: bold;
                  border-title-align: left; padding: 0 1; }
    LessonPanel > VerticalScroll { height: auto; max-height: 6; }
    LessonPanel Markdown { margin: 0; }
    LessonPanel > #question { height: auto; }
    LessonPanel > #feedback { height: auto; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="lesson-scroll"):
            yield Markdown(id="lesson-text")
        yield Static(id="question")
        yield Static(id="feedback")
        yield AnswerBox(id="answer", placeholder="a: answer here · Enter checks · Esc: back to the app keys")

    def fit_height(self, rows: int) -> None:
        """A short terminal keeps the lesson text to 3 scrolling lines, so the numbers stay visible."""
        self.query_one("#lesson-scroll").styles.max_height = 3 if rows < 30 else 6

    def show(self, title: str, number: int, total: int, text: str, prompt: str | None,
             options: list[str] | None, kind: str | None) -> None:
        # the title and step count sit on the panel's top border, so every text row holds the text
        self.border_title = f"{title} — step {number}/{total}"
        self.query_one("#lesson-text", Markdown).update(text.strip())
        question = Text()
        if prompt:
            label = {"compute": "Compute: ", "predict": "Predict: ", "task": "Your turn: "}.get(kind or "", "")
            question.append(label, style="bold")
            question.append(prompt)
            if options:
                question.append("\noptions (type one, or its number): " +
                                ", ".join(f"{i} {o}" for i, o in enumerate(options, 1)), style="dim")
        else:
            question.append("Enter: next step", style="dim")
        self.query_one("#question", Static).update(question)
        self.query_one("#feedback", Static).update("")
        self.query_one("#answer", Input).value = ""

    def feedback(self, text: str, style: str = "") -> None:
        self.query_one("#feedback", Static).update(Text(text, style=style))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "answer":
            event.stop()
            submit(self.app, event.value)
            event.input.value = ""


def submit(app, value: str) -> None:
    """Enter in the answer box (or on the app): check the answer or task, or go on."""
    lesson = app.lesson
    panel = app.query_one(LessonPanel)
    step = lesson.step if not lesson.finished else None
    if step is not None and not lesson.answered:
        if step.task is not None:
            fb = lesson.check_task(app.replay)
        elif not value.strip():
            panel.feedback("Type your answer in the box (press a to go there), then Enter. "
                           "Three wrong tries show the answer.", "yellow")
            return
        else:
            fb = lesson.answer(value)
        style = "bold green" if fb.correct else ("bold yellow" if fb.revealed else "red")
        panel.feedback(fb.message + ("  (Enter: next step)" if lesson.answered else ""), style)
        note_progress(app)
        app.refresh_view()
        return
    if lesson.finished or not lesson.next():
        panel.feedback(f"Lesson complete: {lesson.lesson.title}. Press q to quit.", "bold green")
        app.message = "lesson complete"
    else:
        show_lesson_step(app)
    note_progress(app)
    app.refresh_view()


def note_progress(app) -> None:
    progress = app.lesson.progress
    if progress is not None and progress.note:
        app.message = progress.note


def show_lesson_step(app) -> None:
    """Move the app to the lesson step's position and unit, and show its text and question."""
    lesson = app.lesson
    step = lesson.step
    if lesson.position is not None:
        made = lesson.current  # the pass the step reads: forward, or a backward pass
        if made.backward and app.trace is not made:
            app.show_backward(int(made.context["label"]), made)
            app.fill_layer_list()
        elif not made.backward and app.trace.backward:
            app.replay, app.keras = app.passes.forward, app.passes.forward_keras
            app.fill_layer_list()
        layer, index = lesson.position
        app.replay.go_to(layer, index)
        app.replay.unit = lesson.unit
        app.replay.clamp_unit()
    q, task = step.question, step.task
    prompt = q.prompt if q else task.prompt if task else None
    kind = q.kind if q else "task" if task else None
    panel = app.query_one(LessonPanel)
    panel.show(lesson.lesson.title, lesson.index + 1, len(lesson.lesson.steps), step.text, prompt, lesson.options(),
               kind)
    app.query_one("#main").scroll_home(animate=False)
    box = app.query_one("#answer", Input)
    if q is not None:
        box.focus()
    else:
        app.query_one("#main").focus()
    app.refresh_view()
