"""The vanishing-gradient picture: how much gradient reaches each token, ‖∂L/∂h_t‖, for two
recurrent models on the same sentence (the shipped SimpleRNN beside the shipped LSTM), read from
their backward traces' `RecurrentGradient` events."""
from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.binding import Binding

from nntrace.tracer.sanitize import clean_text
from nntrace.views.formulas import plain
from nntrace.views.gallery import GalleryScreen
from nntrace.views.render import bar

RECURRENT_CLASSES = ("Bidirectional", "LSTM", "SimpleRNN", "GRU")


def first_recurrent(trace) -> str | None:
    """The backward trace's first recurrent layer of the forward pass (the last in backward order)."""
    names = [name for name, cls in trace.layers if cls in RECURRENT_CLASSES]
    return names[-1] if names else None


def token_norms(trace, direction: str = "forward") -> dict[int, Any]:
    """time → the step's event (its `norm` is ‖∂L/∂h_t‖) of one sweep of the first recurrent layer."""
    layer = first_recurrent(trace)
    if layer is None:
        return {}
    return {e.time: e for e in trace.steps(layer) if e.kind == "recurrent_gradient" and e.direction == direction}


def gradient_flow_text(traces: list[tuple[str, Any]], sentence: str) -> Group:
    """One table: a row per token position, per model its ‖∂L/∂h_t‖ and a bar scaled to that
    model's largest norm (the forward sweep, read from the last token back to the first)."""
    title = Text(f"How much gradient reaches each token: ‖∂L/∂h_t‖ of the forward sweep, "
                 f"on \"{clean_text(sentence, 60)}\"\n", style="bold")
    title.append("Backpropagation through time starts at the last token. Each step back multiplies the "
                 "gradient by the recurrent weights and the activation's slope, so over many tokens it can "
                 "shrink (vanish) or grow; the LSTM's cell state is a second path on which each step only "
                 "multiplies it by the forget gate (δc_prev = δc·f). Try a long sentence with t.\n", style="dim")
    per_model = [(name, t, token_norms(t)) for name, t in traces]
    table = Table(show_edge=False, padding=(0, 1))
    table.add_column("pos", justify="right", no_wrap=True)
    table.add_column("token", no_wrap=True, min_width=8)
    for name, t, _ in per_model:
        label = t.context.get("label")
        classes = t.context.get("labels") or []
        against = f"loss vs '{clean_text(str(classes[label]), 10)}'" if label is not None and label < len(classes) \
            else "its loss"
        table.add_column(f"{clean_text(name, 12)} ‖∂L/∂h_t‖", justify="right", no_wrap=True, min_width=10)
        table.add_column(against, no_wrap=True, min_width=12)
    tokens = next((t.context.get("tokens") for _, t, _ in per_model if t.context.get("tokens")), []) or []
    real = [pos for pos, token in enumerate(tokens) if token]
    for pos in real:
        row: list = [str(pos), clean_text(str(tokens[pos]), 14)]
        for _, t, norms in per_model:
            e = norms.get(pos)
            if e is None:
                row += ["", ""]
                continue
            biggest = max(ev.norm for ev in norms.values()) or 1.0
            row += [plain(e.norm), Text(bar(e.norm / biggest, 12))]
        table.add_row(*row)
    padded = len(tokens) - len(real)
    note = Text((f"positions {len(real)}–{len(tokens) - 1} are padding: masked steps pass the gradient through "
                 "unchanged. " if padded else "") + "Bars are relative to each model's largest norm.", style="dim")
    return Group(title, table, note)


class FlowScreen(GalleryScreen):
    """The gallery's scrolling text screen, closed with `v` (the key that opened it)."""

    BINDINGS = [Binding("escape,v,q", "app.pop_screen", "close")]
    DEFAULT_CSS = "FlowScreen > VerticalScroll { background: $surface; border: round $accent; }"
