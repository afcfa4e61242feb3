"""Rendering helpers: colour scales readable on dark and light themes, half-block images, heatmaps."""
from __future__ import annotations

import numpy as np
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


def half_block_image(rgb: np.ndarray, box: tuple[int, int, int, int] | None = None) -> Text:
    """`(h, w, 3)` 0–255 pixels as half-block cells (two pixel rows per text row); `box` =
    (top, left, height, width) is outlined by brightening those pixels."""
    img = np.clip(np.asarray(rgb, np.float32), 0, 255)
    if box is not None:
        top, left, bh, bw = box
        mask = np.zeros(img.shape[:2], bool)
        mask[max(top, 0):max(top + bh, 0), max(left, 0):max(left + bw, 0)] = True
        img = np.where(mask[..., None], 255 - (255 - img) * 0.35, img * 0.55)
    if img.shape[0] % 2:
        img = np.concatenate([img, np.zeros((1,) + img.shape[1:], np.float32)])
    text = Text()
    for r in range(0, img.shape[0], 2):
        for c in range(img.shape[1]):
            t, b = img[r, c].astype(int), img[r + 1, c].astype(int)
            text.append("▀", style=f"rgb({t[0]},{t[1]},{t[2]}) on rgb({b[0]},{b[1]},{b[2]})")
        text.append("\n")
    return text


def half_block_heatmap(values: np.ndarray, scale: float | None = None, hidden: np.ndarray | None = None,
                       mark: tuple[int, int] | None = None) -> Text:
    """A 2-D array as diverging colours, two rows per text row. `hidden` cells show dark (not yet
    stepped); `mark` (row, col) is drawn white."""
    v = np.asarray(values, np.float32)
    if scale is None:
        finite = np.abs(v[np.isfinite(v)])
        scale = float(finite.max()) if finite.size else 1.0
    colours = [[heat(float(x), scale) for x in row] for row in v]
    if hidden is not None:
        for r, c in zip(*np.nonzero(hidden)):
            colours[r][c] = "rgb(30,30,30)"
    if mark is not None and 0 <= mark[0] < v.shape[0] and 0 <= mark[1] < v.shape[1]:
        colours[mark[0]][mark[1]] = "rgb(255,255,255)"
    if len(colours) % 2:
        colours.append(["default"] * v.shape[1])
    text = Text()
    for r in range(0, len(colours), 2):
        for c in range(v.shape[1]):
            bottom = colours[r + 1][c]
            text.append("▀", style=f"{colours[r][c]} on {bottom}" if bottom != "default" else colours[r][c])
        text.append("\n")
    return text


def number_grid(values: np.ndarray, fmt: str = "{:7.3f}", scale: float | None = None,
                special: np.ndarray | None = None, special_style: str = "dim italic") -> Text:
    """A small 2-D array as coloured numbers; cells where `special` is true use `special_style`."""
    v = np.asarray(values, np.float32)
    scale = float(np.nanmax(np.abs(v))) if scale is None and v.size else (scale or 1.0)
    text = Text()
    for r, row in enumerate(v):
        for c, x in enumerate(row):
            style = special_style if special is not None and special[r, c] else f"bold {heat(float(x), scale)}"
            text.append((fmt.format(x) if np.isfinite(x) else " " * (len(fmt.format(0.0)) - 3) + "pad") + " ",
                        style=style)
        text.append("\n")
    return text


def bar(value: float, width: int = 30) -> str:
    n = int(round(max(0.0, min(1.0, value)) * width))
    return "█" * n + "·" * (width - n)


def side_by_side(blocks: list[Text], gap: int = 3) -> Text:
    """Join multi-line Texts column-wise (cheaper than a rich Table for fixed-width blocks)."""
    split = [b.split("\n", allow_blank=True) for b in blocks]
    widths = [max((line.cell_len for line in lines), default=0) for lines in split]
    height = max(len(lines) for lines in split)
    out = Text()
    for r in range(height):
        for i, lines in enumerate(split):
            line = lines[r] if r < len(lines) else Text()
            out.append_text(line)
            if i < len(split) - 1:
                out.append(" " * (widths[i] - line.cell_len + gap))
        out.append("\n")
    return out
