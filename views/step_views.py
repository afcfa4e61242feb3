"""One renderer per trace event kind. Each takes the event and the Trace and returns a rich
renderable; every number shown is a field of an event (nothing is recomputed here)."""
from __future__ import annotations

from typing import Any

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from nntrace.views.render import bar, half_block_heatmap, half_block_image, heat, number_grid, side_by_side, stack


def layer_input(trace, layer: str) -> np.ndarray | None:
    """The output of the layer before `layer` (its input), or the model input, from LayerEnd events."""
    names = [n for n, _ in trace.layers]
    i = names.index(layer)
    if i == 0:
        return None
    return trace.output(names[i - 1])


def conv_view(e, trace, seen: np.ndarray | None, keras_out: np.ndarray | None) -> Group:
    kh, kw, cin = e.patch.shape
    source = layer_input(trace, e.layer)
    title = Text(f"{e.layer}  filter {e.filter}  output row {e.row}, column {e.col}", style="bold")
    pictures, captions = [], []
    if source is not None and source.ndim == 3:
        if source.shape[-1] == 3 and cin == 3:  # an RGB image: stretch to 0–255 for display only
            lo, hi = float(source.min()), float(source.max())
            pictures.append(half_block_image((source - lo) / max(hi - lo, 1e-6) * 255,
                                             (e.origin[0], e.origin[1], kh, kw)))
            captions.append(Text("input, patch highlighted", style="dim"))
        else:
            ch = int(np.argmax(np.abs(e.products).sum(axis=(0, 1))))
            pictures.append(half_block_heatmap(source[..., ch], mark=(max(e.origin[0], 0), max(e.origin[1], 0))))
            captions.append(Text(f"input channel {ch} (contributes most)", style="dim"))
    if seen is not None:
        pictures.append(half_block_heatmap(seen, mark=(e.row, e.col), hidden=np.isnan(seen)))
        captions.append(Text(f"filter {e.filter}'s feature map so far", style="dim"))
    top = side_by_side([stack(c, p) for c, p in zip(captions, pictures)]) if pictures else Text()
    rows = []
    for ch in range(min(cin, 3)):
        labels = [f"patch ch{ch}", f"× kernel ch{ch}", f"= products ch{ch}"]
        rows.append(side_by_side([stack(Text(label, style="dim"), grid) for label, grid in zip(labels, [
            number_grid(e.patch[..., ch], "{:+.3f}", special=e.padding), number_grid(e.kernel[..., ch], "{:+.3f}"),
            number_grid(e.products[..., ch], "{:+.3f}")])]))
    grids = stack(*rows) if rows else Text()
    more = Text(f"channels 0–{min(cin, 3) - 1} of {cin} shown; the sum runs over all {cin}\n" if cin > 3 else "",
                style="dim")
    formula = Text()
    formula.append(f"sum of {e.products.size} products = {e.total:+.5f}\n")
    formula.append(f"+ bias {e.bias:+.5f} = pre-activation {e.pre_activation:+.5f} → activation → ")
    formula.append(f"{e.value:+.5f}", style="bold reverse")
    if keras_out is not None:
        formula.append(f"   Keras: {float(keras_out[e.row, e.col, e.filter]):+.5f}", style="italic")
    return Group(title, top, grids, more, formula)


def pool_view(e, trace, keras_out: np.ndarray | None) -> Group:
    text = Text(f"{e.layer}  channel {e.channel}  output row {e.row}, column {e.col}  ({e.mode} pooling)\n",
                style="bold")
    grid = number_grid(e.window, special=~e.real)
    if e.winner is not None:
        text.append(f"winner at window cell {tuple(e.winner)}: ")
    else:
        text.append(f"mean of {int(e.real.sum())} real cells: ")
    text.append(f"{e.value:+.5f}", style="bold reverse")
    if keras_out is not None:
        text.append(f"   Keras: {float(keras_out[e.row, e.col, e.channel]):+.5f}", style="italic")
    return Group(text, Text("window:", style="dim"), grid)


