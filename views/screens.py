"""Modal screens: the key help and a one-line prompt."""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Markdown

HELP = """\
# nntrace keys

| key | action |
|---|---|
| `n` / `p` | next / previous step (a conv patch, pooling window, unit, token…) |
| `]` / `[` | next / previous layer (or click one in the list) |
| `←` `→` `↑` `↓` | move the cursor: rows × cols (conv, pooling), tokens × units (recurrent), units, classes |
| `<` / `>` | previous / next filter or channel at the same cell |
| `j` | jump: `step 7` (or `7`), `unit 0`, `class 3`, `token tidak`, `token 2`, `row col filter`, `row col channel`, `filter 5` |
| `space`, `+`, `-` | play / pause, faster, slower |
| `b` | the backward pass (from the loss back to the input) / the forward pass |
| `l` | the class the backward pass's loss is taken against (default: the predicted class) |
| `v` | text models: how much gradient reaches each token, the shipped SimpleRNN beside the LSTM |
| `k` | show / hide the Keras values (tf.GradientTape's in the backward pass) |
| `g` | feature-map gallery of the current layer, scratch beside Keras |
| `t` | type a new sentence (text models) |
| `e` | export the current view as PNG (same pictures and colour scales) |
| `L` | show / hide the layer list |
| `?` / `q` | this help / quit |

Steps are counted from 1; rows, columns, channels, units, classes and token positions are array
indices and start at 0. Every number on screen is a value the scratch layer recorded while computing;
Keras's own per-layer output is shown beside it once TensorFlow has loaded.
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]
    DEFAULT_CSS = "HelpScreen { align: center middle; } HelpScreen > VerticalScroll { width: 90%; max-width: 100; " \
                  "height: 90%; border: round $accent; background: $surface; }"

    def __init__(self, log: Path | None) -> None:
        super().__init__()
        self.log_file = log

    def compose(self) -> ComposeResult:
        where = f"TensorFlow's messages and any error details go to `{self.log_file}`." if self.log_file else \
            "TensorFlow's messages are discarded (the log file could not be opened)."
        with VerticalScroll():
            yield Markdown(HELP + "\n" + where + "\n")


class PromptScreen(ModalScreen[str]):
    """A one-line question; dismisses with the typed text (or None on escape)."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = "PromptScreen { align: center middle; } PromptScreen > Input { width: 90%; max-width: 76; }"

    def __init__(self, placeholder: str) -> None:
        super().__init__()
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        yield Input(placeholder=self.placeholder)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
