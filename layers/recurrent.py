"""Recurrent layers: cells (one time step), one scan that owns masking and direction, the layers.

Shapes: inputs `(batch, timesteps, features)`, mask `(batch, timesteps)` of bools,
states `(batch, units)`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np

from nntrace.layers import activations
from nntrace.layers import vector_ops
from nntrace.layers.base import Layer, as_float32
from nntrace.layers.errors import InputShapeError
from nntrace.layers.parallel import over_batch, together


# ---------------------------------------------------------------------------------------------
# Cells: one time step each. `x_proj` is the input projection `x_t @ kernel + bias`, computed for
# every step at once by the layer (one matrix product) before the scan. Backward, a cell turns the
# gradients of one step's output and new states into the gradient of that step's pre-activation
# `z = x_proj + h_prev @ recurrent_kernel` and of the previous states; the layer turns the `z`
# gradients of every step into the weight and input gradients with one matrix product each.
# ---------------------------------------------------------------------------------------------
@dataclass
class SimpleRNNCell:
    """`h_t = activation(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel)`."""

    kernel: np.ndarray            # (features, units)
    recurrent_kernel: np.ndarray  # (units, units)
    bias: np.ndarray | None       # (units,)
    activation: Callable[[np.ndarray], np.ndarray]
    activation_grad: activations.Gradient = activations.tanh_grad

    n_states = 1

    @property
    def units(self) -> int:
        return self.recurrent_kernel.shape[-2]

    def project_inputs(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """`(batch, timesteps, features)` → `x @ kernel + bias`, `(batch, timesteps, units)`, into
        `out` (C-contiguous float32) when given."""
        # one matrix product over every (sample, step): NumPy runs `(b, t, f) @ (f, n)` as b products
        assert out is None or out.flags.c_contiguous, "project_inputs writes into a C-contiguous `out` only"
        z = np.matmul(x.reshape(-1, x.shape[-1]), self.kernel,
                      out=None if out is None else out.reshape(-1, self.kernel.shape[-1]))
        vector_ops.bias_relu_in_place(z, self.bias, relu=False)
        return z.reshape(x.shape[:-1] + self.kernel.shape[1:])

    def step(self, x_proj: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step: returns (output h_t, [h_t])."""
        h = self.activation(x_proj + states[0] @ self.recurrent_kernel)
        return h, [h]

    def step_cached(self, x_proj: np.ndarray, states: Sequence[np.ndarray]):
        """`step`, plus what `step_backward` needs: (h_prev, pre-activation z, h)."""
        z = x_proj + states[0] @ self.recurrent_kernel
        h = self.activation(z)
        return h, [h], (states[0], z, h)

    def step_backward(self, cache: tuple, d_out: np.ndarray, d_states: Sequence[np.ndarray]):
        """Gradients of one step: (dL/dz `(batch, units)`, [dL/dh_prev]) from dL/d(output) and
        dL/d(new states); the output is the new state h, so both reach it."""
        _, z, h = cache
        dz = self.activation_grad(d_out + d_states[0], z, h)
        return dz, [dz @ self.recurrent_kernel.T]

    def explain(self, x_t: np.ndarray, states: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The parts of one step for `x_t` `(batch, features)`: x·W, h_prev·U, bias, pre-activation."""
        x_part = x_t @ self.kernel
        h_part = states[0] @ self.recurrent_kernel
        bias = np.zeros(self.units, np.float32) if self.bias is None else self.bias
        return {"x_part": x_part, "h_part": h_part, "bias": np.broadcast_to(bias, x_part.shape),
                "pre_activation": x_part + bias + h_part}


@dataclass
class LSTMCell:
    """Gates in Keras order i, f, c (candidate g), o:
    `z = x_t@W + b + h@U`; `c_t = f*c + i*g`; `h_t = o * activation(c_t)`."""

    kernel: np.ndarray            # (features, 4*units)
    recurrent_kernel: np.ndarray  # (units, 4*units)
    bias: np.ndarray | None       # (4*units,)
    activation: Callable[[np.ndarray], np.ndarray]
    recurrent_activation: Callable[[np.ndarray], np.ndarray]
    activation_grad: activations.Gradient = activations.tanh_grad
    recurrent_activation_grad: activations.Gradient = activations.sigmoid_grad

    n_states = 2

    @property
    def units(self) -> int:
        return self.recurrent_kernel.shape[-2]

    project_inputs = SimpleRNNCell.project_inputs

    def gates(self, x_proj: np.ndarray, h_prev: np.ndarray) -> tuple[np.ndarray, ...]:
        """The four activated gates (i, f, g, o), each `(batch, units)`."""
        z = h_prev @ self.recurrent_kernel
        z += x_proj
        return self.activate_gates(z)

    def activate_gates(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """Pre-activation `z` `(batch, 4*units)` → the gates (i, f, g, o)."""
        u = self.units
        gated = self.recurrent_activation(z)  # one call for all four blocks; the g block is replaced
        return gated[..., :u], gated[..., u:2 * u], self.activation(z[..., 2 * u:3 * u]), gated[..., 3 * u:]

    def explain(self, x_t: np.ndarray, states: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The four gates of one step for `x_t` `(batch, features)`, and their parts: x·W, h_prev·U,
        bias and pre-activation, each `(batch, 4, units)` with rows in the order i, f, g, o."""
        u = self.units
        x_part = x_t @ self.kernel
        h_part = states[0] @ self.recurrent_kernel
        bias = np.zeros(4 * u, np.float32) if self.bias is None else self.bias
        i, f, g, o = self.gates(self.project_inputs(x_t), states[0])
        split = lambda v: v.reshape(v.shape[:-1] + (4, u))  # noqa: E731
        return {"i": i, "f": f, "g": g, "o": o, "x_part": split(x_part), "h_part": split(h_part),
                "bias": split(np.broadcast_to(bias, x_part.shape)),
                "pre_activation": split(self.project_inputs(x_t) + h_part)}

    def step(self, x_proj, states):
        h_prev, c_prev = states
        i, f, g, o = self.gates(x_proj, h_prev)
        c = f * c_prev
        c += i * g
        h = o * self.activation(c)  # not in place: a linear activation returns c itself
        return h, [h, c]

    def step_cached(self, x_proj: np.ndarray, states: Sequence[np.ndarray]):
        """`step`, plus what `step_backward` needs: (c_prev, i, f, g, o, c, activation(c), and the
        gates' derivatives with respect to z `(batch, 4*units)`)."""
        h_prev, c_prev = states
        z = x_proj + h_prev @ self.recurrent_kernel
        u = self.units
        gated = self.recurrent_activation(z)
        g = self.activation(z[:, 2 * u:3 * u])
        i, f, o = gated[:, :u], gated[:, u:2 * u], gated[:, 3 * u:]
        c = f * c_prev + i * g
        c_act = self.activation(c)
        h = o * c_act
        slopes = activations.derivative(self.recurrent_activation_grad, z, gated)  # all four blocks at once
        slopes[:, 2 * u:3 * u] = activations.derivative(self.activation_grad, z[:, 2 * u:3 * u], g)
        return h, [h, c], (c_prev, i, f, g, o, c, c_act, slopes)

    def step_backward(self, cache: tuple, d_out: np.ndarray, d_states: Sequence[np.ndarray]):
        """Gradients of one step: (dL/dz `(batch, 4*units)` in gate order i, f, g, o,
        [dL/dh_prev, dL/dc_prev]) from dL/d(output h) and dL/d(new h, new c)."""
        c_prev, i, f, g, o, c, c_act, slopes = cache
        dh = d_out + d_states[0]
        dc = d_states[1] + self.activation_grad(dh * o, c, c_act)  # h = o·act(c)
        # c = f·c_prev + i·g: the gradients of i, f, g, o, then through each gate's activation
        dz = np.concatenate([dc * g, dc * c_prev, dc * i, dh * c_act], axis=1)
        dz *= slopes
        return dz, [dz @ self.recurrent_kernel.T, dc * f]


@dataclass
class GRUCell:
    """Gates in Keras order z (update), r (reset), h (candidate h̃):
    `z = σ(x·W_z + b_z + h·U_z [+ rb_z])`, `r = σ(x·W_r + b_r + h·U_r [+ rb_r])`;
    `reset_after`: `h̃ = tanh(x·W_h + b_h + r ⊙ (h·U_h + rb_h))`, else `h̃ = tanh(x·W_h + b_h + (r ⊙ h)·U_h)`;
    `h_t = z ⊙ h_prev + (1 − z) ⊙ h̃` (z keeps the old state)."""

    kernel: np.ndarray                  # (features, 3*units)
    recurrent_kernel: np.ndarray        # (units, 3*units)
    bias: np.ndarray | None             # input bias (3*units,)
    recurrent_bias: np.ndarray | None   # (3*units,) with reset_after, else None
    activation: Callable[[np.ndarray], np.ndarray]
    recurrent_activation: Callable[[np.ndarray], np.ndarray]
    reset_after: bool = True
    activation_grad: activations.Gradient = activations.tanh_grad
    recurrent_activation_grad: activations.Gradient = activations.sigmoid_grad

    n_states = 1

    @property
    def units(self) -> int:
        return self.recurrent_kernel.shape[-2]

    project_inputs = SimpleRNNCell.project_inputs

    def parts(self, x_proj: np.ndarray, h_prev: np.ndarray) -> dict[str, np.ndarray]:
        """z, r, the candidate h̃ and the recurrent parts `h·U` (per gate) of one step."""
        u = self.units
        if self.reset_after:
            inner = h_prev @ self.recurrent_kernel
            h_part = inner.copy()
            if self.recurrent_bias is not None:
                inner += self.recurrent_bias
        else:
            inner = h_prev @ self.recurrent_kernel[:, :2 * u]
        z = self.recurrent_activation(x_proj[:, :u] + inner[:, :u])
        r = self.recurrent_activation(x_proj[:, u:2 * u] + inner[:, u:2 * u])
        if self.reset_after:
            recurrent_h = r * inner[:, 2 * u:]
        else:
            h_part = np.concatenate([inner, (r * h_prev) @ self.recurrent_kernel[:, 2 * u:]], axis=-1)
            recurrent_h = h_part[:, 2 * u:]
        h_tilde = self.activation(x_proj[:, 2 * u:] + recurrent_h)
        return {"z": z, "r": r, "h_tilde": h_tilde, "h_part": h_part, "recurrent_h": recurrent_h}

    def step(self, x_proj, states):
        """One step, as `parts` computes it without keeping the parts: z and r in one activation call."""
        h_prev, u = states[0], self.units
        if self.reset_after:
            inner = h_prev @ self.recurrent_kernel
            if self.recurrent_bias is not None:
                inner += self.recurrent_bias
            zr = self.recurrent_activation(x_proj[..., :2 * u] + inner[..., :2 * u])
            h_tilde = self.activation(x_proj[..., 2 * u:] + zr[..., u:] * inner[..., 2 * u:])
        else:
            zr = self.recurrent_activation(x_proj[..., :2 * u] + h_prev @ self.recurrent_kernel[..., :2 * u])
            h_tilde = self.activation(x_proj[..., 2 * u:] + (zr[..., u:] * h_prev) @ self.recurrent_kernel[..., 2 * u:])
        z = zr[..., :u]
        h = z * h_prev + (1 - z) * h_tilde
        return h, [h]

    def step_cached(self, x_proj: np.ndarray, states: Sequence[np.ndarray]):
        """`step`, plus what `step_backward` needs: (h_prev, z, r, h̃, the candidate's recurrent
        input — `h·U_h + rb_h` with `reset_after`, else `r ⊙ h` — and the slopes of z, r, h̃ with
        respect to their pre-activations `(batch, 3*units)`)."""
        h_prev = states[0]
        u = self.units
        if self.reset_after:
            inner = h_prev @ self.recurrent_kernel
            if self.recurrent_bias is not None:
                inner += self.recurrent_bias
            a_zr = x_proj[:, :2 * u] + inner[:, :2 * u]
            gated = self.recurrent_activation(a_zr)
            r = gated[:, u:]
            h_in = inner[:, 2 * u:]
            a_h = x_proj[:, 2 * u:] + r * h_in
        else:
            a_zr = x_proj[:, :2 * u] + h_prev @ self.recurrent_kernel[:, :2 * u]
            gated = self.recurrent_activation(a_zr)
            r = gated[:, u:]
            h_in = r * h_prev
            a_h = x_proj[:, 2 * u:] + h_in @ self.recurrent_kernel[:, 2 * u:]
        z = gated[:, :u]
        h_tilde = self.activation(a_h)
        h = z * h_prev + (1 - z) * h_tilde
        slopes = np.concatenate([activations.derivative(self.recurrent_activation_grad, a_zr, gated),
                                 activations.derivative(self.activation_grad, a_h, h_tilde)], axis=1)
        return h, [h], (h_prev, z, r, h_tilde, h_in, slopes)

    def step_backward(self, cache: tuple, d_out: np.ndarray, d_states: Sequence[np.ndarray]):
        """Gradients of one step: (dL/d(x_proj) `(batch, 3*units)` in gate order z, r, h, [dL/dh_prev])
        from dL/d(output h) and dL/d(new h). `h = z·h_prev + (1 − z)·h̃`."""
        h_prev, z, r, h_tilde, h_in, slopes = cache
        u = self.units
        dh = d_out + d_states[0]
        da_h = dh * (1 - z) * slopes[:, 2 * u:]
        da_z = dh * (h_prev - h_tilde) * slopes[:, :u]
        if self.reset_after:  # a_h = x_h + r·(h·U_h + rb_h)
            da_r = da_h * h_in * slopes[:, u:2 * u]
            dz = np.concatenate([da_z, da_r, da_h], axis=1)
            d_h_prev = dh * z + np.concatenate([da_z, da_r, da_h * r], axis=1) @ self.recurrent_kernel.T
        else:  # a_h = x_h + (r·h)·U_h
            d_rh = da_h @ self.recurrent_kernel[:, 2 * u:].T
            da_r = d_rh * h_prev * slopes[:, u:2 * u]
            dz = np.concatenate([da_z, da_r, da_h], axis=1)
            d_h_prev = dh * z + d_rh * r + dz[:, :2 * u] @ self.recurrent_kernel[:, :2 * u].T
        return dz, [d_h_prev]

    def recurrent_weight_gradients(self, tape: list, dz: np.ndarray,
                                   h_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(dL/d(recurrent_kernel) `(units, 3*units)`, dL/d(recurrent_bias) `(3*units,)` or None)
        from the scan's tape and each step's dL/d(x_proj) `dz` `(batch, timesteps, 3*units)` in
        processing order (zero where a step did not happen), and each step's `h_prev` `(batch,
        timesteps, units)`."""
        u = self.units
        rows = dz.reshape(-1, 3 * u)
        if not len(tape):
            return np.zeros_like(self.recurrent_kernel), None if self.recurrent_bias is None else \
                np.zeros_like(self.recurrent_bias)

        def over_steps(index: int) -> np.ndarray:
            """Cache entry `index` of every step `(batch·timesteps, units)`; zero in the rows a step
            did not compute (their dz is zero)."""
            out = np.zeros(dz.shape[:2] + (u,), np.float32)
            for k, (_, cache) in enumerate(tape):
                if cache is not None:
                    out[:len(cache[index]), k] = cache[index]
            return out.reshape(-1, u)

        h_prev = h_prev.reshape(-1, u)
        if self.reset_after:  # the recurrent part of h̃'s pre-activation is r·(h·U_h + rb_h)
            r = over_steps(2)
            d_inner = np.concatenate([rows[:, :2 * u], rows[:, 2 * u:] * r], axis=1)
            d_bias = vector_ops.channel_sums(d_inner) if self.recurrent_bias is not None else None
            return h_prev.T @ d_inner, d_bias
        h_in = over_steps(4)  # r·h
        return np.concatenate([h_prev.T @ rows[:, :2 * u], h_in.T @ rows[:, 2 * u:]], axis=1), None

    def explain(self, x_t: np.ndarray, states: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The gates of one step for `x_t` `(batch, features)` and their parts, each `(batch, 3, units)`
        with rows in the order z, r, h: x·W, h_prev·U (for the h row: h_prev·U_h with `reset_after`,
        (r ⊙ h_prev)·U_h without), the input bias, the recurrent bias (`reset_after`), and the
        pre-activation (h row: x·W_h + b_h + r ⊙ (h·U_h + rb_h), or x·W_h + b_h + (r ⊙ h)·U_h)."""
        u = self.units
        x_part = x_t @ self.kernel
        x_proj = self.project_inputs(x_t)
        p = self.parts(x_proj, states[0])
        split = lambda v: v.reshape(v.shape[:-1] + (3, u))  # noqa: E731
        bias = np.zeros(3 * u, np.float32) if self.bias is None else self.bias
        recurrent_bias = None
        inner = p["h_part"]
        if self.reset_after:
            recurrent_bias = np.zeros(3 * u, np.float32) if self.recurrent_bias is None else self.recurrent_bias
            inner = inner + recurrent_bias
        pre = np.concatenate([x_proj[:, :2 * u] + inner[:, :2 * u], x_proj[:, 2 * u:] + p["recurrent_h"]], axis=-1)
        return {"z": p["z"], "r": p["r"], "h_tilde": p["h_tilde"], "x_part": split(x_part),
                "h_part": split(p["h_part"]), "bias": split(np.broadcast_to(bias, x_part.shape)),
                "recurrent_bias": None if recurrent_bias is None else split(np.broadcast_to(recurrent_bias,
                                                                                          x_part.shape)),
                "pre_activation": split(pre)}


# ---------------------------------------------------------------------------------------------
# The scan: the one place that knows about masks and direction (Keras's backend.rnn).
# ---------------------------------------------------------------------------------------------
class Tape(list):
    """The forward scan's record for `scan_backward`: one `(h_prev, cell cache or None)` per
    processing step, and `order`, the permutation of the batch's rows the scan ran in (None: as
    given)."""

    order: np.ndarray | None = None


def length_order(mask: np.ndarray | None) -> np.ndarray | None:
    """The rows of a masked batch `(batch, timesteps)` by descending count of real steps (stable):
    run in that order, the rows that step at any time are mostly the first ones, and the scan
    skips the rest (`step_rows`). None where it cannot help: no mask, one row, equal counts."""
    if mask is None or mask.shape[0] < 2:
        return None
    counts = mask.sum(axis=1)
    if (counts == counts[0]).all():
        return None
    return np.argsort(-counts, kind="stable")


def restore_order(order: np.ndarray | None, *arrays: np.ndarray) -> list[np.ndarray]:
    """Rows run in `order` (`length_order`) put back in the batch's own order."""
    if order is None:
        return list(arrays)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return [a[inverse] for a in arrays]


def contiguous_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`(start, stop)` per row of `mask` `(batch, timesteps)` when each row's real steps form one
    run (post- or pre-padding; start == stop for a row with none); None when some row has a gap."""
    counts = mask.sum(axis=1)
    start = np.where(counts > 0, mask.argmax(axis=1), 0)
    stop = start + counts
    t = np.arange(mask.shape[1])
    if not np.array_equal(mask, (t >= start[:, None]) & (t < stop[:, None])):
        return None
    return start, stop


def step_rows(mask: np.ndarray | None, batch: int, steps: int) -> list[tuple[int, bool]]:
    """Per input time t: `(n, whole)`, where `n` is one more than the last row that steps at t (0:
    none does) and `whole` says whether every one of the first `n` rows steps. Rows from `n` on
    only carry their states, so a scan computes the first `n` rows alone."""
    if mask is None or batch == 0:
        return [(batch, True)] * steps
    stepped = mask.any(axis=0)
    n = np.where(stepped, batch - np.argmax(mask[::-1], axis=0), 0)
    return [(int(a), int(a) == int(c)) for a, c in zip(n, mask.sum(axis=0))]


def scan_steps(cell, x_proj: np.ndarray, mask: np.ndarray | None = None, go_backwards: bool = False,
               zero_output_for_mask: bool = False,
               tape: list | None = None) -> Iterator[tuple[int, int, np.ndarray, list, list]]:
    """The scan, one step at a time: yields `(k, t, output, states_before, states_after)`.

    `k` counts processing steps, `t` is the index in the input sequence. At a masked step every
    state keeps its previous value and the output is the previous output (or zeros with
    `zero_output_for_mask`), as in Keras's backend.rnn; rows after the last one that steps are not
    computed (`step_rows`). A `tape` list receives each step's `(h_prev, cell cache)`, in
    processing order, for `scan_backward` (the cache covers the rows computed; None when none was).
    """
    batch, steps = x_proj.shape[:2]
    states = [np.zeros((batch, cell.units), np.float32) for _ in range(cell.n_states)]
    zeros = np.zeros((batch, cell.units), np.float32)
    prev_out = zeros
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    rows = step_rows(mask, batch, steps)
    for k, t in enumerate(order):
        n, whole = rows[t]
        held = zeros if zero_output_for_mask else prev_out  # the output of a row that does not step
        if n == 0:
            out, new_states = held, states
            if tape is not None:
                tape.append((states[0], None))
        else:
            part = states if n == batch else [s[:n] for s in states]
            if tape is None:
                out, new_states = cell.step(x_proj[:n, t], part)
            else:
                out, new_states, cache = cell.step_cached(x_proj[:n, t], part)
                tape.append((states[0], cache))
            if not whole:
                m = mask[:n, t, None]
                new_states = [np.where(m, a, s) for a, s in zip(new_states, part)]
                out = np.where(m, out, held[:n])
            if n < batch:
                new_states = [np.concatenate([a, s[n:]]) for a, s in zip(new_states, states)]
                out = np.concatenate([out, held[n:]])
        yield k, t, out, states, new_states
        states, prev_out = new_states, out


def scan(cell, x_proj: np.ndarray, mask: np.ndarray | None = None, go_backwards: bool = False,
         zero_output_for_mask: bool = False, tape: list | None = None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Run `cell` over time.

    Args:
        x_proj: projected inputs `(batch, timesteps, gates*units)`.
        mask: `(batch, timesteps)` bools; see `scan_steps` for the masking rule.
        go_backwards: process time reversed; outputs stay in processing order (as Keras).
        tape: a list to receive what `scan_backward` needs (see `scan_steps`).
    Returns:
        (last_output `(batch, units)`, outputs `(batch, timesteps, units)`, final states).
    """
    batch, steps = x_proj.shape[:2]
    outputs = np.zeros((batch, steps, cell.units), np.float32)
    states = [np.zeros((batch, cell.units), np.float32) for _ in range(cell.n_states)]
    for k, _, out, _, states in scan_steps(cell, x_proj, mask, go_backwards, zero_output_for_mask, tape):
        outputs[:, k] = out
    last = outputs[:, -1] if steps else np.zeros((batch, cell.units), np.float32)
    return last, outputs, states


def scan_backward(cell, tape: list, d_outputs: np.ndarray, mask: np.ndarray | None = None,
                  go_backwards: bool = False, zero_output_for_mask: bool = False,
                  record: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Backpropagation through time: the scan of `scan_steps` run in reverse.

    Args:
        tape: the forward scan's tape (one `(h_prev, cell cache)` per processing step).
        d_outputs: dL/d(outputs) `(batch, timesteps, units)` in processing order (for a layer
            without `return_sequences`, zeros but the last step).
        mask, go_backwards, zero_output_for_mask: as in the forward scan.
    Returns:
        (dL/dz `(batch, timesteps, gates*units)` in input time order — the gradient of each
        step's `x_proj`, zero at masked steps — and dL/d(recurrent_kernel); for a cell with
        `recurrent_weight_gradients` (GRU), what that returns).

    A masked step copied the states and (unless `zero_output_for_mask`) the previous output, so
    their gradients pass through it unchanged and the step's own computation gets nothing; the
    rows that the forward scan did not compute are not computed here either.
    A `record` list receives one `(k, t, d_out, d_states_in, d_states_out, dz or None)` per
    processing step, last step first: the output's gradient, the states' gradients arriving from
    step k + 1 and those passed on to step k − 1 (for the backward trace).
    """
    batch, steps = d_outputs.shape[:2]
    zeros = np.zeros((batch, cell.units), np.float32)
    d_states = [zeros] * cell.n_states
    d_carry = zeros  # reaches the previous output through a masked step
    dz = np.zeros((batch, steps, cell.recurrent_kernel.shape[1]), np.float32)
    h_prev = np.zeros((batch, steps, cell.units), np.float32)
    rows = step_rows(mask, batch, steps)
    for k in range(steps - 1, -1, -1):
        t = steps - 1 - k if go_backwards else k
        d_out = d_outputs[:, k] + d_carry
        n, whole = rows[t]
        held = zeros if zero_output_for_mask else d_out  # what a row that did not step passes back
        d_in = d_states
        if n == 0:  # no sequence stepped: everything passes through
            d_carry = held
            if record is not None:
                record.append((k, t, d_out, d_in, d_states, None))
            continue
        h_prev[:, k], cache = tape[k]
        part_out, part_states = d_out[:n], [d[:n] for d in d_states]
        if whole:
            carry = zeros[:n]
            dz[:n, k], d_new = cell.step_backward(cache, part_out, part_states)
        else:
            took = mask[:n, t, None].astype(np.float32)  # 1 where the step happened, 0 where it copied
            kept = 1 - took
            carry = zeros[:n] if zero_output_for_mask else part_out * kept
            dz[:n, k], d_new = cell.step_backward(cache, part_out * took, [d * took for d in part_states])
            d_new = [new + d * kept for new, d in zip(d_new, part_states)]
        if n < batch:
            d_new = [np.concatenate([a, d[n:]]) for a, d in zip(d_new, d_states)]
            carry = np.concatenate([carry, held[n:]])
        d_states, d_carry = d_new, carry
        if record is not None:
            record.append((k, t, d_out, d_in, d_states, dz[:, k].copy()))
    if hasattr(cell, "recurrent_weight_gradients"):  # a recurrent part other than h_prev @ U (GRU)
        d_recurrent_kernel = cell.recurrent_weight_gradients(tape, dz, h_prev)
    else:
        d_recurrent_kernel = h_prev.reshape(-1, cell.units).T @ dz.reshape(batch * steps, -1)
    return (dz[:, ::-1] if go_backwards else dz), d_recurrent_kernel


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class Recurrent(Layer):
    """Shared by SimpleRNN, LSTM and GRU: weights, the input projection, the scan, the output choice.

    Input shape: `(batch, timesteps, features)`; output `(batch, units)` or, with
    `return_sequences`, `(batch, timesteps, units)` (reversed time order if `go_backwards`).
    """

    config_keys = ("units", "activation", "recurrent_activation", "use_bias", "return_sequences",
                   "go_backwards", "zero_output_for_mask")
    defaults = {"activation": "tanh", "use_bias": True, "return_sequences": False, "go_backwards": False,
                "zero_output_for_mask": False}
    gates = 1

    def check_config(self, config):
        super().check_config(config)
        for flag in ("return_state", "stateful"):
            if config.get(flag):
                self.unsupported(f"{flag}=True is not supported")

    def weight_shapes(self):
        n = self.gates * self.config["units"]
        shapes = {"kernel": (None, n), "recurrent_kernel": (self.config["units"], n)}
        if self.config.get("use_bias", True):
            shapes["bias"] = (n,)
        return shapes

    def built(self):
        self.cell = self.make_cell()

    def make_cell(self):
        raise NotImplementedError

    def gradient_fn(self, key: str = "activation") -> activations.Gradient:
        try:
            return activations.gradient(self.config.get(key, "linear"))
        except ValueError as exc:
            self.unsupported(str(exc))

    def check_input(self, x: np.ndarray, mask: np.ndarray | None) -> None:
        n_in = self.weights["kernel"].shape[0]
        self.expect(x, 3, n_in, f"(batch, timesteps, {n_in})")
        if mask is not None and np.shape(mask) != x.shape[:2]:
            raise InputShapeError(self.name, type(self).__name__, f"a mask of shape {x.shape[:2]}",
                                  f"shape {np.shape(mask)}")

    def run(self, x: np.ndarray, mask: np.ndarray | None, tape: Tape | None = None):
        """Scan the sequence: (last_output, outputs in processing order, states); see `scan`. A
        masked batch runs longest rows first (`length_order`, kept in `tape.order`); the results
        come back in the batch's order."""
        self.check_input(x, mask)
        mask = None if mask is None else np.asarray(mask, bool)
        order = length_order(mask)
        if order is not None:
            x, mask = x[order], mask[order]
        if tape is not None:
            tape.order = order
        x_proj = self.cell.project_inputs(as_float32(x))
        last, outputs, states = scan(self.cell, x_proj, mask, bool(self.config.get("go_backwards", False)),
                                     bool(self.config.get("zero_output_for_mask", False)), tape)
        last, outputs, *states = restore_order(order, last, outputs, *states)
        return last, outputs, states

    def call(self, x, mask, training):
        self.check_input(x, mask)

        def part(lo: int, hi: int) -> np.ndarray:  # sequences lo … hi − 1
            last, outputs, _ = self.run(x[lo:hi], None if mask is None else np.asarray(mask)[lo:hi])
            return outputs if self.config.get("return_sequences", False) else last

        return np.concatenate(over_batch(part, x.shape[0]))

    def forward_with_cache(self, x, mask=None):
        """The output and the scan's tape (each step's cell cache) for `backward`."""
        if not self.weights or not hasattr(self.cell, "step_cached"):
            return self.forward(x, mask), None
        tape = Tape()
        last, outputs, _ = self.run(x, mask, tape)
        return (outputs if self.config.get("return_sequences", False) else last), tape

    def output_gradients(self, dy, x: np.ndarray) -> np.ndarray:
        """dL/d(outputs) `(batch, timesteps, units)` in processing order for the layer's output
        gradient `dy`: as given with `return_sequences`, else zeros but the last step."""
        dy = as_float32(dy)
        if self.config.get("return_sequences", False):
            return dy
        batch, steps = x.shape[:2]
        d_outputs = np.zeros((batch, steps, self.cell.units), np.float32)
        if steps:
            d_outputs[:, -1] = dy
        return d_outputs

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx `(batch, timesteps, features)` and {kernel, recurrent_kernel, bias} for dy
        `(batch, units)` or, with `return_sequences`, `(batch, timesteps, units)` (processing order)."""
        if not hasattr(self.cell, "step_backward"):
            return Layer.backward(self, dy, x, mask, y, cache)  # says which layers have one
        x = as_float32(x)
        tape = self.forward_with_cache(x, mask)[1] if cache is None else cache
        d_outputs = self.output_gradients(dy, x)
        kernel = self.weights["kernel"]
        mask = None if mask is None else np.asarray(mask, bool)
        order = getattr(tape, "order", None)  # the rows' order in the forward scan
        if order is not None:
            d_outputs, mask = d_outputs[order], mask[order]
        dz, recurrent = scan_backward(self.cell, tape, d_outputs, mask, bool(self.config.get("go_backwards", False)),
                                      bool(self.config.get("zero_output_for_mask", False)))
        dz, = restore_order(order, dz)
        # a GRU cell also gives its recurrent bias's gradient
        d_recurrent_kernel, d_recurrent_bias = recurrent if isinstance(recurrent, tuple) else (recurrent, None)
        dz_rows = dz.reshape(-1, kernel.shape[1])
        grads = {"kernel": x.reshape(-1, kernel.shape[0]).T @ dz_rows, "recurrent_kernel": d_recurrent_kernel}
        if "bias" in self.weights:
            d_bias = vector_ops.channel_sums(dz_rows)
            grads["bias"] = d_bias if d_recurrent_bias is None else np.stack([d_bias, d_recurrent_bias])
        return (dz_rows @ kernel.T).reshape(x.shape), grads

    def sweep_direction(self, direction: str | None) -> str:
        """The direction the events name: as given (a Bidirectional's halves), else "backward"
        for a layer that reads the sequence reversed (`go_backwards`), "forward" otherwise."""
        if direction is not None:
            return direction
        return "backward" if self.config.get("go_backwards", False) else "forward"

    def steps(self, x, mask=None, context=None, times=None, direction: str | None = None):
        """One `RNNStep`/`LSTMStep` per time step of sample `x` `(1, timesteps, features)`, in
        processing order; `times` keeps only those input-order indices."""
        from nntrace.tracer.events import GRUStep, LSTMStep, RNNStep

        direction = self.sweep_direction(direction)

        self.check_input(x, mask)
        x = as_float32(x)
        keep = None if times is None else set(times)
        x_proj = self.cell.project_inputs(x)
        for k, t, _, before, after in scan_steps(self.cell, x_proj, None if mask is None else np.asarray(mask, bool),
                                                 bool(self.config.get("go_backwards", False))):
            if keep is not None and t not in keep:
                continue
            masked = mask is not None and not bool(np.asarray(mask)[0, t])
            common = dict(direction=direction, step=k, time=t, masked=masked, h_prev=before[0][0], h=after[0][0],
                          activation=activations.activation_name(self.config.get("activation", "tanh")))
            if masked:  # the step did not happen: no fresh values, the states carry over
                parts = {}
            else:
                parts = {name: None if value is None else value[0]
                         for name, value in self.cell.explain(x[:, t], before).items()}
            if isinstance(self.cell, LSTMCell):
                yield LSTMStep(self.name, c_prev=before[1][0], c=after[1][0], **parts, **common,
                               recurrent_activation=activations.activation_name(
                                   self.config.get("recurrent_activation", "sigmoid")))
            elif isinstance(self.cell, GRUCell):
                yield GRUStep(self.name, reset_after=self.cell.reset_after, **parts, **common,
                              recurrent_activation=activations.activation_name(
                                  self.config.get("recurrent_activation", "sigmoid")))
            else:
                yield RNNStep(self.name, **parts, **common)

    def backward_steps(self, x, mask=None, dy=None, context=None, times=None, direction: str | None = None):
        """One `RecurrentGradient` per time step of sample `x` `(1, timesteps, features)` for ∂L/∂y
        `dy` (`(1, units)`, or `(1, timesteps, units)` in processing order with
        `return_sequences`), in the order backpropagation through time visits them (the last
        processed step first); `times` keeps only those input-order indices."""
        from nntrace.tracer.events import RecurrentGradient

        direction = self.sweep_direction(direction)
        if not hasattr(self.cell, "step_backward"):
            return
        x = as_float32(x)[:1]  # one sample: its tape runs in the batch's order
        mask = None if mask is None else np.asarray(mask)[:1]
        dy = None if dy is None else np.asarray(dy)[:1]
        tape = self.forward_with_cache(x, mask)[1]
        d_outputs = self.output_gradients(dy, x)
        record: list = []
        scan_backward(self.cell, tape, d_outputs, None if mask is None else np.asarray(mask, bool),
                      bool(self.config.get("go_backwards", False)),
                      bool(self.config.get("zero_output_for_mask", False)), record)
        kind = {LSTMCell: "lstm", SimpleRNNCell: "simple_rnn", GRUCell: "gru"}.get(type(self.cell), "rnn")
        u = self.cell.units
        for k, t, d_out, d_in, d_new, dz in record:
            if times is not None and t not in times:
                continue
            dh_next = d_in[0][0]
            common = dict(direction=direction, step=k, time=t, cell=kind, dh_out=d_out[0], dh_next=dh_next,
                          dh_prev=d_new[0][0])
            if dz is None:  # masked: the state gradients passed through unchanged
                extra = {"dc_next": d_in[1][0], "dc_prev": d_new[1][0]} if kind == "lstm" else {}
                yield RecurrentGradient(self.name, dh=dh_next, norm=float(np.linalg.norm(dh_next)), masked=True,
                                        **common, **extra)
                continue
            dh = d_out[0] + dh_next
            gates = dz.shape[-1] // u
            extra = {}
            cache = tape[k][1]
            if kind == "lstm":
                c_prev, i, f, g, o, c, c_act, slopes = cache
                dc = d_in[1] + self.cell.activation_grad((d_out + d_in[0]) * o, c, c_act)
                extra = dict(gates=np.stack([i[0], f[0], g[0], o[0]]), slopes=slopes[0].reshape(gates, u),
                             dc_next=d_in[1][0], dc=dc[0], c_prev=c_prev[0], c=c[0], c_act=c_act[0],
                             c_slope=activations.derivative(self.cell.activation_grad, c, c_act)[0],
                             dc_prev=d_new[1][0])
            elif kind == "simple_rnn":
                _, z, h = cache
                extra = dict(gates=h[0][None], slopes=activations.derivative(self.cell.activation_grad, z, h)[0][None])
            elif kind == "gru":
                h_prev, z, r, h_tilde, h_in, slopes = cache
                extra = dict(gates=np.stack([z[0], r[0], h_tilde[0]]), slopes=slopes[0].reshape(gates, u),
                             h_prev=h_prev[0], h_in=h_in[0] if self.cell.reset_after else None)
            yield RecurrentGradient(self.name, dh=dh, dz=dz[0].reshape(gates, u), norm=float(np.linalg.norm(dh)),
                                    **common, **extra)

    def compute_mask(self, x, mask):
        return mask if self.config.get("return_sequences", False) else None


class SimpleRNN(Recurrent):
    """Fully connected recurrence; weights kernel `(in, u)`, recurrent_kernel `(u, u)`, bias `(u,)`."""

    gates = 1

    def make_cell(self):
        return SimpleRNNCell(self.weights["kernel"], self.weights["recurrent_kernel"],
                             self.weights.get("bias"), self.activation_fn(), self.gradient_fn())


class LSTM(Recurrent):
    """Long short-term memory; weights kernel `(in, 4u)`, recurrent_kernel `(u, 4u)`, bias `(4u,)`."""

    gates = 4
    defaults = {**Recurrent.defaults, "recurrent_activation": "sigmoid"}

    def make_cell(self):
        return LSTMCell(self.weights["kernel"], self.weights["recurrent_kernel"], self.weights.get("bias"),
                        self.activation_fn(), self.activation_fn("recurrent_activation"),
                        self.gradient_fn(), self.gradient_fn("recurrent_activation"))


class GRU(Recurrent):
    """Gated recurrent unit; weights kernel `(in, 3u)`, recurrent_kernel `(u, 3u)`, bias `(2, 3u)`
    (row 0 the input bias, row 1 the recurrent bias) with `reset_after` (the default), else `(3u,)`.
    Gate order z, r, h. With `reset_after` the bias gradient is `(2, 3u)`: the input bias's row, then
    the recurrent bias's (each step's gradient of `h·U + rb`, whose candidate block is scaled by r)."""

    gates = 3
    config_keys = Recurrent.config_keys + ("reset_after",)
    defaults = {**Recurrent.defaults, "recurrent_activation": "sigmoid", "reset_after": True}

    def weight_shapes(self):
        shapes = super().weight_shapes()
        if "bias" in shapes and self.config.get("reset_after", True):
            shapes["bias"] = (2, 3 * self.config["units"])
        return shapes

    def make_cell(self):
        bias = self.weights.get("bias")
        reset_after = bool(self.config.get("reset_after", True))
        return GRUCell(self.weights["kernel"], self.weights["recurrent_kernel"],
                       bias[0] if bias is not None and reset_after else bias,
                       bias[1] if bias is not None and reset_after else None,
                       self.activation_fn(), self.activation_fn("recurrent_activation"), reset_after,
                       self.gradient_fn(), self.gradient_fn("recurrent_activation"))


RECURRENT_LAYERS: dict[str, type[Recurrent]] = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}


class Bidirectional(Layer):
    """A forward and a backward copy of a recurrent layer over the same sequence, merged.

    Keras's rules: both copies get `zero_output_for_mask = return_sequences`; with
    `return_sequences` the backward outputs are flipped back to input order before merging;
    `merge_mode` is concat (forward first), sum, mul, ave, or None (a pair).
    Weights: the forward layer's arrays, then the backward layer's, prefixed `forward_`/`backward_`.
    """

    config_keys = ("merge_mode",)
    defaults = {"merge_mode": "concat"}
    parallel_inside = True  # the two directions run at once (`together`)
    MERGE_MODES = ("concat", "sum", "mul", "ave", None)

    def __init__(self, name: str, layer: Recurrent | None = None, backward_layer: Recurrent | None = None,
                 **config) -> None:
        super().__init__(name, **config)
        self.forward_layer = layer
        self.backward_layer = backward_layer

    @classmethod
    def from_config(cls, config):
        def inner(spec: dict, go_backwards: bool | None) -> Recurrent:
            class_name = spec["class_name"]
            if class_name not in RECURRENT_LAYERS:
                from nntrace.layers import SUPPORTED_LAYERS
                from nntrace.layers.errors import UnsupportedLayerError
                raise UnsupportedLayerError(config.get("name", "bidirectional"), f"Bidirectional({class_name})",
                                            SUPPORTED_LAYERS,
                                            f"wraps {class_name}, only SimpleRNN, LSTM and GRU are supported")
            inner_cfg = dict(spec["config"])
            if go_backwards is not None:
                inner_cfg["go_backwards"] = go_backwards
            return RECURRENT_LAYERS[class_name].from_config(inner_cfg)

        fwd = inner(config["layer"], None)
        bwd_spec = config.get("backward_layer")
        bwd = inner(bwd_spec, None) if bwd_spec else inner(config["layer"], not fwd.config.get("go_backwards", False))
        for layer in (fwd, bwd):  # Keras forces this on both directions
            layer.config["zero_output_for_mask"] = bool(layer.config.get("return_sequences", False))
        layer = cls(config.get("name", "bidirectional"), fwd, bwd, merge_mode=config.get("merge_mode", "concat"))
        if layer.config["merge_mode"] not in cls.MERGE_MODES:
            layer.unsupported(f"merge_mode '{layer.config['merge_mode']}' is not supported {cls.MERGE_MODES}")
        if config.get("return_state"):
            layer.unsupported("return_state=True is not supported")
        return layer

    def get_config(self):
        return {"name": self.name, "merge_mode": self.config["merge_mode"],
                "layer": {"class_name": type(self.forward_layer).__name__, "config": self.forward_layer.get_config()},
                "backward_layer": {"class_name": type(self.backward_layer).__name__,
                                   "config": self.backward_layer.get_config()}}

    @property
    def return_sequences(self) -> bool:
        return bool(self.forward_layer.config.get("return_sequences", False))

    def weight_shapes(self):
        return {**{f"forward_{k}": v for k, v in self.forward_layer.weight_shapes().items()},
                **{f"backward_{k}": v for k, v in self.backward_layer.weight_shapes().items()}}

    def set_weights(self, arrays):
        n = len(self.forward_layer.weight_shapes())
        super().set_weights(arrays)  # checks the count and shapes of both halves
        self.forward_layer.set_weights(arrays[:n])
        self.backward_layer.set_weights(arrays[n:])

    def paired_cell(self):
        """One cell that steps both directions at once (their recurrent weights stacked on a leading
        axis of 2), when the two layers are of one kind with the same settings; else None."""
        fwd, bwd = self.forward_layer, self.backward_layer
        if type(fwd) is not type(bwd) or not fwd.weights or not bwd.weights:
            return None
        same = ("units", "activation", "recurrent_activation", "reset_after", "zero_output_for_mask")
        if any(fwd.config.get(k) != bwd.config.get(k) for k in same):
            return None
        a, b = fwd.cell, bwd.cell
        if isinstance(a, GRUCell) and (a.recurrent_bias is None) != (b.recurrent_bias is None):
            return None
        stacked = {"recurrent_kernel": np.stack([a.recurrent_kernel, b.recurrent_kernel])}
        if isinstance(a, GRUCell) and a.recurrent_bias is not None:
            stacked["recurrent_bias"] = np.stack([a.recurrent_bias, b.recurrent_bias])[:, None, :]
        return replace(a, **stacked)

    def both_at_once(self, cell, x: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """`directions` for the inference forward pass, both directions stepped together by `cell`
        (`paired_cell`): one matrix product and one activation call per step for the pair. The
        masking rule and the outputs are those of `scan` for each direction."""
        fwd, bwd = self.forward_layer, self.backward_layer
        fwd.check_input(x, mask)
        bwd.check_input(x, mask)
        x = as_float32(x)
        mask = None if mask is None else np.asarray(mask, bool)
        flips = [bool(layer.config.get("go_backwards", False)) for layer in (fwd, bwd)]
        order = length_order(mask)
        runs = None if order is None else contiguous_runs(mask)
        if runs is not None:
            return self.real_steps_at_once(cell, x, runs, flips, order)
        xp = np.empty((2,) + x.shape[:2] + (cell.recurrent_kernel.shape[-1],), np.float32)  # (2, batch, steps, gates·u)
        for d, (layer, flip) in enumerate(zip((fwd, bwd), flips)):
            layer.cell.project_inputs(x[:, ::-1] if flip else x, out=xp[d])
        m = None if mask is None else np.stack([mask[:, ::-1] if flip else mask for flip in flips])
        zero_out = bool(fwd.config.get("zero_output_for_mask", False))
        two, batch, steps = xp.shape[:3]
        u = cell.units
        states = [np.zeros((2, batch, u), np.float32) for _ in range(cell.n_states)]
        prev = np.zeros((2, batch, u), np.float32)
        outputs = np.zeros((2, batch, steps, u), np.float32)
        every = None if m is None else m.all(axis=(0, 1))
        for t in range(steps):  # processing step t of each direction
            out, new_states = cell.step(xp[:, :, t], states)
            if m is not None and not every[t]:
                keep = m[:, :, t, None]
                new_states = [np.where(keep, n, s_) for n, s_ in zip(new_states, states)]
                out = np.where(keep, out, np.float32(0.0) if zero_out else prev)
            outputs[:, :, t] = out
            states, prev = new_states, out
        if self.return_sequences:  # each layer's outputs in its processing order; the backward's flipped back
            return outputs[0], outputs[1][:, ::-1]
        last = outputs[:, :, -1] if steps else np.zeros((2, batch, u), np.float32)
        return last[0], last[1]

    def real_steps_at_once(self, cell, x: np.ndarray, runs: tuple[np.ndarray, np.ndarray], flips: list[bool],
                           order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`both_at_once` for a batch whose rows are real in one run of steps each (`runs`: start
        and stop per row; post- or pre-padding), of different lengths. Each direction steps only
        through a row's real steps, lined up from step 0 and longest rows first, so step j
        computes just the rows longer than j. A masked step before a row's run keeps the zero
        state and outputs zeros; one after it keeps the final state and outputs it again (zeros
        with `zero_output_for_mask`), as `scan` does. `order`: the rows, longest first (`length_order`)."""
        start, stop = runs
        x, start, stop = x[order], start[order], stop[order]
        batch, steps = x.shape[:2]
        counts = stop - start
        j = np.arange(steps)
        rows = np.arange(batch)[:, None]
        # the input time of a row's j-th real step in each direction's processing order
        times = [np.clip(stop[:, None] - 1 - j if flip else start[:, None] + j, 0, max(steps - 1, 0)) for flip in flips]
        xp = np.empty((2, batch, steps, cell.recurrent_kernel.shape[-1]), np.float32)
        for d, (layer, at) in enumerate(zip((self.forward_layer, self.backward_layer), times)):
            layer.cell.project_inputs(x[rows, at], out=xp[d])
        states = [np.zeros((2, batch, cell.units), np.float32) for _ in range(cell.n_states)]
        real = None
        if self.return_sequences:
            real = np.zeros((2, batch, steps, cell.units), np.float32)  # output of each row's j-th real step
        for k, n in enumerate((counts[None, :] > j[:, None]).sum(axis=1)):
            if n == 0:
                break
            out, new_states = cell.step(xp[:, :n, k], [s_[:, :n] for s_ in states])
            for s_, new in zip(states, new_states):
                s_[:, :n] = new
            if real is not None:
                real[:, :n, k] = out
        final = states[0]  # each row's output after its last real step (zeros for a row with none)
        zero_out = bool(self.forward_layer.config.get("zero_output_for_mask", False))
        # where each direction's j-th real step falls in its processing order
        offsets = [steps - stop if flip else start for flip in flips]
        if not self.return_sequences:
            last = [np.where(((offset + counts < steps) & zero_out)[:, None], np.float32(0.0), final[d])
                    for d, offset in enumerate(offsets)]
            return tuple(restore_order(order, *last))
        outputs = []
        for d, offset in enumerate(offsets):
            at = j[None, :] - offset[:, None]  # (batch, steps): real-step index at each processing step
            y = real[d][rows, np.clip(at, 0, max(steps - 1, 0))]
            y[at < 0] = 0.0
            after = at >= counts[:, None]
            y[after] = 0.0 if zero_out else np.broadcast_to(final[d][:, None, :], y.shape)[after]
            outputs.append(y)
        return tuple(restore_order(order, outputs[0], outputs[1][:, ::-1]))

    def directions(self, x: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Both directions' outputs before merging, backward already in input time order."""
        y = self.forward_layer.forward(x, mask)
        y_rev = self.backward_layer.forward(x, mask)
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        return y, y_rev

    def merge(self, y: np.ndarray, y_rev: np.ndarray):
        mode = self.config["merge_mode"]
        if mode == "concat":
            return np.concatenate([y, y_rev], axis=-1)
        if mode == "sum":
            return y + y_rev
        if mode == "ave":
            return (y + y_rev) / np.float32(2)
        if mode == "mul":
            return y * y_rev
        return y, y_rev

    def call(self, x, mask, training):
        paired = self.paired_cell()

        def part(lo: int, hi: int):  # sequences lo … hi − 1, both directions
            m = None if mask is None else np.asarray(mask)[lo:hi]
            return self.merge(*(self.both_at_once(paired, x[lo:hi], m) if paired is not None
                                else self.directions(x[lo:hi], m)))

        parts = over_batch(part, np.shape(x)[0])
        if isinstance(parts[0], tuple):  # merge_mode None: a pair
            return tuple(np.concatenate(side) for side in zip(*parts))
        return np.concatenate(parts)

    def forward_with_cache(self, x, mask=None):
        """The merged output, and for `backward` both directions' outputs (backward in input time
        order) and tapes."""
        (y, tape), (y_rev, tape_rev) = together(lambda: self.forward_layer.forward_with_cache(x, mask),
                                                lambda: self.backward_layer.forward_with_cache(x, mask))
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        return self.merge(y, y_rev), (y, y_rev, tape, tape_rev)

    def split_gradient(self, dy, y: np.ndarray, y_rev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dL/d(merged output) → the two directions' output gradients (input time order)."""
        mode = self.config["merge_mode"]
        if mode is None:
            return as_float32(dy[0]), as_float32(dy[1])
        dy = as_float32(dy)
        if mode == "concat":
            return dy[..., :y.shape[-1]], dy[..., y.shape[-1]:]
        if mode == "sum":
            return dy, dy
        if mode == "ave":
            return dy / np.float32(2), dy / np.float32(2)
        return dy * y_rev, dy * y  # mul

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx, the sum of both directions' input gradients, and their weight gradients
        (`forward_*`, `backward_*`) for dy shaped like the merged output (a pair with
        `merge_mode=None`)."""
        y_fwd, y_rev, tape, tape_rev = self.forward_with_cache(x, mask)[1] if cache is None else cache
        d_fwd, d_rev = self.split_gradient(dy, y_fwd, y_rev)
        if self.return_sequences:
            d_rev = d_rev[:, ::-1]  # back to the backward layer's processing order
        (dx, grads), (dx_rev, grads_rev) = together(
            lambda: self.forward_layer.backward(d_fwd, x, mask, cache=tape),
            lambda: self.backward_layer.backward(d_rev, x, mask, cache=tape_rev))
        return dx + dx_rev, {**{f"forward_{k}": v for k, v in grads.items()},
                             **{f"backward_{k}": v for k, v in grads_rev.items()}}

    def steps(self, x, mask=None, context=None, times=None):
        """The forward sweep's steps, the backward sweep's steps, then one `BidirectionalMerge`."""
        from nntrace.tracer.events import BidirectionalMerge

        for step in self.forward_layer.steps(x, mask, times=times, direction="forward"):
            yield replace(step, layer=self.name)
        for step in self.backward_layer.steps(x, mask, times=times, direction="backward"):
            yield replace(step, layer=self.name)
        y, y_rev = self.directions(x, mask)
        merged = self.merge(y, y_rev)
        yield BidirectionalMerge(self.name, merge_mode=str(self.config["merge_mode"]), forward=y[0], backward=y_rev[0],
                                 merged=None if isinstance(merged, tuple) else merged[0])

    def backward_steps(self, x, mask=None, dy=None, context=None, times=None):
        """Both sweeps' `RecurrentGradient` steps for ∂L/∂y `dy` shaped like the merged output:
        the forward sweep's (its last step first), then the backward sweep's."""
        y_fwd, y_rev = self.directions(as_float32(x), mask)
        d_fwd, d_rev = self.split_gradient(dy, y_fwd, y_rev)
        if self.return_sequences:
            d_rev = d_rev[:, ::-1]  # the backward layer's processing order
        for layer, d, direction in ((self.forward_layer, d_fwd, "forward"), (self.backward_layer, d_rev, "backward")):
            for step in layer.backward_steps(x, mask, d, context, times=times, direction=direction):
                yield replace(step, layer=self.name)

    def compute_mask(self, x, mask):
        return mask if self.return_sequences else None
