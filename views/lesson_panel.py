"""The lesson panel: the step's text, the question, an answer box and feedback."""
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
        self.query_one("#feedback", Static).update(f"[{style}]{text}[/]" if style else text)
