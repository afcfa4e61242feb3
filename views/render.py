"""Rendering helpers: colour scales readable on dark and light themes, half-block images, heatmaps."""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

NEG, POS = (59, 110, 196), (214, 96, 45)   # blue for negative, orange for positive
MID = (128, 128, 128)


def mix(a: tuple, b: tuple, t: float) -> str:
    r, g, bl = (int(x + (y - x) * t) for x, y in zip(a, b))
    return f"rgb({r},{g},{bl})"


def heat(value: float, scale: float) -> str:
    """A diverging colour: grey at 0, orange for positive, blue for negative (by |value| / scale)."""
    if not np.isfinite(value):
        return "rgb(60,60,60)"
    t = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    return mix(MID, POS if value >= 0 else NEG, t)


#: 0 → 1 for gates and probabilities: dark purple, teal, yellow.
SEQUENTIAL = ((48, 18, 84), (33, 145, 140), (253, 231, 37))
HIDDEN = "rgb(30,30,30)"   # a cell not computed yet
MARK = "rgb(255,255,255)"  # the selected cell


@dataclass(frozen=True)
class Scale:
    """A colour scale with its numeric range: `sequential` from lo to hi (gates 0…1), or
    `diverging` centred on 0 from −m (blue) through 0 (grey) to +m (orange)."""

    lo: float
    hi: float
    kind: str = "diverging"

    @classmethod
    def gate(cls) -> "Scale":
        return cls(0.0, 1.0, "sequential")

    @classmethod
    def signed(cls, values: np.ndarray) -> "Scale":
        v = np.abs(np.asarray(values, np.float64))
        v = v[np.isfinite(v)]
        m = float(v.max()) if v.size and v.max() > 0 else 1.0
        return cls(-m, m, "diverging")

    def colour(self, value: float) -> str:
        if not np.isfinite(value):
            return HIDDEN
        if self.kind == "diverging":
            return heat(value, self.hi)
        t = min(max((value - self.lo) / ((self.hi - self.lo) or 1.0), 0.0), 1.0)
        low, mid, high = SEQUENTIAL
        return mix(low, mid, t * 2) if t < 0.5 else mix(mid, high, t * 2 - 1)

    def stops(self) -> list[tuple[float, float, float]]:
        """The scale's colours from lo to hi as 0–1 RGB (for matplotlib)."""
        rgb = (NEG, MID, POS) if self.kind == "diverging" else SEQUENTIAL
        return [tuple(c / 255 for c in stop) for stop in rgb]

    def label(self, value: float) -> str:
        if 0 < abs(value) < 0.01:  # gradients: two significant digits rather than 0.00
            return f"{value:+.1e}" if self.kind == "diverging" else f"{value:.1e}"
        return f"{value:+.2f}" if self.kind == "diverging" else f"{value:.2f}"

    def legend(self, width: int = 16) -> Text:
        """`−1.23 ▆▆▆▆ 0 ▆▆▆▆ +1.23` or `0.00 ▆▆▆▆▆▆ 1.00`: the colours and their numbers."""
        text = Text(self.label(self.lo) + " ", style="dim")
        for k in range(width):
            value = self.lo + (self.hi - self.lo) * (k + 0.5) / width
            if self.kind == "diverging" and k == width // 2:
                text.append(" 0 ", style="dim")
            text.append("█", style=self.colour(value))
        text.append(" " + self.label(self.hi), style="dim")
        return text


@lru_cache(maxsize=65536)
def style(spec: str) -> Style:
    return Style.parse(spec)


class Block:
    """Fixed lines of styled cells, rendered straight to segments (no span bookkeeping), so large
    half-block pictures stay cheap to draw."""

    def __init__(self, lines: list[list[Segment]]) -> None:
        self.lines = lines
        self.width = max((sum(len(s.text) for s in line) for line in lines), default=0)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines:
            yield from line
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self.width, self.width)


_CONSOLE = Console(width=1000, file=io.StringIO(), color_system="truecolor")


def as_block(item: "Text | Block") -> Block:
    if isinstance(item, Block):
        return item
    lines = [list(line.render(_CONSOLE)) for line in item.split("\n", allow_blank=True)]
    while lines and not lines[-1]:
        lines.pop()
    return Block(lines)


