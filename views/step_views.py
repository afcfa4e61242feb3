"""One view per trace event kind, looked up in `VIEWS`.

A view takes a `ViewContext` (the replay model, the event, Keras's output of the layer, the width)
and returns what the screen shows: the equation of the selected element first (so it is never
below the fold), then the pictures. Every number is a field of an event, formatted by
`views.formulas`; nothing is recomputed here. `heatmaps` gives the pictures as data, for the
terminal and for the PNG export alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from nntrace.views.formulas import applied, factor, num, plain, symbol, term, terms
from nntrace.views.render import (Heatmap, Scale, bar, half_block_heatmap, half_block_image, number_grid,
                                  side_by_side, stack)
from nntrace.tracer.sanitize import clean_text
from nntrace.views.replay import RECURRENT, Replay, token_label
from nntrace.views import backward_views as bv
from nntrace.views.view_kit import View, ViewContext, fit, keras_note, legends, line  # noqa: F401 — re-exported


def activation_line(ctx: ViewContext, activation: str, z: float, value: float) -> Text:
    """`out = relu(z) = relu(+0.0890) = +0.0890` (or `out = z = …` when linear)."""
    text = Text(f"out = {applied(activation, 'z')} = ")
    if symbol(activation):
        text.append(f"{applied(activation, ctx.shown('pre_activation', num(z)))} = ")
    text.append(ctx.shown("value", num(value)), style="bold reverse")
    return text


def size_line(ctx: ViewContext, e) -> Text:
    """The output-size formula with the event's own geometry: ⌊(n + pad − k)/s⌋ + 1, per axis."""
    k = e.patch.shape[:2] if e.kind == "conv_patch" else e.window.shape
    text = Text("", style="dim")
    for axis, name in enumerate(("rows", "cols")):
        n, pad, s, out = e.input_size[axis], e.pad[axis], e.strides[axis], e.output_size[axis]
        text.append(f"{'' if axis == 0 else chr(10)}output {name} = ⌊(n + pad − k)/s⌋ + 1 = "
                    f"⌊({n} + {pad} − {k[axis]})/{s}⌋ + 1 = {ctx.shown('output_size', str(out))}")
    return text


def layer_input(trace, layer: str) -> np.ndarray | None:
    """The output of the layer before `layer` (its input), from LayerEnd events."""
    names = [n for n, _ in trace.layers]
    i = names.index(layer)
    return None if i == 0 else trace.output(names[i - 1])


# -- convolution ---------------------------------------------------------------------------------
def conv_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    seen = ctx.replay.feature_map_so_far()
    maps = [Heatmap(f"patch ch{ch}", e.patch[..., ch], Scale.signed(e.patch), "row", "col")
            for ch in range(min(e.patch.shape[-1], 1))]
    maps.append(Heatmap("kernel ch0", e.kernel[..., 0], Scale.signed(e.kernel), "row", "col"))
    maps.append(Heatmap("products ch0", e.products[..., 0], Scale.signed(e.products), "row", "col"))
    if seen is not None:
        maps.append(Heatmap(f"filter {e.filter} so far", seen, Scale.signed(ctx.trace.output(e.layer)[..., e.filter]),
                            "row", "col", mark=(e.row, e.col)))
    return maps


