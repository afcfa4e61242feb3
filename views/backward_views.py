"""The views of the backward pass, one per backward event kind (registered in `step_views.VIEWS`).

Each puts the selected element's gradient equation first, formatted from the event's own fields
(`∂L/∂z = p − y = 0.8123 − 1 = −0.1877`), then its pictures: gradients on a diverging scale
centred on 0. Nothing is recomputed here.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from nntrace.tracer.sanitize import clean_text
from nntrace.views.formulas import factor, num, plain, sig, sig_factor, sig_term, term, terms
from nntrace.views.render import Heatmap, Scale, bar, half_block_heatmap, half_block_image, number_grid, stack
from nntrace.views.replay import token_label
from nntrace.views.view_kit import ViewContext, fit, legends, line

LSTM_GATES = ("i", "f", "g", "o")
GRU_GATES = ("z", "r", "h̃")


def class_names(ctx: ViewContext, n: int) -> list[str]:
    labels = ctx.trace.context.get("labels") or []
    return [str(labels[i]) if i < len(labels) else str(i) for i in range(n)]


def grid_cell(ctx: ViewContext, shape: tuple) -> tuple[int, int]:
    """The selected cell of a `(rows, cols)` picture (the replay's unit is its flat index)."""
    unit = min(max(ctx.replay.unit, 0), shape[0] * shape[1] - 1)
    return divmod(unit, shape[1])


# -- the loss ----------------------------------------------------------------------------------
def loss_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    return [Heatmap("∂L/∂z = p − y", e.gradient[None, :], Scale.signed(e.gradient), "", "class",
                    col_labels=class_names(ctx, len(e.gradient)), mark=(0, ctx.replay.unit))]


def loss_view(ctx: ViewContext) -> Group:
    e = ctx.event
    names = class_names(ctx, len(e.gradient))
    k = min(ctx.replay.unit, len(names) - 1)
    head = Text(f"loss: cross-entropy against class {e.label} '{clean_text(names[e.label], 30)}'; "
                f"class {k} selected (↑/↓)\n", style="bold")
    p_label = ctx.shown("probabilities", plain(e.probabilities[e.label], 6))
    head.append(f"L = −log p[{e.label}] = −log({p_label}) = ")
    head.append(ctx.shown("loss", plain(e.loss)), style="bold")
    head.append("\n")
    y = int(e.onehot[k])
    value = f"{ctx.shown('probabilities', plain(e.probabilities[k]))} − {y} = "
    head.append(line(ctx, f"∂L/∂z[{k}] = p[{k}] − y[{k}] = {value}", f"∂L/∂z[{k}] = {value}", 8))
    head.append(ctx.shown("gradient", num(e.gradient[k])), style="bold reverse")
    head.append("\ny is 1 at the label and 0 elsewhere: the label's logit is pushed up, every other down"
                + (" (the model's output is its logits)" if e.from_logits else
                   " (the softmax and the loss together)"), style="dim")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("class", "logit z", "p", "y", "∂L/∂z = p − y"):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    for i, name in enumerate(names):
        style = "reverse" if i == k else ("bold" if i == e.label else "")
        table.add_row(Text(f"{i} {name}"[:14], style=style), num(e.logits[i]),
                      ctx.shown("probabilities", plain(e.probabilities[i])), str(int(e.onehot[i])),
                      Text(ctx.shown("gradient", num(e.gradient[i])), style=style))
    return Group(head, table)


# -- a layer's gradient (no steps of its own) ------------------------------------------------------
def gradient_summary_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    name, _ = ctx.replay.layer
    g = ctx.trace.output(name)
    if g is None:
        return []
    g = np.asarray(g)
    if g.ndim == 3:
        ch = int(np.argmax(np.abs(g).sum(axis=(0, 1))))
        return [Heatmap(f"∂L/∂y channel {ch}", g[..., ch], Scale.signed(g[..., ch]), "row", "col")]
    flat = np.atleast_2d(g.reshape(g.shape[0], -1) if g.ndim == 2 else g.reshape(1, -1))
    return [Heatmap(f"∂L/∂y of {name}", flat, Scale.signed(flat), "position" if g.ndim == 2 else "", "unit")]


def layer_gradient_event(ctx: ViewContext):
    name = ctx.replay.layer[0]
    return next((e for e in ctx.trace.events if e.kind == "layer_gradient" and e.layer == name), None)


def gradient_summary_view(ctx: ViewContext) -> Group:
    name, cls = ctx.replay.layer
    e = layer_gradient_event(ctx)
    text = Text(f"{clean_text(name)} ({clean_text(cls)}) — backward\n", style="bold")
    if e is None or e.output_gradient is None:
        text.append("no gradient reaches this layer (its output is token ids or text)\n", style="dim")
        return Group(text)
    g = np.asarray(e.output_gradient)
    what = "∂L/∂z (its pre-activation: the loss gives it directly)" if e.from_loss else "∂L/∂y (its output)"
    text.append(f"{what}, shape {tuple(g.shape)}: ‖·‖ = {plain(e.norm)}   min {num(g.min())}  max {num(g.max())}\n")
    if e.input_gradient is not None:
        text.append(f"it passes on ∂L/∂x, shape {tuple(np.shape(e.input_gradient))}\n")
    used = 0  # one norm never breaks across lines: a line holds the norms that fit the panel
    for weight, norm in e.weight_norms.items():
        item = f"‖∂L/∂{clean_text(weight, 30)}‖ = {plain(norm)}   "
        if used and used + len(item.rstrip()) > ctx.width:
            text.append("\n")
            used = 0
        text.append(item, style="dim")
        used += len(item)
    if e.weight_norms:
        text.append("\n")
    if ctx.keras_diff is not None:
        text.append(f"max |scratch − tf.GradientTape| / max |tape| over ∂L/∂y: {ctx.keras_diff:.2e}\n", style="italic")
    if not ctx.replay.has_steps():
        text.append(gradient_rule(cls), style="dim")
    parts: list[Any] = [text]
    for m in gradient_summary_heatmaps(ctx):
        values = m.values[:, :max(ctx.width - 4, 16)]
        parts += [Text(m.title, style="dim"), half_block_heatmap(values, m.scale), m.scale.legend(12)]
    return Group(*parts)


def gradient_rule(cls: str) -> str:
    """How the gradient goes through a layer without steps of its own, in words."""
    rules = {"Dropout": "At inference dropout is the identity, so ∂L/∂x = ∂L/∂y.\n",
             "Flatten": "Flatten only reshapes: ∂L/∂x is ∂L/∂y put back in the input's shape.\n",
             "Activation": "∂L/∂x = ∂L/∂y · activation'(x), element by element.\n",
             "BatchNormalization": "At inference y = γ·(x − mean)/√(var + ε) + β, so ∂L/∂x = ∂L/∂y · γ/√(var + ε).\n",
             "Rescaling": "y = x·scale + offset, so ∂L/∂x = ∂L/∂y · scale.\n",
             "Embedding": "Each token's ∂L/∂y row is added to its id's row of ∂L/∂embeddings "
                          "(a repeated id adds up).\n"}
    return rules.get(cls, "n or ] goes on towards the input\n")


# -- dense ---------------------------------------------------------------------------------------
def dense_gradient_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    return [Heatmap("largest ∂L/∂W = x·δ", e.weight_gradients[None, :], Scale.signed(e.weight_gradients), "",
                    "input", col_labels=[str(int(i)) for i in e.inputs])]


def dense_gradient_view(ctx: ViewContext) -> Group:
    e = ctx.event
    head = Text(f"{clean_text(e.layer)}: unit {e.unit} backward ({e.activation})\n", style="bold")
    delta = ctx.shown("delta", sig(e.delta))
    if e.from_loss:
        head.append(f"δ = ∂L/∂z[{e.unit}] = p − y, from the loss step = ")
    elif e.slope is None:
        head.append(f"δ = ∂L/∂z through the {e.activation} = ")
    else:
        head.append(f"δ = ∂L/∂y · {e.activation}'(z) = {sig_factor(e.output_gradient)}·{sig_factor(e.slope)} = ")
    head.append(delta, style="bold reverse")
    head.append("\n")
    if e.bias_gradient is not None:
        head.append(f"∂L/∂b[{e.unit}] = δ = {ctx.shown('delta', sig(e.bias_gradient))}\n")
    k = len(e.inputs)
    head.append(f"∂L/∂W[i, {e.unit}] = x_i · δ for each of the {e.n_inputs} inputs; the {k} largest:", style="dim")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("input i", "x_i", "· δ", "= ∂L/∂W[i, unit]"):
        table.add_column(col, justify="right", no_wrap=True)
    scale = Scale.signed(e.weight_gradients)
    for i, x, g in zip(e.inputs, e.x, e.weight_gradients):
        table.add_row(str(int(i)), sig(x), ctx.shown("delta", sig(e.delta)),
                      Text(ctx.shown("weight_gradients", sig(g)), style=scale.colour(float(g))))
    return Group(head, table)


# -- convolution ---------------------------------------------------------------------------------
def kernel_gradient_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    mark = grid_cell(ctx, e.products.shape)
    return [Heatmap("input under the tap", e.inputs, Scale.signed(e.inputs), "row", "col", mark=mark),
            Heatmap("δ of the filter", e.deltas, Scale.signed(e.deltas), "row", "col", mark=mark),
            Heatmap("products x·δ", e.products, Scale.signed(e.products), "row", "col", mark=mark),
            Heatmap("sum so far", e.running, Scale.signed(e.running), "row", "col", mark=mark)]


def kernel_gradient_view(ctx: ViewContext) -> Group:
    e = ctx.event
    i, j, ch = e.tap
    oh, ow = e.products.shape
    r, c = grid_cell(ctx, e.products.shape)
    head = Text(f"{clean_text(e.layer)}: kernel weight [{i}, {j}, ch{ch}] of filter {e.filter} backward; "
                f"output cell ({r}, {c}) selected (arrows)\n", style="bold")
    head.append(f"the weight W = {sig(e.weight)} met one input at every one of the {oh}×{ow} output cells, "
                "so its gradient sums over all of them\n", style="dim")
    head.append(f"at cell ({r}, {c}): x·δ = {sig_factor(e.inputs[r, c])}·{sig_factor(e.deltas[r, c])} = "
                f"{ctx.shown('products', sig(e.products[r, c]))}\n")
    flat = r * ow + c
    if flat:
        pr, pc = divmod(flat - 1, ow)
        head.append(f"sum so far (row by row, to ({r}, {c})) = {ctx.shown('running_before', sig(e.running[pr, pc]))} "
                    f"{sig_term(e.products[r, c]) if 'products' not in ctx.hidden else '+ ?'} = "
                    f"{ctx.shown('running', sig(e.running[r, c]))}\n")
    head.append(f"∂L/∂W[{i}, {j}, {ch}, {e.filter}] = Σ over the {oh * ow} cells of x·δ = ")
    head.append(ctx.shown("total", sig(e.total)), style="bold reverse")
    maps = kernel_gradient_heatmaps(ctx)
    parts: list[Any] = [head]
    if oh * ow <= 16 and ctx.width >= 4 * 9 * ow // 2:
        grids = [stack(Text(label, style="dim"), number_grid(v, "{:+.4f}", withheld=hide))
                 for label, v, hide in (("x", e.inputs, False), ("δ", e.deltas, False),
                                        ("x·δ", e.products, "products" in ctx.hidden))]
        parts.append(fit(grids, ctx.width))
    if "running" in ctx.hidden or "total" in ctx.hidden:  # its colours would tell the sums
        maps = [m for m in maps if m.title != "sum so far"]
    if "products" in ctx.hidden:
        maps = [m for m in maps if m.title != "products x·δ"]
    parts.append(legends(maps))
    parts.append(fit([stack(Text(m.title, style="dim"), m.block()) for m in maps], ctx.width, gap=2))
    return Group(*parts)


def input_gradient_view(ctx: ViewContext) -> Group:
    e = ctx.event
    n = len(e.cells)
    k = min(ctx.replay.unit, max(n - 1, 0))
    head = Text(f"{clean_text(e.layer)}: input cell (row {e.row}, col {e.col}, ch{e.channel}) backward\n", style="bold")
    filters = e.weights.shape[1] if e.weights.ndim == 2 else 0
    head.append(f"{n} output cells read this input (each through one kernel tap); each sends back "
                f"Σ over the {filters} filters of W·δ\n", style="dim")
    sums = ctx.shown("cell_sums", " ".join(sig(v) if k == 0 else sig_term(v) for k, v in enumerate(e.cell_sums))) \
        if n else "0"
    full = f"∂L/∂x[{e.row}, {e.col}, {e.channel}] = Σ cells = {sums} = "
    head.append(line(ctx, full, "∂L/∂x = Σ over the cells listed below = ", 9))
    head.append(ctx.shown("total", sig(e.total)), style="bold reverse")
    parts: list[Any] = [head]
    if n:
        orow, ocol = e.cells[k]
        ti, tj = e.taps[k]
        products = e.weights[k] * e.deltas[k]
        order = np.argsort(-np.abs(products), kind="stable")[:3]
        parts.append(Text(f"cell {k} (↑/↓ of {n}): output ({orow}, {ocol}) through tap ({ti}, {tj}): "
                          f"Σ_f W·δ = {ctx.shown('cell_sums', sig(e.cell_sums[k]))}", style="dim"))
        largest = "its largest W·δ: " + ", ".join(f"f{int(f)} {sig_factor(e.weights[k, f])}·{sig_factor(e.deltas[k, f])}"
                                                  for f in order)
        parts.append(Text(largest if len(largest) <= ctx.width else largest[:largest.rfind(", f")], style="dim"))
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
        for col in ("cell", "output (row, col)", "tap (i, j)", "Σ_f W·δ"):
            table.add_column(col, justify="right", no_wrap=True)
        for m, ((a, b), (p, q), s) in enumerate(zip(e.cells, e.taps, e.cell_sums)):
            table.add_row(Text(str(m), style="reverse" if m == k else ""), f"({a}, {b})", f"({p}, {q})",
                          ctx.shown("cell_sums", sig(s)))
        parts.append(table)
    return Group(*parts)


# -- pooling ------------------------------------------------------------------------------------
def pool_routing_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    return [Heatmap("window", np.where(e.real, e.window, np.nan), Scale.signed(np.nan_to_num(e.window)), "row", "col",
                    mark=None if e.winner is None or "winner" in ctx.hidden else tuple(e.winner)),
            Heatmap("gradient routed", e.routed, Scale.signed(e.routed), "row", "col")]


def pool_routing_view(ctx: ViewContext) -> Group:
    e = ctx.event
    ph, pw = e.window.shape
    head = Text(f"{clean_text(e.layer)}: channel {e.channel} at output row {e.row}, col {e.col} backward "
                f"({e.mode} pooling, {ph}×{pw} window)\n", style="bold")
    head.append(f"∂L/∂y here = {sig(e.output_gradient)}\n")
    if e.winner is not None:
        wi, wj = e.winner
        head.append(f"max pooling: only the winner (window cell {ctx.shown('winner', f'{wi}, {wj}')}) changed the output, "
                    "so it gets all of it: ")
        head.append(ctx.shown("routed", sig(e.routed[wi, wj])), style="bold reverse")
        head.append("\nevery other cell of the window gets 0", style="dim")
    else:
        n = int(e.real.sum())
        cell = tuple(np.argwhere(e.real)[0])
        value = ctx.shown("routed", sig(e.routed[cell]))
        equation = f"∂L/∂y / {n} = {sig(e.output_gradient)} / {n} = "
        lead = f"average pooling: each of the {n} real cells gets "
        if len(lead) + len(equation) + len(value) > ctx.width:  # the equation on a line of its own
            lead = lead.rstrip() + "\n"
        head.append(lead + equation)
        head.append(value, style="bold reverse")
    head.append(f"\ninput cell of window cell (0, 0): row {e.origin[0]}, col {e.origin[1]}", style="dim")
    grids = [stack(Text("window (forward values)", style="dim"), number_grid(e.window, "{:+.4f}", special=~e.real)),
             stack(Text("gradient each cell receives", style="dim"),
                   number_grid(e.routed, "{:+.4f}", withheld="routed" in ctx.hidden))]
    return Group(head, fit(grids, ctx.width))


# -- recurrent ------------------------------------------------------------------------------------
def recurrent_gradient_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    """δh, δc (LSTM) and each gate's gradient over units × tokens for the current sweep, and the
    per-token norm ‖δh‖ as a one-row picture."""
    e = ctx.event
    sweep = ctx.replay.sweep()
    n_time = max(ev.time for ev in sweep) + 1
    units = len(e.dh)
    fields = [("δh", lambda ev: ev.dh)]
    if e.cell == "lstm":
        fields.append(("δc", lambda ev: ev.dc if ev.dc is not None else ev.dc_next))
    names = LSTM_GATES if e.cell == "lstm" else GRU_GATES if e.cell == "gru" else ("z",)
    for row, gate in enumerate(names):
        fields.append((f"δ{gate}", lambda ev, row=row: None if ev.dz is None else ev.dz[row]))
    maps = []
    for title, get in fields:
        grid = np.full((units, n_time), np.nan, np.float32)
        for ev in sweep:
            v = get(ev)
            if v is not None:
                grid[:, ev.time] = v
        maps.append(Heatmap(title, grid, Scale.signed(np.nan_to_num(grid)), "unit", "token",
                            mark=(ctx.replay.unit, e.time)))
    norms = np.full((1, n_time), np.nan, np.float32)
    for ev in sweep:
        norms[0, ev.time] = ev.norm
    maps.append(Heatmap("‖δh‖ per token", norms, Scale(0.0, float(np.nanmax(norms)) or 1.0, "sequential"), "", "token"))
    return maps


def recurrent_gradient_equations(ctx: ViewContext) -> Text:
    e, u = ctx.event, ctx.replay.unit
    text = Text()
    if e.masked:
        text.append(f"token {e.time} {token_label(ctx.trace, e.time)} is masked: the step did not happen, so "
                    "its gradients pass through unchanged\n", style="bold yellow")
        text.append(f"δh_prev = δh_next = {sig(e.dh_next[u])}\n")
        if e.dc_next is not None:
            text.append(f"δc_prev = δc_next = {sig(e.dc_next[u])}\n")
        return text
    numbers = f"{sig(e.dh_out[u])} {sig_term(e.dh_next[u])} = "
    text.append(line(ctx, f"δh = from the output + from step t+1 = {numbers}", f"δh = output + next = {numbers}", 10))
    text.append(f"{ctx.shown('dh', sig(e.dh[u]))}\n", style="bold")
    if e.cell == "lstm":
        i, f, g, o = (e.gates[row, u] for row in range(4))
        numbers = f"{sig(e.dc_next[u])} + {sig_factor(e.dh[u])}·{sig_factor(o)}·{sig_factor(e.c_slope[u])} = "
        text.append(line(ctx, f"δc = δc_next + δh·o·tanh'(c) = {numbers}", f"δc = {numbers}", 10))
        text.append(f"{ctx.shown('dc', sig(e.dc[u]))}\n", style="bold")
        uses = (("i", "δc·g", (e.dc[u], g)), ("f", "δc·c_prev", (e.dc[u], e.c_prev[u])),
                ("g", "δc·i", (e.dc[u], i)), ("o", "δh·tanh(c)", (e.dh[u], e.c_act[u])))
        for row, (gate, symbolic, (a, b)) in enumerate(uses):
            act = "tanh'" if gate == "g" else "σ'"
            first = ctx.shown("dc", sig_factor(a)) if gate != "o" else sig_factor(a)
            numbers = f"{first}·{sig_factor(b)}·{sig_factor(e.slopes[row, u])} = {ctx.shown('dz', sig(e.dz[row, u]))}"
            text.append(line(ctx, f"δ{gate} = {symbolic}·{act} = {numbers}", f"δ{gate} = {numbers}") + "\n")
        text.append(f"δc_prev = δc·f = {ctx.shown('dc', sig_factor(e.dc[u]))}·{sig_factor(f)} = {ctx.shown('dc_prev', sig(e.dc_prev[u]))}\n")
    elif e.cell == "simple_rnn":
        text.append(f"δz = δh·tanh'(z) = {sig_factor(e.dh[u])}·{sig_factor(e.slopes[0, u])} = "
                    f"{ctx.shown('dz', sig(e.dz[0, u]))}\n")
    elif e.cell == "gru" and e.gates is not None and e.h_prev is not None:
        z, r, h_tilde = (e.gates[row, u] for row in range(3))
        d_h = ctx.shown("dz", sig(e.dz[2, u]))
        text.append(line(ctx, f"δh̃ = δh·(1 − z)·tanh' = {sig_factor(e.dh[u])}·(1 − {plain(z)})·{sig_factor(e.slopes[2, u])} = "
                              f"{d_h}", f"δh̃ = {sig_factor(e.dh[u])}·(1 − {plain(z)})·{sig_factor(e.slopes[2, u])} = {d_h}")
                    + "\n")
        text.append(line(ctx, f"δz = δh·(h_prev − h̃)·σ' = {sig_factor(e.dh[u])}·({sig(e.h_prev[u])} − {sig_factor(h_tilde)})·"
                              f"{sig_factor(e.slopes[0, u])} = {ctx.shown('dz', sig(e.dz[0, u]))}",
                         f"δz = {sig_factor(e.dh[u])}·({sig(e.h_prev[u])} − {sig_factor(h_tilde)})·{sig_factor(e.slopes[0, u])} = "
                         f"{ctx.shown('dz', sig(e.dz[0, u]))}") + "\n")
        if e.h_in is not None:  # reset_after: r multiplies h_prev·U_h + rb_h
            text.append(f"δr = δh̃·(h_prev·U_h + rb_h)·σ' = {ctx.shown('dz', sig_factor(e.dz[2, u]))}·{sig_factor(e.h_in[u])}·"
                        f"{sig_factor(e.slopes[1, u])} = {ctx.shown('dz', sig(e.dz[1, u]))}\n")
        else:  # reset before the product: δr reads δh̃ through U_h, a sum over the units
            text.append(f"δr = ((δh̃·U_hᵀ) ⊙ h_prev)·σ' = {ctx.shown('dz', sig(e.dz[1, u]))}\n")
    else:
        text.append("δ(pre-activation) per gate: " + ", ".join(sig(e.dz[row, u]) for row in range(e.dz.shape[0]))
                    + "\n")
    passed = "δz·Uᵀ" if e.cell == "simple_rnn" else "δh·z + Σ δ(gates)·Uᵀ" if e.cell == "gru" else "Σ δ(gates)·Uᵀ"
    first = not any(ev.step < e.step for ev in ctx.replay.sweep())
    to = "to the initial state" if first else "to step t−1"
    text.append(f"δh_prev = {passed}, {to}: {ctx.shown('dh_prev', sig(e.dh_prev[u]))}\n"
                f"‖δh‖ over the {len(e.dh)} units = {ctx.shown('norm', plain(e.norm))}", style="dim")
    return text


def recurrent_gradient_view(ctx: ViewContext) -> Group:
    e = ctx.event
    kind = {"lstm": "LSTM", "gru": "GRU"}.get(e.cell, "SimpleRNN")
    head = Text(f"{clean_text(e.layer)}: {kind} {e.direction} sweep, gradients at token {e.time} "
                f"{token_label(ctx.trace, e.time)}, unit {ctx.replay.unit} of 0–{len(e.dh) - 1}\n", style="bold")
    maps = recurrent_gradient_heatmaps(ctx)
    sweep = sorted(ctx.replay.sweep(), key=lambda ev: ev.time)
    padded = [ev for ev in sweep if ev.masked]  # the layer's own mask, not the token text
    norms = Text("‖δh‖ per token (how much gradient reaches each step):\n", style="dim")
    # `earlier_norms` withholds every norm but the selected step's and the one a step back from it
    # (backpropagation runs against the sweep: to time − 1 in a forward sweep, time + 1 backward)
    back = e.time - 1 if e.direction != "backward" else e.time + 1

    # while the earlier norms are withheld, the bars are scaled to the two shown (a bar scaled to the
    # whole sweep would tell how they compare with the hidden ones)
    visible = [ev.norm for ev in sweep if ev.time in (e.time, back)]
    top = max(visible) if "earlier_norms" in ctx.hidden and visible else maps[-1].scale.hi

    def norm_shown(ev, text: str) -> str:
        return ctx.shown("earlier_norms", ctx.shown("norm", text)) if ev.time not in (e.time, back) \
            else ctx.shown("norm", text)

    for ev in sweep:
        if ev in padded and ev is not e:
            continue
        label = token_label(ctx.trace, ev.time).strip("'")[:10]
        mark = "reverse" if ev.time == e.time else ""
        norms.append(f"{ev.time:>3} {label:<10} ", style=mark)
        norms.append(f"{norm_shown(ev, plain(ev.norm))} {norm_shown(ev, bar(ev.norm / (top or 1.0), 20))}\n",
                     style="dim" if ev.masked else "")
    if padded:
        values = {plain(ev.norm) for ev in padded}
        zero = all(float(ev.norm) == 0.0 for ev in padded)
        shown = ctx.shown("earlier_norms", ctx.shown("norm", values.pop() if len(values) == 1 else "various"))
        why = "no gradient reaches the padding" if zero else "masked steps pass δh on unchanged"
        norms.append(f"    positions {padded[0].time}–{padded[-1].time} [pad]: {shown} ({why})\n", style="dim")
    pictures = fit([stack(Text(m.title, style="bold"), m.block()) for m in maps[:-1]], ctx.width, gap=2)
    axes = Text("rows: units; columns: token positions; white: the selected unit and token", style="dim")
    return Group(head, recurrent_gradient_equations(ctx), norms, legends(maps[:1]), pictures, axes)


# -- the input -----------------------------------------------------------------------------------
def saliency_heatmaps(ctx: ViewContext) -> list[Heatmap]:
    e = ctx.event
    return [Heatmap("saliency max|∂L/∂x|", e.saliency, Scale(0.0, float(e.saliency.max()) or 1.0, "sequential"), "row", "col",
                    mark=grid_cell(ctx, e.saliency.shape))]


def saliency_view(ctx: ViewContext) -> Group:
    e = ctx.event
    r, c = grid_cell(ctx, e.saliency.shape)
    g = e.gradient[r, c]
    head = Text(f"input: the saliency map |∂L/∂x|; pixel ({r}, {c}) selected (arrows)\n", style="bold")
    head.append(f"∂L/∂x at ({r}, {c}) per channel: {', '.join(num(v, 6) for v in g)}\n")
    head.append(f"saliency = max(|{'|, |'.join(num(v, 6) for v in g)}|) = ")
    head.append(plain(e.saliency[r, c], 6), style="bold reverse")
    head.append("\nbright pixels are those whose change would change the loss most", style="dim")
    blocks = []
    image = ctx.trace.context.get("model_input")
    if isinstance(image, np.ndarray) and image.ndim == 4 and image.shape[-1] == 3:
        pixels = image[0].astype(np.float32)
        lo, hi = float(pixels.min()), float(pixels.max())
        blocks.append(stack(Text("the picture", style="dim"),
                            half_block_image((pixels - lo) / max(hi - lo, 1e-6) * 255, (r, c, 1, 1))))
    m = saliency_heatmaps(ctx)[0]
    blocks.append(stack(Text(m.title, style="dim"), m.block(), m.scale.legend(10)))
    return Group(head, fit(blocks, ctx.width))


# -- one SGD step (a lesson's) -------------------------------------------------------------------
def sgd_view(step: Any, ctx: ViewContext) -> Text:
    """One plain SGD step of the whole model, seen at one bias: every number is the model's (its
    weights before and after `train_step` on a copy, the backward step's gradient, the loss)."""
    text = Text(f"one SGD step of the whole model (on a copy: the model shown is unchanged), learning rate "
                f"lr = {step.learning_rate:g}\n", style="bold")
    text.append(f"bias of unit {step.unit} of {clean_text(step.layer)}: b = {num(step.weight)}, "
                f"∂L/∂b = {num(step.gradient)}\n")
    text.append(f"b_new = b − lr·∂L/∂b = {num(step.weight)} − {step.learning_rate:g}·{factor(step.gradient)} = ")
    text.append(ctx.shown("new_weight", num(step.new_weight)), style="bold reverse")
    text.append(f"\nevery weight moves the same way, w − lr·∂L/∂w; the model's loss on this input: "
                f"before {plain(step.loss_before)}, after {ctx.shown('loss_after', plain(step.loss_after))}\n",
                style="dim")
    return text