def half_block_image(rgb: np.ndarray, box: tuple[int, int, int, int] | None = None) -> Block:
    """`(h, w, 3)` 0–255 pixels as half-block cells (two pixel rows per text row); `box` =
    (top, left, height, width) is outlined by brightening those pixels."""
    img = np.clip(np.nan_to_num(np.asarray(rgb, np.float32)), 0, 255)
    if box is not None:
        top, left, bh, bw = box
        mask = np.zeros(img.shape[:2], bool)
        mask[max(top, 0):max(top + bh, 0), max(left, 0):max(left + bw, 0)] = True
        img = np.where(mask[..., None], 255 - (255 - img) * 0.35, img * 0.55)
    if img.shape[0] % 2:
        img = np.concatenate([img, np.zeros((1,) + img.shape[1:], np.float32)])
    px = img.astype(int)
    lines = []
    for r in range(0, px.shape[0], 2):
        lines.append([Segment("▀", style(f"rgb({t[0]},{t[1]},{t[2]}) on rgb({b[0]},{b[1]},{b[2]})"))
                      for t, b in zip(px[r].tolist(), px[r + 1].tolist())])
    return Block(lines)


def half_block_heatmap(values: np.ndarray, scale: "float | Scale | None" = None, hidden: np.ndarray | None = None,
                       mark: tuple[int, int] | None = None) -> Block:
    """A 2-D array as colours, two rows per text row. `scale`: a Scale, or a float m for the
    diverging scale −m…+m (default: the largest |value|). `hidden` cells show dark (not yet
    stepped); `mark` (row, col) is drawn white."""
    v = np.asarray(values, np.float32)
    if not isinstance(scale, Scale):
        scale = Scale.signed(v) if scale is None else Scale(-float(scale), float(scale))
    colours = [[scale.colour(float(x)) for x in row] for row in v]
    if hidden is not None:
        for r, c in zip(*np.nonzero(hidden)):
            colours[r][c] = HIDDEN
    if mark is not None and 0 <= mark[0] < v.shape[0] and 0 <= mark[1] < v.shape[1]:
        colours[mark[0]][mark[1]] = MARK
    if len(colours) % 2:
        colours.append(["default"] * v.shape[1])
    lines = []
    for r in range(0, len(colours), 2):
        lines.append([Segment("▀", style(f"{top} on {bottom}" if bottom != "default" else top))
                      for top, bottom in zip(colours[r], colours[r + 1])])
    return Block(lines)


@dataclass
class Heatmap:
    """One picture a view shows: values `(rows, cols)` (NaN = not computed yet) on a Scale, with
    what its axes are; drawn in the terminal and, the same way, in the PNG export."""

    title: str
    values: np.ndarray
    scale: Scale
    rows: str = ""                         # what a row is, e.g. "unit"
    cols: str = ""                         # what a column is, e.g. "token"
    col_labels: "list[str] | None" = None  # e.g. the tokens
    first_col: int = 0                     # the index of column 0 (a window of tokens)
    mark: "tuple[int, int] | None" = None

    def block(self) -> Block:
        v = np.asarray(self.values, np.float32)
        return half_block_heatmap(v, self.scale, hidden=np.isnan(v), mark=self.mark)


def number_grid(values: np.ndarray, fmt: str = "{:7.3f}", scale: float | None = None,
                special: np.ndarray | None = None, special_style: str = "dim italic", withheld: bool = False,
                special_text: str | None = None) -> Text:
    """A small 2-D array as coloured numbers; cells where `special` is true use `special_style`;
    `withheld` shows `?` in every cell (a lesson question is open)."""
    if withheld:
        width = len(fmt.format(0.0))
        return Text("\n".join(" ".join("?".rjust(width) for _ in row) for row in np.atleast_2d(values)) + "\n")
    v = np.asarray(values, np.float32)
    scale = float(np.nanmax(np.abs(v))) if scale is None and v.size else (scale or 1.0)
    text = Text()
    for r, row in enumerate(v):
        for c, x in enumerate(row):
            is_special = special is not None and special[r, c]
            style = special_style if is_special else f"bold {heat(float(x), scale)}"
            pad = " " * (len(fmt.format(0.0)) - 3) + "pad"
            shown = pad if (is_special and special_text) or not np.isfinite(x) else fmt.format(x)
            text.append(shown + " ", style=style)
        text.append("\n")
    return text


def bar(value: float, width: int = 30) -> str:
    n = int(round(max(0.0, min(1.0, value)) * width))
    return "█" * n + "·" * (width - n)


def stack(*items: "Text | Block") -> Block:
    """Blocks (or Texts) one under the other."""
    return Block([line for item in items for line in as_block(item).lines])


def side_by_side(items: list["Text | Block"], gap: int = 3) -> Block:
    """Join multi-line blocks column-wise (cheaper than a rich Table for fixed-width blocks)."""
    blocks = [as_block(i) for i in items]
    height = max((len(b.lines) for b in blocks), default=0)
    lines = []
    for r in range(height):
        line: list[Segment] = []
        for i, b in enumerate(blocks):
            cells = b.lines[r] if r < len(b.lines) else []
            line.extend(cells)
            if i < len(blocks) - 1:
                used = sum(len(s.text) for s in cells)
                line.append(Segment(" " * (b.width - used + gap)))
        lines.append(line)
    return Block(lines)
