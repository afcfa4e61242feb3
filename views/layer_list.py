"""The layer list: the layers in forward order, their output shapes and ✓/✗ against Keras."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from nntrace.tracer.sanitize import clean_text

SHORT = {"Normalization": "Norm", "Pooling": "Pool", "Bidirectional": "BiDir", "Vectorization": "Vec"}


def short_class(cls: str) -> str:
    for long, short in SHORT.items():
        cls = cls.replace(long, short)
    return cls


class LayerList(DataTable, can_focus=False):
    """Click a row to go to that layer (the arrow keys belong to the step cursor)."""

    DEFAULT_CSS = "LayerList { width: auto; max-width: 68; height: 1fr; }"

    compact: bool | None = None

    def show(self, trace, diffs: dict[str, tuple[float, bool]], current: int, compact: bool) -> None:
        """`diffs`: layer → (max |scratch − Keras|, passed); `compact` drops the class and shape."""
        if compact != self.compact:
            self.clear(columns=True)
            self.compact = compact
            columns = [("#", 2), ("layer", 14), ("Keras", 5)] if compact else \
                [("#", 2), ("layer", 20), ("type", 12), ("output", 10), ("vs Keras", 8)]
            for label, width in columns:
                self.add_column(label, width=width)
        else:
            self.clear()
        ends = {e.layer: e for e in trace.events if e.kind == "layer_end"}
        for k, (name, cls) in enumerate(trace.layers, 1):
            diff = diffs.get(name)
            if diff is None:
                mark = Text("…", style="dim")
            elif compact:
                mark = Text("✓" if diff[1] else "✗", style="green" if diff[1] else "bold red")
            else:
                mark = Text(f"{diff[0]:.0e} {'✓' if diff[1] else '✗'}", style="green" if diff[1] else "bold red")
            shape = ends[name].output_shape[1:] if name in ends else ()
            row: list = [str(k), Text(clean_text(name, 14 if compact else 20))]
            if not compact:
                row += [Text(clean_text(short_class(cls), 12)), "×".join(map(str, shape))[:10]]
            self.add_row(*row, mark)
        self.move_cursor(row=current)
