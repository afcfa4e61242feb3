"""Feature-map gallery: every channel of a conv layer's output, scratch beside Keras."""
from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from rich.console import Group

from nntrace.views.render import Scale, half_block_heatmap, side_by_side, stack


def gallery_text(layer: str, scratch: np.ndarray, keras: np.ndarray | None, per_row: int = 2) -> Group:
    """`scratch` `(h, w, channels)`; each channel as a heatmap, Keras's map beside it when loaded."""
    title = Text(f"{layer}: {scratch.shape[-1]} feature maps ({scratch.shape[0]}×{scratch.shape[1]}), "
               f"{'scratch | Keras' if keras is not None else 'scratch (Keras not loaded yet)'}\n", style="bold")
    scale = Scale.signed(scratch)
    blocks = []
    for ch in range(scratch.shape[-1]):
        maps = [half_block_heatmap(scratch[..., ch], scale=scale)]
        if keras is not None:
            maps.append(half_block_heatmap(keras[..., ch], scale=scale))
        blocks.append(stack(Text(f"channel {ch}", style="dim"), side_by_side(maps, gap=1)))
    rows = [side_by_side(blocks[i:i + per_row], gap=4) for i in range(0, len(blocks), per_row)]
    legend = Text("colours (every map, one scale): ", style="dim")
    legend.append_text(scale.legend())
    return Group(title, legend, *rows)


class GalleryScreen(ModalScreen):
    BINDINGS = [Binding("escape,g,q", "app.pop_screen", "close")]
    DEFAULT_CSS = "GalleryScreen > VerticalScroll { background: $surface; border: round $accent; }"

    def __init__(self, text: Group) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.text)
