"""The experiment report in the app: one group's table (mean ± sd over seeds) and its loss curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from nntrace.views.render import half_block_image

FIGURES = Path(__file__).resolve().parents[1] / "reports" / "figures"


def report_view(report: list[dict], group: str, width: int) -> Group:
    """`report`: the records of reports/experiments.json; `group` e.g. "lstm_direction"."""
    from nntrace.models.experiments import variant_stats

    rows = [r for r in report if r["group"] == group]
    if not rows:
        return Group(Text(f"the experiment report has no group '{group}'", style="bold red"))
    stats = variant_stats(rows)
    seeds = max(s["seeds"] for s in stats)
    title = Text(f"experiments: {group} ({rows[0].get('n_test', '?')} test samples; "
                 f"{'mean ± sd over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed per variant'})",
                 style="bold")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("variant", "seeds", "test macro-F1", "val macro-F1"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for s in stats:
        table.add_row(s["label"], str(s["seeds"]), f"{s['test_mean']:.4f} ± {s['test_sd']:.4f}",
                      f"{s['val_mean']:.4f} ± {s['val_sd']:.4f}")
    parts = [title, table]
    figure = FIGURES / f"{group}.png"
    if figure.exists():
        parts += [Text("loss curves (training left, validation right; first seed):", style="dim"),
                  loss_picture(figure, width)]
    return Group(*parts)


def loss_picture(path: Path, width: int):
    """The group's loss figure, scaled to the panel (two pixel rows per text row)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w = max(20, min(width - 2, img.width))
        h = max(2, int(img.height * w / img.width * 0.9))
        return half_block_image(np.asarray(img.resize((w, h)), np.float32))
