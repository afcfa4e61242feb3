"""Export the current view as a PNG: the same pictures as the screen, with the same colour scales.

The pictures come from the view table (`View.heatmaps`): heatmaps with their axes (units × tokens
with the tokens as labels, rows × cols), drawn with matplotlib in the colours of the terminal.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from nntrace.views.render import Heatmap
from nntrace.views.step_views import ViewContext, view_for


def colormap(heatmap: Heatmap):
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list(heatmap.scale.kind, heatmap.scale.stops())
    return cmap.with_extremes(bad=(30 / 255, 30 / 255, 30 / 255))  # not computed yet, as on screen


def draw(ax, fig, heatmap: Heatmap) -> None:
    from matplotlib.patches import Rectangle

    values = np.ma.masked_invalid(np.asarray(heatmap.values, np.float64))
    rows, cols = values.shape
    image = ax.imshow(values, cmap=colormap(heatmap), vmin=heatmap.scale.lo, vmax=heatmap.scale.hi,
                      interpolation="nearest", aspect="auto" if rows == 1 or cols > 2 * rows else "equal")
    ax.set_title(heatmap.title, fontsize=9)
    if heatmap.col_labels and len(heatmap.col_labels) == cols:
        ax.set_xticks(range(cols), heatmap.col_labels, rotation=60, ha="right", fontsize=7)
    else:
        step = max(1, cols // 8)
        ax.set_xticks(range(0, cols, step), [str(heatmap.first_col + c) for c in range(0, cols, step)], fontsize=7)
    if rows > 1:
        step = max(1, rows // 8)
        ax.set_yticks(range(0, rows, step), [str(r) for r in range(0, rows, step)], fontsize=7)
    else:
        ax.set_yticks([])
    ax.set_xlabel(heatmap.cols, fontsize=8)
    ax.set_ylabel(heatmap.rows, fontsize=8)
    if heatmap.mark is not None:
        r, c = heatmap.mark
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.5))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def export_png(ctx: ViewContext, directory: Path) -> Path:
    """Write `nntrace-<label>-<time>.png` into `directory`; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = view_for(ctx.event, ctx.trace).heatmaps(ctx)
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps) + 0.6, 3.6), squeeze=False)
    for ax, heatmap in zip(axes[0], maps):
        draw(ax, fig, heatmap)
    name = ctx.replay.layer[0]
    label = ctx.event.label if ctx.event is not None else name
    fig.suptitle(f"{ctx.trace.model_name}: {label}", fontsize=10)
    fig.tight_layout()
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)
    path = directory / f"nntrace-{safe}-{time.strftime('%H%M%S')}.png"
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