def conv_view(ctx: ViewContext) -> Group:
    e = ctx.event
    kh, kw, cin = e.patch.shape
    base = (getattr(e, "group", 0) or 0) * cin  # a grouped or depthwise filter reads input channels base…
    depthwise = getattr(e, "stage", "") == "depthwise"
    if depthwise:  # a separable conv's first stage: its own channels, no bias, no activation
        title = Text(f"{clean_text(e.layer)}: depthwise stage, intermediate channel {e.filter} (from input channel "
                     f"{base}) at row {e.row}, col {e.col}", style="bold")
    else:
        title = Text(f"{clean_text(e.layer)}: filter {e.filter} at output row {e.row}, col {e.col}", style="bold")
    sums = e.channel_totals
    equation = Text()
    if cin <= 4:
        names = " + ".join(f"ch{base + ch}" for ch in range(cin))
        summed = ctx.shown("channel_totals", terms(sums))
        total = ctx.shown("total", num(e.total))
        equation.append(line(ctx, f"Σ products = {names} = {summed} = {total}", f"Σ products = {summed} = {total}")
                        + "\n")
    else:
        equation.append(f"Σ products = the sum of the {cin} channel sums listed below = "
                        f"{ctx.shown('total', num(e.total))}\n")
    if depthwise:
        equation.append(f"intermediate d = Σ products = {ctx.shown('value', num(e.value))}\n", style="bold")
        equation.append("the depthwise stage adds no bias and applies no activation; the pointwise stage, whose "
                        "steps follow, mixes the intermediate channels at each cell, adds the bias and gives "
                        "the layer's output (compared with Keras there)", style="dim")
    else:
        equation.append(f"z = Σ products + bias = {ctx.shown('total', num(e.total))} {term(e.bias)} = "
                        f"{ctx.shown('pre_activation', num(e.pre_activation))}\n")
        equation.append(activation_line(ctx, e.activation, e.pre_activation, e.value))
        keras_note(equation, ctx, (e.row, e.col, e.filter))
    parts: list = [title, equation]
    if e.input_size:
        parts.append(size_line(ctx, e))
    if cin > 4:
        per_row = max(1, (ctx.width - 2) // 14)
        lines = Text("channel sums: ", style="dim")
        for ch, value in enumerate(sums):
            lines.append(f"{'' if ch % per_row else chr(10)}ch{base + ch} {ctx.shown('channel_totals', num(value))}  ")
        parts.append(lines)
    rows = []
    for ch in range(min(cin, 3)):
        grids = [stack(Text(label, style="dim"), grid) for label, grid in zip(
            [f"patch ch{base + ch}", f"× kernel ch{base + ch}", f"= products ch{base + ch}"],
            [number_grid(e.patch[..., ch], "{:+.3f}", special=e.padding, special_text="pad"),
             number_grid(e.kernel[..., ch], "{:+.3f}"),
             number_grid(e.products[..., ch], "{:+.3f}", withheld="products" in ctx.hidden)])]
        rows.append(fit(grids, ctx.width))
        rows.append(Text(f"ch{base + ch}: Σ of these {kh * kw} products = "
                         f"{ctx.shown('channel_totals', num(sums[ch]))}", style="dim"))
    if cin > 3:
        rows.append(Text(f"channels {base}–{base + 2} of {base}–{base + cin - 1} shown; every channel's sum is listed "
                         "above", style="dim"))
    parts.append(stack(*rows))
    parts.append(Text("padding cells (pad) hold 0" if e.padding.any() else "", style="dim"))
    parts.append(pictures(ctx, e))
    return Group(*parts)


def pictures(ctx: ViewContext, e) -> Any:
    """The layer's input with the patch outlined, and the feature map so far with its scale."""
    kh, kw, cin = e.patch.shape
    source = layer_input(ctx.trace, e.layer)
    blocks = []
    if source is not None and source.ndim == 3 and source.shape[-1] == 3 and cin == 3:
        lo, hi = float(source.min()), float(source.max())  # stretched to 0–255 for display only
        blocks.append(stack(Text("input, patch outlined", style="dim"), half_block_image(
            (source - lo) / max(hi - lo, 1e-6) * 255, (e.origin[0], e.origin[1], kh, kw))))
    seen = ctx.replay.feature_map_so_far()
    if seen is not None:
        if "value" in ctx.hidden:
            seen[e.row, e.col] = np.nan
        scale = Scale.signed(ctx.trace.output(e.layer)[..., e.filter])
        blocks.append(stack(Text(f"filter {e.filter}'s map so far", style="dim"),
                            half_block_heatmap(seen, scale, hidden=np.isnan(seen), mark=(e.row, e.col)),
                            scale.legend(10)))
    return fit(blocks, ctx.width) if blocks else Text()


# -- pooling ------------------------------------------------------------------------------------
def pool_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    maps = [Heatmap("window", e.window, Scale.signed(e.window), "row", "col",
                    mark=None if e.winner is None else tuple(e.winner))]
    seen = ctx.replay.feature_map_so_far()
    if seen is not None:
        maps.append(Heatmap(f"channel {e.channel} so far", seen,
                            Scale.signed(ctx.trace.output(e.layer)[..., e.channel]), "row", "col",
                            mark=(e.row, e.col)))
    return maps


def pool_view(ctx: ViewContext) -> Group:
    e = ctx.event
    ph, pw = e.window.shape
    text = Text(f"{clean_text(e.layer)}: channel {e.channel} at output row {e.row}, col {e.col} "
                f"({e.mode} pooling, {ph}×{pw} window)\n", style="bold")
    real = [float(v) for v, ok in zip(e.window.reshape(-1), e.real.reshape(-1)) if ok]
    if e.winner is not None:
        text.append(f"max({', '.join(num(v) for v in real)}) = ")
    else:
        text.append(f"({terms(real)}) / {len(real)} = ")
    text.append(ctx.shown("value", num(e.value)), style="bold reverse")
    keras_note(text, ctx, (e.row, e.col, e.channel))
    if e.winner is not None and "value" not in ctx.hidden:
        text.append(f"\nthe winner sits at window cell (row {e.winner[0]}, col {e.winner[1]})", style="dim")
    if not e.real.all():
        text.append(f"\n{int((~e.real).sum())} window cells are padding (pad) and take no part", style="dim")
    seen = ctx.replay.feature_map_so_far()
    blocks = [stack(Text("window:", style="dim"), number_grid(e.window, "{:+.4f}", special=~e.real))]
    if e.input_size:
        blocks.append(size_line(ctx, e))
    if seen is not None:
        scale = Scale.signed(ctx.trace.output(e.layer)[..., e.channel])
        blocks.append(stack(Text(f"channel {e.channel}'s map so far", style="dim"),
                            half_block_heatmap(seen, scale, hidden=np.isnan(seen), mark=(e.row, e.col)),
                            scale.legend(10)))
    return Group(text, fit(blocks, ctx.width))


# -- dense and softmax ----------------------------------------------------------------------------
def dense_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    return [Heatmap("largest x·w", e.contributions[None, :], Scale.signed(e.contributions), "", "input",
                    col_labels=[str(int(i)) for i in e.inputs])]


def dense_view(ctx: ViewContext) -> Group:
    e = ctx.event
    k = len(e.contributions)
    title = Text(f"{clean_text(e.layer)}: unit {e.unit} ({e.activation})", style="bold")
    top_sum = float(np.sum(e.contributions, dtype=np.float64))
    eq = Text()
    eq.append(f"Σ x·w = the top {k} + the other {e.n_inputs - k} = {ctx.shown('top_sum', num(top_sum))} {term(e.rest)}"
              f" = {ctx.shown('total', num(e.total))}\n")
    eq.append(f"z = Σ x·w + bias = {ctx.shown('total', num(e.total))} {term(e.bias)} = "
              f"{ctx.shown('pre_activation', num(e.pre_activation))}\n")
    if e.activation == "softmax":
        eq.append("z is this unit's logit; the layer's last step (softmax) makes the probabilities", style="dim")
    else:
        eq.append(activation_line(ctx, e.activation, e.pre_activation, e.value))
        keras_note(eq, ctx, (e.unit,))
    listing = Text()
    scale = Scale.signed(e.contributions)
    per_line = max(1, (ctx.width - 1) // 16)
    for j, (idx, contribution) in enumerate(zip(e.inputs, e.contributions)):
        listing.append(("\n" if j and j % per_line == 0 else "") + f"#{int(idx):<5d}", style="dim")
        listing.append(f"{num(contribution)}   ", style=scale.colour(float(contribution)))
    return Group(title, eq, Text(f"the {k} largest |x·w| of {e.n_inputs} inputs (#input x·w):", style="dim"),
                 listing, Text(f"Σ of the {k} above = {ctx.shown('top_sum', num(top_sum))}", style="dim"))


def class_labels(trace, n: int) -> list[str]:
    labels = trace.context.get("labels") or []
    return [str(labels[i]) if i < len(labels) else str(i) for i in range(n)]


def softmax_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    return [Heatmap("probability", e.probabilities[None, :], Scale.gate(), "", "class",
                    col_labels=class_labels(ctx.trace, len(e.probabilities)), mark=(0, ctx.replay.unit))]


def softmax_view(ctx: ViewContext) -> Group:
    e = ctx.event
    labels = class_labels(ctx.trace, len(e.probabilities))
    k = ctx.replay.unit
    best = int(np.argmax(e.probabilities))
    z_max = float(np.max(e.logits))
    eq = Text(f"{clean_text(e.layer)}: softmax over {len(labels)} classes; class {k} '{labels[k]}' selected (↑/↓)\n", style="bold")
    exp_k, total, p_k = (ctx.shown("exps", plain(e.exps[k])), ctx.shown("exps", plain(e.total)),
                         ctx.shown("probabilities", plain(e.probabilities[k])))
    values = f"exp({terms((e.logits[k], -z_max))}) / {total} = {exp_k} / {total} = "
    eq.append(line(ctx, f"p = exp(z − z_max) / Σ exp = {values}", f"p = {values}", 8))
    eq.append(p_k, style="bold reverse")
    keras_note(eq, ctx, (k,), "probabilities")
    eq.append(f"\nΣ exp = {ctx.shown('exps', terms(e.exps))} = {total}" if len(labels) <= 4 else
              f"\nΣ exp (the column below) = {total}")
    if "prediction" not in ctx.hidden and "probabilities" not in ctx.hidden:
        eq.append(f"\nthe prediction: class {best} '{labels[best]}'", style="dim")
    narrow = ctx.width < 70
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    columns = ["class", "logit z", "exp(z − z_max)", "p"] + ([] if narrow else [""]) + ["Keras"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("class", "") else "right", no_wrap=True)
    secret = "probabilities" in ctx.hidden or "prediction" in ctx.hidden
    for i, label in enumerate(labels):
        style = "reverse" if i == k else ("bold" if i == best and not secret else "")
        row = [Text(f"{i} {label}"[:14], style=style), num(e.logits[i]), ctx.shown("exps", plain(e.exps[i])),
               Text(ctx.shown("probabilities", plain(e.probabilities[i])), style=style)]
        row += [] if narrow else ["" if secret else bar(float(e.probabilities[i]), 12)]
        row.append("…" if ctx.keras is None or secret else plain(float(ctx.keras[i])))
        table.add_row(*row)
    return Group(eq, table)


# -- text ---------------------------------------------------------------------------------------
def embedding_view(ctx: ViewContext) -> Group:
    e = ctx.event
    tag = " (padding, masked)" if e.padding else " (out of vocabulary: read as [UNK])" if e.oov else ""
    text = Text(f"{clean_text(e.layer)}: position {e.position}, token ", style="bold")
    text.append("[pad]" if e.padding or e.token is None else repr(clean_text(e.token, 40)))
    text.append(f" → row {ctx.shown('token_id', str(e.token_id))} of the embedding table"
                f"{'' if 'token_id' in ctx.hidden else tag}\n")
    shown = min(len(e.vector), 16 if ctx.width >= 100 else 8)
    return Group(text, Text(f"the vector (elements 0–{shown - 1} of {len(e.vector)}):", style="dim"),
                 number_grid(e.vector[None, :shown], "{:+.4f}"))


def dropout_view(ctx: ViewContext) -> Text:
    e = ctx.event
    text = Text(f"{clean_text(e.layer)}: dropout, rate {e.rate}\n", style="bold")
    source, out = layer_input(ctx.trace, e.layer), ctx.trace.output(e.layer)
    if source is not None:
        n = min(4, np.size(out))
        text.append(f"input[0:{n}]  = {', '.join(num(v) for v in np.ravel(source)[:n])}\n")
        text.append(f"output[0:{n}] = {ctx.shown('output', ', '.join(num(v) for v in np.ravel(out)[:n]))}\n")
    if "output" not in ctx.hidden:
        text.append("At inference dropout is the identity: the output equals the input. ", style="dim")
    text.append(f"In training it zeroes each value with probability {e.rate} and scales the rest by "
                f"1/(1 − {e.rate}).", style="dim")
    return text


def flatten_view(ctx: ViewContext) -> Text:
    e = ctx.event
    c = e.input_shape[-1] if len(e.input_shape) == 3 else 1
    size = ctx.shown("size", str(len(e.sources)))
    text = Text(f"{clean_text(e.layer)}: {' × '.join(map(str, e.input_shape))} → {size} values, row by row, channels last.\n")
    if "size" in ctx.hidden:
        return text
    for k in (0, 1, c - 1 if c > 1 else 1, c, len(e.sources) - 1):
        if 0 <= k < len(e.sources):
            text.append(f"  flat[{k}] ← cell {tuple(int(v) for v in e.sources[k])}\n")
    return text


# -- recurrent ----------------------------------------------------------------------------------
GATES = ("i", "f", "g", "o")


def token_window(ctx: ViewContext, n_time: int, columns: int) -> range:
    e = ctx.event
    span = max(3, min(n_time, columns))
    start = max(0, min(e.time - span + 2, n_time - span))
    return range(start, start + span)


def recurrent_heatmaps(ctx: ViewContext, columns: int | None = None) -> list[Heatmap]:
    """Units × tokens for each quantity of the current sweep, up to the current step."""
    e = ctx.event
    sweep = ctx.replay.sweep()
    n_time = max(ev.time for ev in sweep) + 1
    names = {"lstm_step": ("i", "f", "g", "o", "c", "h"), "gru_step": ("z", "r", "h_tilde", "h")}.get(
        e.kind, ("x_part", "h_part", "pre_activation", "h"))
    window = token_window(ctx, n_time, columns or n_time)
    shown = [ev for ev in sweep if ev.step <= e.step and ev.time in window]
    units = len(e.h)
    maps = []
    for name in names:
        grid = np.full((units, len(window)), np.nan, np.float32)
        for ev in shown:
            value = getattr(ev, name)
            withheld = ev is e and (name in ctx.hidden or e.masked and "masked" in ctx.hidden)
            if value is not None and not withheld:  # a masked step has no gates
                grid[:, ev.time - window.start] = value
        if name in ("i", "f", "o", "z", "r") and ev_activation(e) == "sigmoid":
            scale = Scale.gate()
        elif name in ("g", "h", "h_tilde") and e.activation == "tanh":
            scale = Scale(-1.0, 1.0)
        else:
            scale = Scale.signed(grid)
        label = {"x_part": "x·W", "h_part": "h_prev·U", "pre_activation": "sum", "h_tilde": "h̃"}.get(name, name)
        maps.append(Heatmap(label, grid, scale, "unit", "token",
                            col_labels=[token_text(ctx.trace, t) for t in window], first_col=window.start,
                            mark=(ctx.replay.unit, e.time - window.start)))
    return maps


def ev_activation(e) -> str:
    return getattr(e, "recurrent_activation", "sigmoid")


def token_text(trace, time: int) -> str:
    label = token_label(trace, time)
    return label.strip("'")


def step_equations(ctx: ViewContext) -> Text:
    """The selected unit's equations at this step, from the event's fields."""
    e, u = ctx.event, ctx.replay.unit
    text = Text()
    if e.masked:
        if "masked" in ctx.hidden:  # a lesson asks what happens here before showing it
            text.append(f"token {e.time} {token_label(ctx.trace, e.time)}: what happens to c and h here? "
                        f"(before this step: c_prev = {num(e.c_prev[u]) if e.kind == 'lstm_step' else '—'}, "
                        f"h_prev = {num(e.h_prev[u])})", style="bold")
            return text
        text.append(f"token {e.time} {token_label(ctx.trace, e.time)} is masked (padding): this step did not "
                    "happen, so the states carry over unchanged.\n", style="bold yellow")
        if e.kind == "lstm_step":
            text.append(f"c = c_prev = {num(e.c[u])}\n")
        text.append(f"h = h_prev = {num(e.h[u])}")
        return text
    if e.kind == "gru_step":
        return gru_equations(ctx, e, u, text)
    if e.x_part is None:  # a schema-1 trace: the gates without their parts
        if e.kind == "lstm_step":
            for gate in GATES:
                text.append(f"{gate} = {ctx.shown(gate, num(getattr(e, gate)[u]))}\n")
            text.append(f"c = f·c_prev + i·g = {ctx.shown('f', factor(e.f[u]))}·{factor(e.c_prev[u])} + "
                        f"{ctx.shown('i', factor(e.i[u]))}·{ctx.shown('g', factor(e.g[u]))} = {ctx.shown('c', num(e.c[u]))}\n")
        text.append(f"h = {ctx.shown('h', num(e.h[u]))}")
        return text
    if e.kind == "lstm_step":
        gates = []
        for row, gate in enumerate(GATES):
            act = e.activation if gate == "g" else e.recurrent_activation
            value = getattr(e, gate)[u]
            pre = ctx.shown("pre_activation", num(e.pre_activation[row, u]))
            numbers = (f"{applied(act, terms((e.x_part[row, u], e.h_part[row, u], e.bias[row, u])))} = "
                       f"{applied(act, pre)} = {ctx.shown(gate, num(value) if gate == 'g' else plain(value))}")
            gates.append((gate, f"{applied(act, f'x·W_{gate} + h_prev·U_{gate} + b_{gate}')} = ", numbers))
        full = all(len(f"{g} = {symbolic}{numbers}") <= ctx.width for g, symbolic, numbers in gates)
        if not full:
            text.append(f"each gate = {symbol(e.recurrent_activation)}(x·W + h_prev·U + b); "
                        f"g uses {symbol(e.activation)}\n", style="dim")
        for gate, symbolic, numbers in gates:
            text.append(f"{gate} = {symbolic if full else ''}{numbers}\n")
        f, i, g, o = (ctx.shown(n, factor(getattr(e, n)[u])) for n in "figo")
        c = ctx.shown("c", num(e.c[u]))
        text.append(f"c = f·c_prev + i·g = {f}·{factor(e.c_prev[u])} + {i}·{g} = ")
        text.append(f"{c}\n", style="bold")
        text.append(f"h = o·{applied(e.activation, 'c')} = {o}·{applied(e.activation, c)} = ")
        text.append(ctx.shown("h", num(e.h[u])), style="bold reverse")
    else:
        numbers = (f"{applied(e.activation, terms((e.x_part[u], e.h_part[u], e.bias[u])))} = "
                   f"{applied(e.activation, ctx.shown('pre_activation', num(e.pre_activation[u])))} = ")
        text.append(line(ctx, f"h = {applied(e.activation, 'x·W + h_prev·U + b')} = {numbers}", f"h = {numbers}", 9))
        text.append(ctx.shown("h", num(e.h[u])), style="bold reverse")
    return text


def gru_equations(ctx: ViewContext, e, u: int, text: Text) -> Text:
    """z and r, the candidate h̃ (reset_after or not) and h = z·h_prev + (1 − z)·h̃ for unit u."""
    rb = e.recurrent_bias
    for row, gate in enumerate(("z", "r")):
        parts = [e.x_part[row, u], e.bias[row, u], e.h_part[row, u]] + ([rb[row, u]] if rb is not None else [])
        value = ctx.shown(gate, plain(getattr(e, gate)[u]))
        text.append(f"{gate} = {applied(e.recurrent_activation, terms(parts))} = "
                    f"{applied(e.recurrent_activation, ctx.shown('pre_activation', num(e.pre_activation[row, u])))} = "
                    f"{value}\n")
    r = ctx.shown("r", factor(e.r[u]))
    if e.reset_after:
        inner = terms([e.h_part[2, u]] + ([rb[2, u]] if rb is not None else []))
        argument = f"{terms((e.x_part[2, u], e.bias[2, u]))} + {r}·({inner})"
    else:  # the h row of h_part is already (r·h_prev)·U_h
        argument = terms((e.x_part[2, u], e.bias[2, u], e.h_part[2, u]))
    candidate = f"h̃ = {applied(e.activation, argument)} = "
    value = ctx.shown('h_tilde', num(e.h_tilde[u]))
    text.append(line(ctx, f"{candidate}{applied(e.activation, ctx.shown('pre_activation', num(e.pre_activation[2, u])))}"
                          f" = {value}", f"{candidate}{value}") + "\n")  # narrow: without the middle form
    z = ctx.shown("z", factor(e.z[u]))
    numbers = f"{z}·{factor(e.h_prev[u])} + (1 − {z})·{ctx.shown('h_tilde', factor(e.h_tilde[u]))} = "
    text.append(line(ctx, f"h = z·h_prev + (1 − z)·h̃ = {numbers}", f"h = {numbers}", 8))
    text.append(ctx.shown("h", num(e.h[u])), style="bold reverse")
    return text


def recurrent_view(ctx: ViewContext) -> Group:
    e = ctx.event
    sweep = ctx.replay.sweep()
    n_time = max(ev.time for ev in sweep) + 1
    lstm = e.kind == "lstm_step"
    n_maps = 6 if lstm else 4
    columns = max(3, (ctx.width - 2) // n_maps - 2)
    kind = {"lstm_step": "LSTM", "gru_step": "GRU"}.get(e.kind, "SimpleRNN")
    where = ctx.shown("position", f"{e.time} {token_label(ctx.trace, e.time)}")
    head = Text(f"{clean_text(e.layer)}: {kind} {e.direction} sweep, token {where}, "
                f"unit {ctx.replay.unit} of 0–{len(e.h) - 1}\n", style="bold")
    if lstm and not e.masked and "f" not in ctx.hidden:
        head.append(f"mean f over the {len(e.f)} units at this token: {plain(float(np.mean(e.f)))}\n", style="dim")
    maps = recurrent_heatmaps(ctx, columns)
    window = range(maps[0].first_col, maps[0].first_col + maps[0].values.shape[1])
    tokens = Text("tokens: " + ("… " if window.start > 0 else ""), style="dim")
    ids = ctx.replay.token_ids()
    oov_id = ctx.trace.context.get("oov_id")
    for t in window:
        oov = ids is not None and t < len(ids) and oov_id is not None and ids[t] == oov_id
        style = "reverse bold" if t == e.time and "position" not in ctx.hidden else ""
        tokens.append(f"{t}:{token_text(ctx.trace, t)}{'*' if oov else ''}".rstrip(":"), style=style)
        tokens.append(" ")
    if window.stop < n_time:
        tokens.append("…", style="dim")
    if ids is not None and oov_id is not None and any(t < len(ids) and ids[t] == oov_id for t in window):
        tokens.append("  (* not in the vocabulary: read as [UNK])", style="dim")
    pictures = side_by_side([stack(Text(m.title, style="bold"), m.block()) for m in maps], gap=2)
    axes = Text(f"rows: units 0–{len(e.h) - 1} (white: the selected unit at this token); columns: token "
                f"positions {window.start}–{window.stop - 1}; dark: not read yet or masked", style="dim")
    return Group(head, step_equations(ctx), Text(), tokens, legends(maps), pictures, axes)


# -- bidirectional merge --------------------------------------------------------------------------
def bidirectional_merge_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    rows = [("forward", e.forward), ("backward", e.backward)] + ([("merged", e.merged)] if e.merged is not None else [])
    return [Heatmap(name, np.atleast_2d(v), Scale.signed(np.concatenate([np.ravel(x) for _, x in rows])),
                    "position" if np.ndim(v) == 2 else "", "unit") for name, v in rows]


def bidirectional_merge_view(ctx: ViewContext) -> Group:
    e = ctx.event
    u = ctx.replay.unit
    fwd, bwd = np.atleast_2d(e.forward)[-1], np.atleast_2d(e.backward)[-1]
    n = len(fwd)
    text = Text(f"{clean_text(e.layer)}: merge '{e.merge_mode}' of the forward sweep and the backward sweep\n", style="bold")
    where = " at the last position" if np.ndim(e.forward) == 2 else ""
    merged = None if e.merged is None else np.atleast_2d(e.merged)[-1]
    mode = e.merge_mode
    if merged is None:
        text.append(f"merge_mode None: both halves are passed on as a pair{where}")
    elif mode == "concat":
        half = "forward" if u < n else "backward"
        text.append(f"merged[{u}] = {half}[{u if u < n else u - n}] = ")
        text.append(ctx.shown("merged", num(merged[u])), style="bold reverse")
        text.append(f"\nconcat: units 0–{n - 1} are the forward sweep's, {n}–{2 * n - 1} the backward sweep's{where}",
                    style="dim")
    else:
        op = {"sum": f"{num(fwd[u])} + {num(bwd[u])}", "mul": f"{factor(fwd[u])}·{factor(bwd[u])}",
              "ave": f"({num(fwd[u])} + {num(bwd[u])}) / 2"}[mode]
        text.append(f"merged[{u}] = {op} = ")
        text.append(ctx.shown("merged", num(merged[u])), style="bold reverse")
        text.append(f"   (unit {u}{where})", style="dim")
    maps = bidirectional_merge_heatmaps(ctx)
    table = Table.grid(padding=(0, 1))
    for m in maps:
        table.add_row(Text(f"{m.title} ({m.values.shape[-1]})", style="bold"),
                      half_block_heatmap(m.values[-1:, :min(m.values.shape[-1], max(ctx.width - 20, 16))], m.scale))
    return Group(text, table, legends(maps[:1]))


# -- attention ----------------------------------------------------------------------------------
def attention_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    """The selected head's weights, queries × keys, for the queries stepped through so far."""
    e = ctx.event
    events = [ev for ev in ctx.replay.events_until(ctx.replay.layer[0], ctx.replay.step)[:ctx.replay.step + 1]
              if ev.kind == "attention" and ev.head == e.head]
    n_queries = max(ev.query for ev in events) + 1
    grid = np.full((max(n_queries, e.query + 1), len(e.weights)), np.nan, np.float32)
    hidden = "weights" in ctx.hidden  # a lesson asks about the weights: no colour may tell them
    for ev in events:
        if not hidden:
            grid[ev.query] = ev.weights
    return [Heatmap(f"head {e.head} weights", grid, Scale.gate(), "query", "key",
                    mark=None if hidden else (e.query, ctx.replay.unit))]


def attention_keys(e, j: int) -> tuple[list[int], list[int]]:
    """(the keys listed one per row, the masked keys summed up in one row): every key the query
    reads and the selected key; the other masked keys share a row when there are any."""
    if e.mask is None:
        return list(range(len(e.weights))), []
    listed = [k for k in range(len(e.weights)) if e.mask[k] or k == j]
    return listed, [k for k in range(len(e.weights)) if k not in listed]


def span(keys: list[int]) -> str:
    return f"{keys[0]}–{keys[-1]}" if keys == list(range(keys[0], keys[-1] + 1)) else f"{len(keys)} keys"


def attention_view(ctx: ViewContext) -> Group:
    e, j = ctx.event, ctx.replay.unit
    n = len(e.weights)
    tokens = ctx.trace.context.get("tokens") or []
    words = len(tokens) == n  # self-attention over the sentence: key k is token position k
    listed, rest = attention_keys(e, j)
    read = n if e.mask is None else int(np.sum(e.mask))
    query = f"query {e.query}" + (f" {token_label(ctx.trace, e.query)}" if words else "")
    key = f"key {j}" + (f" {token_label(ctx.trace, j)}" if words else "")
    title = f"{clean_text(e.layer)}: head {e.head}, {query} reads {read} of {n} keys; {key} selected"
    head = Text(line(ctx, f"{title} (↑/↓ key, ←/→ query, </> head)", title) + "\n", style="bold")
    how = "q·keys[j]" if e.score_mode == "dot" else f"Σ tanh({e.inner_scale:g}·(q + keys[j]))"
    masking = "; masked keys get a large negative logit" if e.mask is not None else ""
    head.append(line(ctx, f"scores[j] = {how}; scaled = scores · {e.scale:.6g}; weights = softmax(logits){masking}",
                     f"scaled = scores · {e.scale:.6g}" + ("; masked keys: a large negative logit" if masking else "")),
                style="dim")
    eq = Text(f"scaled[{j}] = {num(e.scores[j])}·{e.scale:.6g} = {num(e.scaled[j])}\n")
    symbolic = f"weights[{j}] = exp(logits[{j}] − max) / Σ_k exp(logits[k] − max)"
    seen = [k for k in range(n) if e.mask is None or e.mask[k]]
    if "weights" in ctx.hidden:
        eq.append(f"{symbolic} = ?")
    elif seen and j in seen and e.exps is not None:
        top = float(np.max(e.logits[seen]))
        numbers = (f"exp({terms((e.logits[j], -top))}) / {plain(e.total)} = {plain(e.exps[j])} / {plain(e.total)} = "
                   f"{plain(e.weights[j])}")
        eq.append(line(ctx, f"{symbolic} = {numbers}", f"weights[{j}] = {numbers}") + "\n")
        eq.append(f"max = the largest logit of the {len(seen)} keys read; Σ_k over those keys = {plain(e.total)}",
                  style="dim")
    elif seen and j in seen:  # a trace recorded before schema 3 holds the weights without their exps
        eq.append(f"{symbolic} = {plain(e.weights[j])}\n")
    else:
        why = "its logit is so negative that exp(logit − max) is 0 in float32: " if e.weights[j] == 0 else ""
        eq.append(f"key {j} is masked: {why}weights[{j}] = {plain(e.weights[j])}")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    for col in ("key",) + (("token",) if words else ()) + ("score", "scaled", "mask", "logit", "weight"):
        table.add_column(col, justify="left" if col == "token" else "right", no_wrap=True)
    logit = lambda v: f"{v:+.4g}" if abs(v) >= 1e4 else num(v)  # noqa: E731
    for k in listed:
        style = "reverse" if k == j else ""
        masked = "" if e.mask is None else ("read" if e.mask[k] else "masked")
        word = (Text(token_text(ctx.trace, k)[:12]),) if words else ()
        table.add_row(Text(str(k), style=style), *word, num(e.scores[k]), num(e.scaled[k]), masked, logit(e.logits[k]),
                      Text(ctx.shown("weights", plain(e.weights[k])), style=style))
    if rest:
        logits, weights = e.logits[rest], e.weights[rest]
        same = lambda a: bool(np.all(a == a[0]))  # noqa: E731
        pads = all(token_label(ctx.trace, k) == "[pad]" for k in rest)
        table.add_row(span(rest), *((Text("[pad]" if pads else "…"),) if words else ()), "…", "…", "masked",
                      logit(logits[0]) if same(logits) else f"≤ {logit(float(logits.max()))}",
                      ctx.shown("weights", plain(weights[0]) if same(weights) else f"≤ {plain(float(weights.max()))}"))
    out = Text()
    if e.query_masked:
        out.append("this query position is masked: its output is 0\n", style="bold yellow")
    else:
        result = ctx.shown("output", num(e.output[0]))
        short = f"output[0] = Σ over the {n} keys of weights[j]·values[j, 0] = {result}"
        weighted = [k for k in range(n) if e.weights[k] != 0]
        if "weights" in ctx.hidden or not weighted:
            out.append(short + "\n")
        else:
            products = " + ".join(f"{factor(e.weights[k])}·{factor(e.values[k, 0])}" for k in weighted)
            others = f" (the other {n - len(weighted)} keys have weight 0)" if len(weighted) < n else ""
            out.append(line(ctx, f"output[0] = Σ_j weights[j]·values[j, 0] = {products} = {result}{others}", short)
                       + "\n")
    maps = attention_heatmaps(ctx)
    picture = stack(Text(maps[0].title, style="bold"), maps[0].block(), maps[0].scale.legend(10))
    return Group(head, eq, table, out, picture)


# -- merge, normalisation, activations, masking -------------------------------------------------
MERGE_SYMBOLS = ("add", "subtract", "multiply")


def merge_view(ctx: ViewContext) -> Group:
    e, u = ctx.event, ctx.replay.unit
    shapes = " and ".join("×".join(map(str, np.shape(op))) or "1" for op in e.operands)
    text = Text(f"{clean_text(e.layer)}: {e.mode} of {len(e.operands)} inputs ({shapes}) → "
                f"{'×'.join(map(str, np.shape(e.result)))}\n", style="bold")
    text.append(inbound_line(ctx, ctx.replay.layer[0]), style="dim")
    result = np.ravel(e.result)
    same = all(np.shape(op) == np.shape(e.result) for op in e.operands)
    if e.mode in MERGE_SYMBOLS and same:
        values = [float(np.ravel(op)[u]) for op in e.operands]
        joined = {"add": lambda: terms(values), "multiply": lambda: "·".join(factor(v) for v in values),
                  "subtract": lambda: f"{num(values[0])} − {factor(values[1])}"}[e.mode]()
        text.append(f"result[{u}] = {joined} = ")
    elif e.mode == "average" and same:
        values = [float(np.ravel(op)[u]) for op in e.operands]
        text.append(f"result[{u}] = ({' + '.join(num(v) for v in values)}) / {len(values)} = ")
    elif e.mode in ("maximum", "minimum") and same:
        values = [float(np.ravel(op)[u]) for op in e.operands]
        text.append(f"result[{u}] = {e.mode[:3]}({', '.join(num(v) for v in values)}) = ")
    else:
        text.append(f"result[{u}] = ")
    text.append(num(result[u]), style="bold reverse")
    shape = np.shape(e.result)
    where = tuple(int(i) for i in np.unravel_index(u, shape)) if shape else ()
    if len(shape) > 1:
        text.append(f"\nresult[{u}] is the value at {where} of the {'×'.join(map(str, shape))} result "
                    "(↑/↓/←/→ step through them in order)", style="dim")
    if e.mode == "concatenate" and e.axis is not None and shape:
        axis = e.axis % len(shape)
        start, k = 0, 0
        for k, op in enumerate(e.operands):  # which input the selected value comes from
            if where[axis] < start + np.shape(op)[axis]:
                break
            start += np.shape(op)[axis]
        local = where[:axis] + (where[axis] - start,) + where[axis + 1:]
        text.append(f"\nconcatenated along axis {e.axis}: the inputs' values follow each other in that order; "
                    f"this one is input {k}'s value at {local}", style="dim")
    if any(m is not None for m in e.masks):
        text.append("\nmasked positions of an input take no part", style="dim")
    flat = [np.asarray(op, np.float32).reshape(-1) for op in e.operands] + [result.astype(np.float32)]
    scale = Scale.signed(np.concatenate(flat))
    width = max(ctx.width - 12, 16)
    lo = min(max(u - width // 2, 0), max(result.size - width, 0))  # a window of the strips around the selection
    rows = Table.grid(padding=(0, 1))
    for k, f in enumerate(flat):
        aligned = f.size == result.size  # the same position in this strip holds the selected value's operand
        part = f[lo:lo + width] if aligned else f[:width]
        rows.add_row(Text("result" if k == len(flat) - 1 else f"input {k}", style="bold"),
                     half_block_heatmap(part[None, :], scale, mark=(0, u - lo) if aligned else None))
    caption = Text(f"values {lo}–{lo + min(width, result.size) - 1} of {result.size} in order; white: the selected one",
                   style="dim")
    return Group(text, rows, caption, scale.legend(12))


def normalize_view(ctx: ViewContext) -> Group:
    e, u = ctx.event, ctx.replay.unit
    x, n, out = np.ravel(e.values), np.ravel(e.normalized), np.ravel(e.output)
    text = Text(f"{clean_text(e.layer)}: position {e.position}, {x.size} values normalised together; "
                f"element {u} selected\n", style="bold")
    text.append(f"mean = {num(e.mean)}, variance = {plain(e.variance)}, epsilon = {e.epsilon:g}\n")
    numbers = f"({terms((x[u], -e.mean))})/√({plain(e.variance)} + {e.epsilon:g}) = {num(n[u])}"
    text.append(line(ctx, f"normalized[{u}] = (x − mean)/√(variance + epsilon) = {numbers}",
                     f"normalized[{u}] = {numbers}") + "\n")
    gamma = None if e.gamma is None else float(np.ravel(e.gamma)[u])
    beta = None if e.beta is None else float(np.ravel(e.beta)[u])
    if gamma is not None or beta is not None:
        form = f"{factor(n[u])}·{factor(gamma if gamma is not None else 1.0)}" + (f" {term(beta)}" if beta is not None else "")
        text.append(f"output[{u}] = normalized·gamma + beta = {form} = ")
    else:
        text.append(f"output[{u}] = normalized = ")
    text.append(num(out[u]), style="bold reverse")
    return Group(text)


def activation_view(ctx: ViewContext) -> Group:
    e, u = ctx.event, ctx.replay.unit
    x, y = np.ravel(e.x), np.ravel(e.y)
    settings = []
    if e.function in ("relu", "leaky_relu") and e.negative_slope:
        settings.append(f"negative_slope {e.negative_slope:g}")
    if e.max_value is not None:
        settings.append(f"max_value {e.max_value:g}")
    if e.threshold:
        settings.append(f"threshold {e.threshold:g}")
    if e.alpha is not None and np.size(e.alpha) == 1:
        settings.append(f"alpha {float(np.ravel(e.alpha)[0]):g}")
    text = Text(f"{clean_text(e.layer)}: y = {e.function}(x), element by element"
                f"{' (' + ', '.join(settings) + ')' if settings else ''}; element {u} of {x.size} selected\n",
                style="bold")
    if e.function == "prelu" and e.alpha is not None:
        alpha = float(np.ravel(np.broadcast_to(e.alpha, np.shape(e.x)))[u])
        text.append(f"y[{u}] = x if x > 0, else alpha·x, with x = {num(x[u])} and alpha = {num(alpha)}: ")
    elif e.function == "relu" and not settings:
        text.append(f"y[{u}] = relu(x[{u}]) = relu({num(x[u])}) = ")
    else:
        text.append(f"y[{u}] = {e.function}(x[{u}]) with x[{u}] = {num(x[u])}: ")
    text.append(num(y[u]), style="bold reverse")
    return Group(text)


def masking_view(ctx: ViewContext) -> Group:
    e = ctx.event
    keep = np.asarray(e.keep, bool)
    text = Text(f"{clean_text(e.layer)}: a step whose features all equal {e.mask_value:g} is padding: its output is 0 "
                f"and later layers skip it\n", style="bold")
    text.append("steps: " + " ".join(f"{t}:{'kept' if k else 'padding'}" for t, k in enumerate(keep)))
    return Group(text)


# -- a layer without steps ----------------------------------------------------------------------
def input_picture(ctx: ViewContext) -> list:
    """The model input in colour with its true label, when it is an image."""
    x = ctx.trace.context.get("model_input")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[-1] not in (1, 3):
        return []
    pixels = x[0] if x.shape[-1] == 3 else np.repeat(x[0], 3, axis=-1)
    labels = ctx.trace.context.get("labels") or []
    true = ctx.trace.context.get("true_label")
    caption = "the input picture" + (f", true label: {labels[true] if true < len(labels) else true}"
                                     if true is not None else " (true label unknown)")
    return [Text(caption, style="bold"), half_block_image(pixels)]


def corner_grids(ctx: ViewContext, out: np.ndarray) -> list:
    """The top-left 3×3 pixels (0–255, per channel) and the same cells of this layer's output."""
    x = ctx.trace.context.get("model_input")
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        return []
    names = ["red", "green", "blue"] if x.shape[-1] == 3 else [f"ch{c}" for c in range(x.shape[-1])]
    pixels = [stack(Text(f"{n} (0–255)", style="dim"), number_grid(x[0, :3, :3, c], "{:5.0f}"))
              for c, n in enumerate(names)]
    parts: list = [Text("the top-left 3×3 pixels (rows 0–2 down, cols 0–2 across):", style="dim"),
                   fit(pixels, ctx.width)]
    if out.ndim == 3 and out.shape[:2] == x.shape[1:3] and out.shape[-1] == x.shape[-1]:
        grids = [stack(Text(f"{n} after {ctx.replay.layer[0]}", style="dim"),
                       number_grid(out[:3, :3, c], "{:.4f}", withheld="output" in ctx.hidden))
                 for c, n in enumerate(names)]
        parts.append(fit(grids, ctx.width))
    return parts


def token_ids_line(ctx: ViewContext, out: np.ndarray) -> Text:
    """position:token → id for a TextVectorization output."""
    text = Text("position:token → id   ", style="dim")
    for t, tid in enumerate(np.ravel(out)):
        text.append(f"{t}:{token_text(ctx.trace, t)}→{ctx.shown('output', str(int(tid)))}  ")
    return text


def inbound_line(ctx: ViewContext, name: str) -> str:
    """`inputs from a, b` for a layer of a graph (what its call reads), or ''."""
    inbound = getattr(ctx.trace.model, "inbound", None) or {}
    sources = inbound.get(name)
    return f"inputs from {', '.join(clean_text(s) for s in sources)}\n" if sources else ""


def summary_view(ctx: ViewContext) -> Group:
    name, cls = ctx.replay.layer
    out = ctx.trace.output(name)
    withheld = "output" in ctx.hidden
    text = Text(f"{clean_text(name)} ({clean_text(cls)}) → output {tuple(out.shape)} for this input\n",
                style="bold")
    text.append(inbound_line(ctx, name), style="dim")
    text.append(f"min {ctx.shown('output', num(np.min(out)))}  max {ctx.shown('output', num(np.max(out)))}  "
                f"mean {ctx.shown('output', num(np.mean(out)))}\n")
    if ctx.keras_diff is not None:
        text.append(f"max |scratch − Keras| over this layer: {ctx.keras_diff:.2e}\n", style="italic")
    if not ctx.replay.has_steps():
        text.append("this layer's steps were not recorded in this trace\n" if ctx.trace.model is None
                    else "this layer has no step-by-step view: n or ] goes on\n", style="dim")
    parts: list[Any] = [text]
    if cls == "TextVectorization":
        parts.append(token_ids_line(ctx, out))
    if ctx.replay.layer_index == 0:
        parts += corner_grids(ctx, out) + input_picture(ctx)
    if withheld:
        return Group(*parts)
    if out.ndim == 3:
        ch = int(np.argmax(np.abs(out).mean(axis=(0, 1))))
        scale = Scale.signed(out[..., ch])
        parts += [Text(f"most active channel {ch}:", style="dim"), half_block_heatmap(out[..., ch], scale),
                  scale.legend(12)]
    elif out.ndim >= 1 and out.size:
        flat = out.reshape(out.shape[0], -1) if out.ndim == 2 else out.reshape(1, -1)
        scale = Scale.signed(flat)
        parts += [half_block_heatmap(flat[:, :max(ctx.width - 4, 16)], scale), scale.legend(12)]
    return Group(*parts)


def summary_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    name, _ = ctx.replay.layer
    out = ctx.trace.output(name)
    if out.ndim == 3:
        ch = int(np.argmax(np.abs(out).mean(axis=(0, 1))))
        return [Heatmap(f"{name} channel {ch}", out[..., ch], Scale.signed(out[..., ch]), "row", "col")]
    flat = np.atleast_2d(out.reshape(out.shape[0], -1) if out.ndim == 2 else out.reshape(1, -1))
    return [Heatmap(f"{name} output", flat, Scale.signed(flat), "position" if out.ndim == 2 else "", "unit")]


#: THE table: event kind → its view. A layer without steps shows `SUMMARY`.
VIEWS: dict[str, View] = {
    "conv_patch": View(conv_view, conv_heatmaps),
    "pool_window": View(pool_view, pool_heatmaps),
    "dense_neuron": View(dense_view, dense_heatmaps),
    "softmax": View(softmax_view, softmax_heatmaps),
    "embedding_lookup": View(embedding_view),
    "rnn_step": View(recurrent_view, recurrent_heatmaps),
    "lstm_step": View(recurrent_view, recurrent_heatmaps),
    "bidirectional_merge": View(bidirectional_merge_view, bidirectional_merge_heatmaps),
    "gru_step": View(recurrent_view, recurrent_heatmaps),
    "attention": View(attention_view, attention_heatmaps),
    "merge": View(merge_view),
    "normalize": View(normalize_view),
    "activation": View(activation_view),
    "masking": View(masking_view),
    "dropout": View(dropout_view),
    "flatten_map": View(flatten_view),
    # the backward pass (views/backward_views.py)
    "loss_gradient": View(bv.loss_view, bv.loss_heatmaps),
    "dense_gradient": View(bv.dense_gradient_view, bv.dense_gradient_heatmaps),
    "conv_kernel_gradient": View(bv.kernel_gradient_view, bv.kernel_gradient_heatmaps),
    "conv_input_gradient": View(bv.input_gradient_view, bv.gradient_summary_heatmaps),
    "pool_routing": View(bv.pool_routing_view, bv.pool_routing_heatmaps),
    "recurrent_gradient": View(bv.recurrent_gradient_view, bv.recurrent_gradient_heatmaps),
    "saliency": View(bv.saliency_view, bv.saliency_heatmaps),
}
SUMMARY = View(summary_view, summary_heatmaps)
GRADIENT_SUMMARY = View(bv.gradient_summary_view, bv.gradient_summary_heatmaps)  # a backward layer without steps
for kind, view in VIEWS.items():  # a view without pictures of its own exports the layer summary's
    if view.heatmaps is None:
        VIEWS[kind] = View(view.render, summary_heatmaps)


def view_for(event, trace=None) -> View:
    """The view of `event`; a layer without steps shows its summary (of the gradient, in a
    backward `trace`)."""
    if event is None:
        return GRADIENT_SUMMARY if getattr(trace, "backward", False) else SUMMARY
    return VIEWS.get(event.kind, SUMMARY)
