"""Export the current view as a PNG with matplotlib (arrays come from the current trace event)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def export_png(app, directory: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, cls = app.layer
    event = app.current_event()
    panels: list[tuple[str, np.ndarray]] = []
    if event is not None:
        for field in ("patch", "kernel", "products", "window", "vector", "i", "f", "g", "o", "c", "h",
                      "probabilities", "contributions", "merged"):
            value = getattr(event, field, None)
            if isinstance(value, np.ndarray) and value.size:
                arr = value[..., 0] if value.ndim == 3 else value
                panels.append((field, np.atleast_2d(arr)))
    out = app.trace.output(name)
    panels.append(("layer output", out[..., int(np.argmax(np.abs(out).mean(axis=(0, 1))))] if out.ndim == 3
                   else np.atleast_2d(out.reshape(out.shape[0], -1) if out.ndim == 2 else out)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3), squeeze=False)
    for ax, (title, arr) in zip(axes[0], panels):
        scale = float(np.nanmax(np.abs(arr))) or 1.0
        im = ax.imshow(arr, cmap="coolwarm", vmin=-scale, vmax=scale, aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    label = event.label if event is not None else name
    fig.suptitle(f"{app.trace.model_name}: {label}", fontsize=10)
    fig.tight_layout()
    path = directory / f"nntrace-{label.replace(':', '-')}-{time.strftime('%H%M%S')}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
