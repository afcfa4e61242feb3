"""Recurrent layers: cells (one time step), one scan that owns masking and direction, the layers.

Shapes: inputs `(batch, timesteps, features)`, mask `(batch, timesteps)` of bools,
states `(batch, units)`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np

from nntrace.layers import activations
from nntrace.layers.base import Layer, as_float32
from nntrace.layers.errors import InputShapeError


# ---------------------------------------------------------------------------------------------
# Cells: one time step each. `x_proj` is the input projection `x_t @ kernel + bias`, computed for
# every step at once by the layer (one matrix product) before the scan.
# ---------------------------------------------------------------------------------------------
@dataclass
class SimpleRNNCell:
    """`h_t = activation(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel)`."""

    kernel: np.ndarray            # (features, units)
    recurrent_kernel: np.ndarray  # (units, units)
    bias: np.ndarray | None       # (units,)
    activation: Callable[[np.ndarray], np.ndarray]

    n_states = 1

    @property
    def units(self) -> int:
        return self.recurrent_kernel.shape[0]

    def project_inputs(self, x: np.ndarray) -> np.ndarray:
        """`(batch, timesteps, features)` → `x @ kernel + bias`, `(batch, timesteps, units)`."""
        z = x @ self.kernel
        if self.bias is not None:
            z += self.bias
        return z

    def step(self, x_proj: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step: returns (output h_t, [h_t])."""
        h = self.activation(x_proj + states[0] @ self.recurrent_kernel)
        return h, [h]

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

    n_states = 2

    @property
    def units(self) -> int:
        return self.recurrent_kernel.shape[0]

    project_inputs = SimpleRNNCell.project_inputs

    def gates(self, x_proj: np.ndarray, h_prev: np.ndarray) -> tuple[np.ndarray, ...]:
        """The four activated gates (i, f, g, o), each `(batch, units)`."""
        z = x_proj + h_prev @ self.recurrent_kernel
        u = self.units
        gated = self.recurrent_activation(z)  # one call for all four blocks; the g block is replaced
        return gated[:, :u], gated[:, u:2 * u], self.activation(z[:, 2 * u:3 * u]), gated[:, 3 * u:]

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
        c = f * c_prev + i * g
        h = o * self.activation(c)
        return h, [h, c]


# ---------------------------------------------------------------------------------------------
# The scan: the one place that knows about masks and direction (Keras's backend.rnn).
# ---------------------------------------------------------------------------------------------
def scan_steps(cell, x_proj: np.ndarray, mask: np.ndarray | None = None, go_backwards: bool = False,
               zero_output_for_mask: bool = False) -> Iterator[tuple[int, int, np.ndarray, list, list]]:
    """The scan, one step at a time: yields `(k, t, output, states_before, states_after)`.

    `k` counts processing steps, `t` is the index in the input sequence. At a masked step every
    state keeps its previous value and the output is the previous output (or zeros with
    `zero_output_for_mask`), as in Keras's backend.rnn.
    """
    batch, steps = x_proj.shape[:2]
    states = [np.zeros((batch, cell.units), np.float32) for _ in range(cell.n_states)]
    prev_out = np.zeros((batch, cell.units), np.float32)
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    for k, t in enumerate(order):
        out, new_states = cell.step(x_proj[:, t], states)
        if mask is not None:
            m = mask[:, t, None]
            new_states = [np.where(m, n, s) for n, s in zip(new_states, states)]
            out = np.where(m, out, np.float32(0.0) if zero_output_for_mask else prev_out)
        yield k, t, out, states, new_states
        states, prev_out = new_states, out