def dense_view(e, trace, keras_out: np.ndarray | None) -> Group:
    table = Table(title=f"{e.layer}  unit {e.unit}: largest contributions x·w", title_justify="left")
    table.add_column("input #", justify="right")
    table.add_column("x·w", justify="right")
    for idx, contribution in zip(e.inputs, e.contributions):
        table.add_row(str(int(idx)), Text(f"{contribution:+.5f}", style=heat(float(contribution),
                                                                          float(np.abs(e.contributions).max()))))
    text = Text(f"sum over all inputs {e.total:+.5f} + bias {e.bias:+.5f} = {e.pre_activation:+.5f}"
                f" → {e.activation} → ")
    text.append(f"{e.value:+.5f}", style="bold reverse")
    if keras_out is not None:
        text.append(f"   Keras: {float(keras_out[e.unit]):+.5f}", style="italic")
    return Group(table, text)


def softmax_view(e, trace, keras_out: np.ndarray | None) -> Group:
    labels = trace.context.get("labels") or [str(i) for i in range(len(e.probabilities))]
    table = Table(title=f"{e.layer}: softmax", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("class", "logit", "exp(z−max)", "prob", "", "Keras"):
        table.add_column(col, justify="right" if col not in ("class", "") else "left", no_wrap=True)
    best = int(np.argmax(e.probabilities))
    for i, label in enumerate(labels):
        style = "bold" if i == best else ""
        table.add_row(Text(label, style=style), f"{e.logits[i]:+.4f}", f"{e.exps[i]:.4f}",
                      Text(f"{e.probabilities[i]:.4f}", style=style), bar(float(e.probabilities[i]), 16),
                      "…" if keras_out is None else f"{float(keras_out[i]):.4f}")
    return Group(table, Text(f"sum of exps = {e.total:.4f}; probability = exp / sum", style="dim"))


def embedding_view(e, trace, keras_out: np.ndarray | None) -> Group:
    tag = " (padding)" if e.padding else " (out of vocabulary → [UNK])" if e.oov else ""
    text = Text(f"{e.layer}  position {e.position}: token ")
    text.append(repr(e.token) if e.token is not None else "?", style="bold")
    text.append(f" → id {e.token_id}{tag}\n")
    return Group(text, Text("vector:", style="dim"), number_grid(e.vector[None, :16]),
                 Text(f"({len(e.vector)} values; first 16 shown)", style="dim"))


def dropout_view(e, trace, keras_out) -> Text:
    return Text(f"{e.layer}: dropout with rate {e.rate} is the identity at inference — "
                "the output equals the input. In training it would zero each value with probability "
                f"{e.rate} and scale the rest by 1/(1−{e.rate}).")


def flatten_view(e, trace, keras_out) -> Text:
    h, w, c = e.input_shape if len(e.input_shape) == 3 else (*e.input_shape, 1, 1)[:3]
    text = Text(f"{e.layer}: {e.input_shape} → {len(e.sources)} values, row by row, channels last.\n")
    for k in (0, 1, c - 1 if c > 1 else 1, c, len(e.sources) - 1):
        if 0 <= k < len(e.sources):
            text.append(f"  flat[{k}] ← cell {tuple(int(v) for v in e.sources[k])}\n")
    return text


def token_ids(trace) -> np.ndarray | None:
    """The token ids of the traced sentence (the TextVectorization layer's recorded output)."""
    first, cls = trace.layers[0]
    return trace.output(first).reshape(-1) if cls == "TextVectorization" else None


def recurrent_view(events: list, index: int, trace, width: int = 72) -> Group:
    """Tokens across the top; per direction the gates (LSTM) or parts (SimpleRNN) and h as
    units × tokens heatmaps up to the current step, for a window of tokens that fits `width`
    columns; masked steps marked."""
    current = events[index]
    tokens = trace.context.get("tokens")
    direction = current.direction
    sweep = [e for e in events if getattr(e, "direction", None) == direction]
    shown = [e for e in sweep if e.step <= current.step]
    n_time = max(e.time for e in sweep) + 1
    kind = "LSTM" if current.kind == "lstm_step" else "SimpleRNN"
    names = ("i", "f", "g", "o", "c", "h") if kind == "LSTM" else ("x_part", "h_part", "pre_activation", "h")
    span = max(3, min(n_time, width // len(names) - 2))  # token columns that fit beside each other
    start = max(0, min(current.time - span + 2, n_time - span))
    window = range(start, start + span)
    ids = token_ids(trace)
    header = Text("… " if start > 0 else "")
    for t in window:
        tok = tokens[t] if tokens and t < len(tokens) else str(t)
        masked = next((e.masked for e in sweep if e.time == t), False)
        oov = ids is not None and t < len(ids) and ids[t] == trace.context.get("oov_id")
        style = "reverse bold" if t == current.time else ("dim strike" if masked else "bold red" if oov else "")
        header.append((tok or "·pad·") + ("?" if oov else ""), style=style)
        header.append(" ")
    if start + span < n_time:
        header.append(f"… ({n_time} positions)", style="dim")
    columns = []
    for name in names:
        grid = np.full((len(getattr(current, name)), span), np.nan, np.float32)
        for e in shown:
            if start <= e.time < start + span:
                grid[:, e.time - start] = getattr(e, name)
        columns.append(stack(Text(name, style="bold"), half_block_heatmap(
            grid, scale=1.0 if name in ("i", "f", "o", "g", "h") else None, hidden=np.isnan(grid))))
    maps = side_by_side(columns, gap=2)
    status = Text(f"{kind} {direction} sweep, step {current.step} reads token #{current.time}: ")
    status.append(repr(tokens[current.time]) if tokens and current.time < len(tokens) else "")
    if current.masked:
        status.append("  — masked (padding): states carried over unchanged", style="bold yellow")
    detail = Text()
    u = int(np.argmax(np.abs(current.h)))
    if kind == "LSTM":
        detail.append(f"unit {u}: c = f·c_prev + i·g = {current.f[u]:.3f}·{current.c_prev[u]:+.3f} + "
                      f"{current.i[u]:.3f}·{current.g[u]:+.3f} = {current.c[u]:+.4f};  "
                      f"h = o·tanh(c) = {current.o[u]:.3f}·tanh({current.c[u]:+.3f}) = {current.h[u]:+.4f}")
    else:
        detail.append(f"unit {u}: x·W {current.x_part[u]:+.3f} + h_prev·U {current.h_part[u]:+.3f} + bias "
                      f"{current.bias[u]:+.3f} = {current.pre_activation[u]:+.4f} → tanh → {current.h[u]:+.4f}")
    legend = Text(f"units (down) × tokens {start}–{start + span - 1} (across); dark = not yet read; "
                  "red? = out of vocabulary", style="dim")
    return Group(header, status, detail, legend, maps)


def merge_view(e, trace, keras_out) -> Group:
    text = Text(f"{e.layer}: merge '{e.merge_mode}' of the forward sweep (after the last real token) and the "
                "backward sweep (after reading token 0)\n")
    rows = [("forward", e.forward), ("backward", e.backward)] + ([("merged", e.merged)] if e.merged is not None else [])
    table = Table.grid(padding=(0, 1))
    for name, vec in rows:
        flat = np.asarray(vec).reshape(-1)
        table.add_row(Text(f"{name} ({flat.size})", style="bold"), half_block_heatmap(flat[None, :64], scale=1.0))
    return Group(text, table)


def summary_view(layer: str, layer_class: str, trace, keras_out: np.ndarray | None, diff: float | None) -> Group:
    out = trace.output(layer)
    text = Text(f"{layer} ({layer_class}) → output {tuple(out.shape)} for this input\n", style="bold")
    text.append(f"min {float(np.min(out)):+.4f}  max {float(np.max(out)):+.4f}  mean {float(np.mean(out)):+.4f}\n")
    if diff is not None:
        text.append(f"max |scratch − Keras| = {diff:.2e}\n", style="italic")
    parts: list[Any] = [text]
    if out.ndim == 3:
        ch = int(np.argmax(np.abs(out).mean(axis=(0, 1))))
        parts += [Text(f"most active channel {ch}:", style="dim"), half_block_heatmap(out[..., ch])]
    elif out.ndim >= 1 and out.size:
        flat = out.reshape(out.shape[0], -1) if out.ndim == 2 else out.reshape(1, -1)
        parts.append(half_block_heatmap(flat[:, :96]))
    return Group(*parts)
