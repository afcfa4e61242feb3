"""What every view is given and shares: the view context, equation lines that never wrap, blocks
side by side, the Keras note and the colour legends."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from rich.text import Text

from nntrace.views.formulas import num
from nntrace.views.render import Heatmap, Scale, side_by_side, stack
from nntrace.views.replay import Replay


@dataclass
class ViewContext:
    replay: Replay
    event: Any                       # the current event (None: a layer without steps)
    keras: np.ndarray | None = None  # Keras's output of this layer for the sample, when shown
    width: int = 100                 # columns available
    keras_diff: float | None = None  # max |scratch − Keras| of the layer, when known
    hidden: frozenset = frozenset()  # quantities withheld until a lesson question is answered

    @property
    def trace(self):
        return self.replay.trace

    def shown(self, name: str, text: str) -> str:
        """`text`, or `?` while the quantity `name` is withheld."""
        return "?" if name in self.hidden else text


def line(ctx: ViewContext, full: str, short: str, reserve: int = 0) -> str:
    """An equation line: the full form when it fits the panel (with `reserve` columns still to
    come), else the short one, so that an equation is never wrapped."""
    return full if len(full) + reserve <= ctx.width else short


def fit(blocks: list, width: int, gap: int = 3):
    """Side by side when they fit in `width` columns, else one under the other."""
    row = side_by_side(blocks, gap=gap)
    return row if row.width <= width else stack(*blocks)


def keras_note(text: Text, ctx: ViewContext, index: tuple, name: str = "value") -> None:
    if ctx.keras is not None and name not in ctx.hidden:
        keras = np.asarray(ctx.keras)
        index = index[len(index) - keras.ndim:] if keras.ndim < len(index) else index  # 1-D conv: one row
        text.append(f"   Keras: {num(float(keras[index]))}", style="italic")


def legends(maps: list[Heatmap]) -> Text:
    """One line per distinct scale: which pictures use it and its numbers."""
    seen: dict[Scale, list[str]] = {}
    for m in maps:
        seen.setdefault(m.scale, []).append(m.title)
    text = Text()
    for k, (scale, titles) in enumerate(seen.items()):
        text.append(("\n" if k else "") + f"colours of {', '.join(titles)}: ", style="dim")
        text.append_text(scale.legend())
    return text



@dataclass(frozen=True)
class View:
    render: Callable[[ViewContext], Any]
    heatmaps: Callable[[ViewContext], list[Heatmap]] | None = None
