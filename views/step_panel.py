"""The step panel: the current step's view, and the cursor keys that move over its grid."""
from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from nntrace.views.replay import JumpError, Replay


class StepPanel(VerticalScroll, can_focus=True):
    """Shows a renderable; arrows and `<` `>` move the replay's cursor and post `Moved`."""

    DEFAULT_CSS = "StepPanel { padding: 0 1; } StepPanel:focus { border: none; }"
    BINDINGS = [
        Binding("up", "cursor(-1, 0)", "↑", show=False), Binding("down", "cursor(1, 0)", "↓", show=False),
        Binding("left", "cursor(0, -1)", "←", show=False), Binding("right", "cursor(0, 1)", "→", show=False),
        Binding("less_than_sign", "channel(-1)", "< ch", show=False),
        Binding("greater_than_sign", "channel(1)", "> ch", show=False),
        Binding("pageup", "scroll_page_up", show=False), Binding("pagedown", "scroll_page_down", show=False),
    ]

    @dataclass
    class Moved(Message):
        """The cursor moved (or could not: `note` says why)."""

        note: str

    def __init__(self, replay: Replay, **kwargs) -> None:
        super().__init__(**kwargs)
        self.replay = replay

    def compose(self):
        yield Static(id="view")

    def show(self, renderable, layout: bool = True) -> None:
        self.query_one("#view", Static).update(renderable, layout=layout)

    def action_cursor(self, d_row: int, d_col: int) -> None:
        self.move(lambda: self.replay.move_cursor(d_row, d_col))

    def action_channel(self, delta: int) -> None:
        self.move(lambda: self.replay.move_channel(delta))

    def move(self, how) -> None:
        try:
            note = how() or ""
        except JumpError as exc:
            note = str(exc)
        self.post_message(self.Moved(note))