def scan(cell, x_proj: np.ndarray, mask: np.ndarray | None = None, go_backwards: bool = False,
         zero_output_for_mask: bool = False) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Run `cell` over time.

    Args:
        x_proj: projected inputs `(batch, timesteps, gates*units)`.
        mask: `(batch, timesteps)` bools; see `scan_steps` for the masking rule.
        go_backwards: process time reversed; outputs stay in processing order (as Keras).
    Returns:
        (last_output `(batch, units)`, outputs `(batch, timesteps, units)`, final states).
    """
    batch, steps = x_proj.shape[:2]
    outputs = np.zeros((batch, steps, cell.units), np.float32)
    states = [np.zeros((batch, cell.units), np.float32) for _ in range(cell.n_states)]
    for k, _, out, _, states in scan_steps(cell, x_proj, mask, go_backwards, zero_output_for_mask):
        outputs[:, k] = out
    last = outputs[:, -1] if steps else np.zeros((batch, cell.units), np.float32)
    return last, outputs, states


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class Recurrent(Layer):
    """Shared by SimpleRNN and LSTM: weights, the input projection, the scan, the output choice.

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

    def check_input(self, x: np.ndarray, mask: np.ndarray | None) -> None:
        n_in = self.weights["kernel"].shape[0]
        self.expect(x, 3, n_in, f"(batch, timesteps, {n_in})")
        if mask is not None and np.shape(mask) != x.shape[:2]:
            raise InputShapeError(self.name, type(self).__name__, f"a mask of shape {x.shape[:2]}",
                                  f"shape {np.shape(mask)}")

    def run(self, x: np.ndarray, mask: np.ndarray | None):
        """Scan the sequence: (last_output, outputs in processing order, states)."""
        self.check_input(x, mask)
        x_proj = self.cell.project_inputs(as_float32(x))
        return scan(self.cell, x_proj, None if mask is None else np.asarray(mask, bool),
                    bool(self.config.get("go_backwards", False)),
                    bool(self.config.get("zero_output_for_mask", False)))

    def call(self, x, mask, training):
        last, outputs, _ = self.run(x, mask)
        return outputs if self.config.get("return_sequences", False) else last

    def steps(self, x, mask=None, context=None, times=None, direction: str = "forward"):
        """One `RNNStep`/`LSTMStep` per time step of sample `x` `(1, timesteps, features)`, in
        processing order; `times` keeps only those input-order indices."""
        from nntrace.tracer.events import LSTMStep, RNNStep

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
                parts = {name: value[0] for name, value in self.cell.explain(x[:, t], before).items()}
            if isinstance(self.cell, LSTMCell):
                yield LSTMStep(self.name, c_prev=before[1][0], c=after[1][0], **parts, **common,
                               recurrent_activation=activations.activation_name(
                                   self.config.get("recurrent_activation", "sigmoid")))
            else:
                yield RNNStep(self.name, **parts, **common)

    def compute_mask(self, x, mask):
        return mask if self.config.get("return_sequences", False) else None


class SimpleRNN(Recurrent):
    """Fully connected recurrence; weights kernel `(in, u)`, recurrent_kernel `(u, u)`, bias `(u,)`."""

    gates = 1

    def make_cell(self):
        return SimpleRNNCell(self.weights["kernel"], self.weights["recurrent_kernel"],
                             self.weights.get("bias"), self.activation_fn())


class LSTM(Recurrent):
    """Long short-term memory; weights kernel `(in, 4u)`, recurrent_kernel `(u, 4u)`, bias `(4u,)`."""

    gates = 4
    defaults = {**Recurrent.defaults, "recurrent_activation": "sigmoid"}

    def make_cell(self):
        return LSTMCell(self.weights["kernel"], self.weights["recurrent_kernel"], self.weights.get("bias"),
                        self.activation_fn(), self.activation_fn("recurrent_activation"))


RECURRENT_LAYERS: dict[str, type[Recurrent]] = {"SimpleRNN": SimpleRNN, "LSTM": LSTM}


class Bidirectional(Layer):
    """A forward and a backward copy of a recurrent layer over the same sequence, merged.

    Keras's rules: both copies get `zero_output_for_mask = return_sequences`; with
    `return_sequences` the backward outputs are flipped back to input order before merging;
    `merge_mode` is concat (forward first), sum, mul, ave, or None (a pair).
    Weights: the forward layer's arrays, then the backward layer's, prefixed `forward_`/`backward_`.
    """

    config_keys = ("merge_mode",)
    defaults = {"merge_mode": "concat"}
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
                                            SUPPORTED_LAYERS, f"wraps {class_name}, only SimpleRNN and LSTM are supported")
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
        return self.merge(*self.directions(x, mask))

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

    def compute_mask(self, x, mask):
        return mask if self.return_sequences else None
