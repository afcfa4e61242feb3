"""The trace file format: JSON lines (`run.nntrace`) plus an `.npz` of arrays beside it (no pickle).

See docs/trace-format.md. Line 1 is a header; every other line is one event whose array fields are
`{"$array": "a<N>"}` references into `<file>.npz`. `save_trace` writes both files or neither.
`load_trace` checks every line against `RULES` (types, dtypes, shapes, ranges, and each step
against its layer's output) and raises `TraceFormatError` naming the file, the line, what is wrong
and what was expected; a trace it returns can be replayed and shown.
"""
from __future__ import annotations

import json
import math
import os
import reprlib
import secrets
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import numpy as np

from nntrace.layers.errors import NNTraceError
from nntrace.tracer.events import EVENT_TYPES, READABLE_SCHEMAS, SCHEMA_VERSION, Event, event_fields
from nntrace.tracer.sanitize import check_layer_name, clean_text, first_unsafe
from nntrace.tracer.trace import Trace

FORMAT = "nntrace-trace"
FORMAT_VERSION = 1


class TraceFormatError(NNTraceError, ValueError):
    """A trace file that cannot be read: wrong format, unknown version, missing arrays."""


class TraceNotFoundError(TraceFormatError, FileNotFoundError):
    """No trace file at the path given."""


class TraceExistsError(NNTraceError, FileExistsError):
    """Saving would replace an existing file and `overwrite` was not given."""


class TraceWriteError(NNTraceError, OSError):
    """A trace that could not be written; neither file (nor a temporary one) is left behind."""


def arrays_path(path: Path) -> Path:
    return path.with_name(path.name + ".npz")


# -- writing --------------------------------------------------------------------------------------
def save_trace(trace: Trace, path: str | Path, layers: Iterable[str] | None = None, everything: bool = False,
               overwrite: bool = False, backward: Trace | None = None) -> Path:
    """Write every layer-level event and the fine-grained steps of `layers` (default: the first conv
    or recurrent layer; `everything`: all layers) to `path` and `path.npz`: both, or neither. With
    `backward` (the same input's backward trace) the file gets a backward section: its layer-level
    events, the loss, the saliency and the backward steps of the chosen layers that have them."""
    path = Path(path)
    npz = arrays_path(path)
    for target in (path, npz):
        if not overwrite and (target.exists() or target.is_symlink()):
            raise TraceExistsError(f"'{target}' exists; choose another name or pass overwrite")
    layers = list(layers) if layers else None
    if trace.backward:
        raise ValueError("save_trace takes the forward trace; pass the backward trace as backward=")
    fine = chosen_layers(trace, layers, everything)
    check_names_to_save(trace, path)
    fine_back = chosen_backward_layers(trace, backward, layers, everything, path) if backward is not None else []
    encoder = Encoder()

    def write_lines(f: TextIO) -> None:
        header = {"format": FORMAT, "version": FORMAT_VERSION, "schema": SCHEMA_VERSION,
                  "model": trace.model_name, "layers": [{"name": n, "class": c} for n, c in trace.layers],
                  "fine_layers": fine, "context": {k: encoder.encode(v, k) for k, v in trace.context.items()}}
        if backward is not None:
            header["backward"] = {"layers": [{"name": n, "class": c} for n, c in backward.layers],
                                  "fine_layers": fine_back}
        f.write(json.dumps(header) + "\n")
        for event in trace.events:
            f.write(encoder.line(event) + "\n")
        for name in fine:
            for event in trace.steps(name):
                f.write(encoder.line(event) + "\n")
        if backward is not None:
            for event in backward_events(backward, fine_back):
                f.write(encoder.line(event, backward=True) + "\n")

    write_pair(path, npz, write_lines, encoder.arrays)
    return path


def chosen_backward_layers(trace: Trace, backward: Trace, layers: list[str] | None, everything: bool,
                           path: Path) -> list[str]:
    """The model layers whose backward steps go into the file: of those chosen for the forward pass
    (`layers`, `everything`, or the backward trace's first conv or recurrent layer), the ones that
    have backward steps; checks that the backward trace fits the forward one."""
    if not backward.backward:
        raise ValueError("backward= takes a backward trace (trace_backward)")
    check_names_to_save(backward, path)
    names, forward = [n for n, _ in backward.layers], dict(trace.layers)
    problem = backward_layers_problem(backward.layers, forward)
    if problem:
        raise TraceFormatError(f"cannot save '{path}': the backward trace's {problem}")
    model_layers = [n for n in names if n not in (LOSS, INPUT)]
    if everything:
        wanted = model_layers
    elif layers:
        wanted = [n for n in model_layers if n in layers]
    else:
        wanted = [n for n in [backward.default_fine_layer()] if n]
    return [n for n in wanted if backward.has_steps(n)]


def backward_events(backward: Trace, fine: list[str]) -> Iterator[Event]:
    """The backward section's events: the loss and each layer's gradient, the chosen layers'
    backward steps, then the input's saliency."""
    yield from backward.events
    for name in fine:
        yield from backward.steps(name)
    if INPUT in dict(backward.layers):
        yield from backward.recorded_steps.get(INPUT, [])


def chosen_layers(trace: Trace, layers: Iterable[str] | None, everything: bool) -> list[str]:
    """The layers whose fine-grained steps go into the file."""
    if everything:
        return [name for name, _ in trace.layers]
    fine = list(layers) if layers else [n for n in [trace.default_fine_layer()] if n]
    for name in fine:
        if name not in dict(trace.layers):
            raise KeyError(f"no layer named '{name}'; layers: {', '.join(n for n, _ in trace.layers)}")
    return fine


def check_names_to_save(trace: Trace, path: Path) -> None:
    """Refuse layer names and classes that `load_trace` would refuse."""
    for k, (name, cls) in enumerate(trace.layers):
        for what, value in (("name", name), ("class", cls)):
            if not check_layer_name(value):
                reason = first_unsafe(value) if isinstance(value, str) else f"it is a {type(value).__name__}"
                raise TraceFormatError(f"cannot save '{path}': layer {k}'s {what} is not a safe name ({reason}); "
                                       "expected 1–128 letters, digits, _ - . / :")


class Encoder:
    """Event fields as JSON values; arrays are collected under keys a0, a1, … for the `.npz`."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def encode(self, value: Any, what: str) -> Any:
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "fiub":
                raise TraceFormatError(f"cannot save {what}: an array of dtype {value.dtype} "
                                       "(expected numbers or bools)")
            key = f"a{len(self.arrays)}"
            self.arrays[key] = value
            return {"$array": key}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (tuple, list)):
            return [self.encode(v, what) for v in value]
        return value

    def line(self, event: Event, backward: bool = False) -> str:
        """The event as one JSON line; an event of the backward section carries "pass": "backward"."""
        return json.dumps({"kind": event.kind, **({"pass": "backward"} if backward else {}),
                           **{k: self.encode(v, f"{event.label} field '{k}'") for k, v in event_fields(event).items()}})


def temporary_beside(target: Path, mode: str):
    """A new hidden file next to `target`, opened with `mode` ('x' or 'xb'): (path, file)."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    return tmp, (tmp.open(mode, encoding="utf-8") if "b" not in mode else tmp.open(mode))


def write_pair(path: Path, npz: Path, write_lines: Callable[[TextIO], None], arrays: dict[str, np.ndarray]) -> None:
    """Write the lines and then the arrays to temporary files beside their targets and rename both
    into place; on any failure remove what was written and raise `TraceWriteError` (for OS errors)."""
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_lines, f = temporary_beside(path, "x")
        temps.append(tmp_lines)
        with f:
            write_lines(f)
        tmp_arrays, f = temporary_beside(npz, "xb")
        temps.append(tmp_arrays)
        with f:
            np.savez(f, **arrays)
        for tmp, target in ((tmp_arrays, npz), (tmp_lines, path)):
            os.replace(tmp, target)
            temps.remove(tmp)
            placed.append(target)
    except BaseException as exc:
        for leftover in temps + placed:
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise TraceWriteError(f"could not write the trace '{path}': {exc.strerror or exc}") from exc
        raise


# -- what a valid file holds ----------------------------------------------------------------------
@dataclass(frozen=True)
class Arr:
    """An array field: its dtype class (a `DTYPES` key) and its dimensions, e.g. "kh kw cin". Named
    sizes are shared by the fields of one event and are ≥ 1; digits are fixed sizes; "*" is any
    shape with at least one element."""

    dtype: str
    dims: str


@dataclass(frozen=True)
class Arrs:
    """A tuple field of arrays: a list of array references of one dtype class, each with at least
    one value; null items too when `holes` (an input without a mask)."""

    dtype: str
    holes: bool = False


NAME = "name"      # a string that passes check_layer_name (layer classes, activations)
TEXT = "text"      # free text: cleaned of control characters on load
SHAPE = "shape"    # a list of 1–8 sizes ≥ 0 (a batch shape, an input shape)
PAIR = "pair"      # [row, col], possibly negative (a patch's origin inside the padding)
CELL = "cell"      # [i, j] ≥ 0 (a cell of a pooling window)
INDICES = "indices"  # a list of 0–8 integers ≥ 0 (a position on a grid of any rank)
SIZES = "sizes"    # [] or [rows, cols] ≥ 0 (a conv or pooling layer's geometry; [] when not recorded)
TRIPLE = "triple"  # [i, j, ch] ≥ 0 (a conv kernel weight's place)
NORMS = "norms"    # {weight name: finite number ≥ 0} (a layer's weight gradient norms)
MAX_INDEX = 2**31 - 1
#: NumPy dtype kinds of each dtype class; numbers must be finite ("window": NaN only on padding).
DTYPES = {"number": "fiu", "bool": "b", "index": "iu", "window": "f", "value": "fiub"}
DIRECTIONS = frozenset({"forward", "backward"})
MERGE_MODES = frozenset({"concat", "sum", "mul", "ave", "None"})
STAGES = frozenset({"", "depthwise", "pointwise"})
MERGE_LAYERS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
                "Maximum": "maximum", "Minimum": "minimum", "Concatenate": "concatenate", "Dot": "dot"}


def vectors(*names: str, dims: str = "u") -> dict[str, Arr]:
    return {n: Arr("number", dims) for n in names}


#: A conv or pooling step's geometry: input rows and cols, strides, total padding, output rows and cols.
GEOMETRY = ("input_size", "strides", "pad", "output_size")
#: What a conv step adds to it: the dilation, the group of input channels read, the separable stage.
CONV_EXTRAS = ("dilation", "group", "stage")


#: THE table of event fields beyond their Python types (which come from the dataclasses in
#: events.py): every array field's dtype and shape, every string's choices, every tuple's form.
#: Integers are indices (0 ≤ i < 2**31), floats are finite, booleans are JSON true/false.
RULES: dict[str, dict[str, Any]] = {
    "layer_start": {"layer_class": NAME, "input_shape": SHAPE},
    "layer_end": {"layer_class": NAME, "output_shape": SHAPE, "output": Arr("value", "*"), "mask": Arr("bool", "t")},
    "conv_patch": {**vectors("patch", "kernel", "products", dims="kh kw cin"), "channel_totals": Arr("number", "cin"),
                   "padding": Arr("bool", "kh kw"), "activation": NAME, "origin": PAIR,
                   **dict.fromkeys(GEOMETRY, SIZES), "dilation": SIZES, "stage": STAGES},
    "pool_window": {"mode": frozenset({"max", "average"}), "window": Arr("window", "ph pw"),
                    "real": Arr("bool", "ph pw"), "winner": CELL, "origin": PAIR, **dict.fromkeys(GEOMETRY, SIZES)},
    "flatten_map": {"input_shape": SHAPE, "sources": Arr("index", "n d")},
    "dense_neuron": {"inputs": Arr("index", "k"), "contributions": Arr("number", "k"), "activation": NAME},
    "softmax": vectors("logits", "exps", "probabilities", dims="n"),
    "embedding_lookup": {"token": TEXT, "vector": Arr("number", "d")},
    "rnn_step": {"direction": DIRECTIONS, **vectors("x_part", "h_part", "bias", "pre_activation", "h_prev", "h"),
                 "activation": NAME},
    "gru_step": {"direction": DIRECTIONS, **vectors("z", "r", "h_tilde", "h_prev", "h"),
                 **vectors("x_part", "h_part", "bias", "recurrent_bias", "pre_activation", dims="3 u"),
                 "activation": NAME, "recurrent_activation": NAME},
    "lstm_step": {"direction": DIRECTIONS, **vectors("i", "f", "g", "o", "c_prev", "c", "h_prev", "h"),
                  **vectors("x_part", "h_part", "bias", "pre_activation", dims="4 u"),
                  "activation": NAME, "recurrent_activation": NAME},
    "bidirectional_merge": {"merge_mode": MERGE_MODES, **vectors("forward", "backward", "merged", dims="*")},
    "dropout": {},
    "attention": {"q": Arr("number", "kd"), "keys": Arr("number", "s kd"), "mask": Arr("bool", "s"),
                  **vectors("scores", "scaled", "logits", "weights", "exps", dims="s"), "values": Arr("number", "s vd"),
                  "output": Arr("number", "vd"), "score_mode": frozenset({"dot", "concat"})},
    "normalize": {"position": INDICES, **vectors("values", "normalized", "output", "gamma", "beta", dims="*")},
    "merge": {"mode": frozenset(MERGE_LAYERS.values()), "operands": Arrs("number"), "result": Arr("number", "*"),
              "masks": Arrs("bool", holes=True), "axes": SIZES},
    "activation": {"function": frozenset({"relu", "leaky_relu", "elu", "prelu"}), **vectors("x", "y", dims="*"),
                   "alpha": Arr("number", "*")},
    "masking": {"x": Arr("number", "t f"), "keep": Arr("bool", "t"), "y": Arr("number", "t f")},
    # the backward section (schema 3); a size named with "?" may be 0 (an input cell no patch reads)
    "loss_gradient": vectors("logits", "probabilities", "onehot", "gradient", dims="n"),
    "layer_gradient": {"layer_class": NAME, **vectors("output_gradient", "input_gradient", dims="*"),
                       "weight_norms": NORMS},
    "dense_gradient": {"inputs": Arr("index", "k"), **vectors("x", "weight_gradients", dims="k"), "activation": NAME},
    "conv_kernel_gradient": {"tap": TRIPLE, **vectors("inputs", "deltas", "products", "running", dims="oh ow")},
    "conv_input_gradient": {"cells": Arr("index", "n? 2"), "taps": Arr("index", "n? 2"),
                            **vectors("weights", "deltas", dims="n? f"), "cell_sums": Arr("number", "n?")},
    "pool_routing": {"mode": frozenset({"max", "average"}), "window": Arr("window", "ph pw"),
                     "real": Arr("bool", "ph pw"), "winner": CELL, "routed": Arr("number", "ph pw"), "origin": PAIR},
    "recurrent_gradient": {"direction": DIRECTIONS, "cell": frozenset({"simple_rnn", "lstm", "gru", "rnn"}),
                           **vectors("dh_out", "dh_next", "dh", "dh_prev", "dc_next", "dc", "c_prev", "c", "c_slope",
                                     "c_act", "dc_prev", "h_prev", "h_in"),
                           **vectors("dz", "slopes", "gates", dims="g u")},
    "saliency": {"gradient": Arr("number", "h w c"), "saliency": Arr("number", "h w")},
}
#: The rule of a field the table does not name, by its type.
UNNAMED = {np.ndarray: Arr("value", "*"), str: NAME, tuple: SHAPE}
#: Where the file's null rules differ from the dataclass annotations.
MAY_BE_NULL = {("bidirectional_merge", "merged")}   # null exactly when merge_mode is "None"
NEVER_NULL = {("layer_end", "output")}               # the app reads every layer's output
#: Fields that schema 2 added; a schema 1 file may lack them (they are filled in on load).
ADDED_IN_SCHEMA_2 = {"conv_patch": {"channel_totals", "activation"}, "dense_neuron": {"rest", "n_inputs"},
                     "rnn_step": {"activation"},
                     "lstm_step": {"x_part", "h_part", "bias", "pre_activation", "activation", "recurrent_activation"}}
#: Fields a file may leave out (the event's defaults apply).
OPTIONAL = {"conv_patch": set(GEOMETRY + CONV_EXTRAS), "pool_window": set(GEOMETRY),
            "attention": {"exps", "total"},  # schema 3 added the softmax's exps and their sum
            "recurrent_gradient": {"h_prev", "h_in"}}  # a GRU step's (absent from other cells')
#: A recurrent step's fresh values: null exactly when the step is masked (schema 2).
FRESH = {"rnn_step": ("x_part", "h_part", "bias", "pre_activation"),
         "lstm_step": ("i", "f", "g", "o", "x_part", "h_part", "bias", "pre_activation"),
         "gru_step": ("z", "r", "h_tilde", "x_part", "h_part", "bias", "pre_activation")}
#: The fresh values a schema 1 step that was not masked holds (its masked steps' values are dropped).
FRESH_IN_SCHEMA_1 = {"rnn_step": FRESH["rnn_step"], "lstm_step": ("i", "f", "g", "o")}
#: The step kinds each known layer class produces (a class not named here may have any one group).
CLASS_KINDS = {**{cls: {"conv_patch"} for cls in ("Conv2D", "Conv1D", "DepthwiseConv2D", "SeparableConv2D")},
               "MaxPooling2D": {"pool_window"}, "AveragePooling2D": {"pool_window"},
               "Flatten": {"flatten_map"}, "Dense": {"dense_neuron", "softmax"}, "Softmax": {"softmax"},
               "Embedding": {"embedding_lookup"}, "SimpleRNN": {"rnn_step"}, "LSTM": {"lstm_step"},
               "GRU": {"gru_step"}, "Bidirectional": {"rnn_step", "lstm_step", "gru_step", "bidirectional_merge"},
               "Dropout": {"dropout"},
               **{cls: {"merge"} for cls in MERGE_LAYERS}, "LayerNormalization": {"normalize"},
               **{cls: {"attention"} for cls in ("Attention", "MultiHeadAttention")},
               **{cls: {"activation"} for cls in ("ReLU", "LeakyReLU", "ELU", "PReLU")}, "Masking": {"masking"},
               **{cls: set() for cls in ("Rescaling", "Reshape", "Activation", "BatchNormalization", "InputLayer",
                                         "Identity", "TextVectorization", "GlobalMaxPooling2D",
                                         "GlobalAveragePooling2D")}}
#: The kinds one layer's steps may mix (a layer's steps are one of these groups or a part of one).
KIND_GROUPS = ({"conv_patch"}, {"pool_window"}, {"flatten_map"}, {"dense_neuron", "softmax"}, {"embedding_lookup"},
               {"rnn_step", "bidirectional_merge"}, {"lstm_step", "bidirectional_merge"},
               {"gru_step", "bidirectional_merge"}, {"dropout"}, {"merge"}, {"normalize"},
               {"attention"}, {"activation"}, {"masking"})
#: Kinds of which a layer has at most one step.
ONCE = {"flatten_map", "softmax", "bidirectional_merge", "dropout", "merge", "activation", "masking"}
#: Header and context keys, and what each context value holds (every one may be null).
HEADER_KEYS = {"format", "version", "schema", "model", "layers", "fine_layers", "context", "backward"}
CONTEXT = {"labels": "texts", "text": "text", "tokens": "texts", "oov_id": "index", "vocabulary_size": "index",
           "true_label": "index", "model_input": "input"}
TEXT_LIMIT = {"text": 1000, "model_input": 1000}
#: How schema 1 steps name an activation they did not record.
UNRECORDED = {"activation": "activation", "recurrent_activation": "recurrent_activation"}
LAYER_KINDS = ("layer_start", "layer_end")
#: The backward section (schema 3): its kinds, its layer-level kinds, and its first and last layers.
BACKWARD_KINDS = frozenset({"loss_gradient", "layer_gradient", "dense_gradient", "conv_kernel_gradient",
                            "conv_input_gradient", "pool_routing", "recurrent_gradient", "saliency"})
BACKWARD_LAYER_KINDS = ("loss_gradient", "layer_gradient")
LOSS, INPUT = "loss", "input"           # the backward section's layers of classes "Loss" and "Input"
BACKWARD_KEYS = {"layers", "fine_layers"}
#: The backward step kinds each known layer class produces (the loss's one step is its loss_gradient,
#: the input's its saliency); a class not named here may have any one group.
BACKWARD_CLASS_KINDS = {**{cls: set() for cls in CLASS_KINDS}, "Dense": {"dense_gradient"},
                        **{cls: {"conv_kernel_gradient", "conv_input_gradient"}
                           for cls in ("Conv2D", "Conv1D", "DepthwiseConv2D", "SeparableConv2D")},
                        "MaxPooling2D": {"pool_routing"}, "AveragePooling2D": {"pool_routing"},
                        **{cls: {"recurrent_gradient"} for cls in ("SimpleRNN", "LSTM", "GRU", "Bidirectional")},
                        "Input": {"saliency"}, "Loss": set()}
BACKWARD_KIND_GROUPS = ({"dense_gradient"}, {"conv_kernel_gradient", "conv_input_gradient"}, {"pool_routing"},
                        {"recurrent_gradient"}, {"saliency"})
#: How many gate rows a recurrent gradient's `dz` has, per cell.
GATE_ROWS = {"lstm": 4, "gru": 3, "simple_rnn": 1}
#: An LSTM step's cell-state gradients: all set at a step that was not masked, only the carried
#: ones (dc_next, dc_prev) at a masked step, none for other cells.
CELL_FIELDS = ("dc_next", "dc", "c_prev", "c", "c_slope", "c_act", "dc_prev")


def field_types(cls: type[Event]) -> dict[str, tuple[type, bool]]:
    """Each field of an event class but `layer`: (its type, whether it may be null in a file)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.name == "layer":
            continue
        args = typing.get_args(hints[f.name])
        nullable = type(None) in args
        base = next(a for a in args if a is not type(None)) if nullable else hints[f.name]
        key = (cls.KIND, f.name)
        out[f.name] = (base, (nullable or key in MAY_BE_NULL) and key not in NEVER_NULL)
    return out


FIELDS: dict[str, dict[str, tuple[type, bool]]] = {kind: field_types(cls) for kind, cls in EVENT_TYPES.items()}
#: Each event field's default, for the fields a file may leave out.
DEFAULTS: dict[str, dict[str, Any]] = {kind: {f.name: f.default for f in fields(cls)}
                                       for kind, cls in EVENT_TYPES.items()}


def backward_layers_problem(layers: list[tuple[str, str]], forward: dict[str, str]) -> str | None:
    """What is wrong with a backward section's layers, or None: they start with the loss, may end
    with the input, and in between are layers of the forward pass with their forward classes."""
    if layers[0] != (LOSS, "Loss"):
        return f"layers begin with {shown(layers[0][0])} ({shown(layers[0][1])}); expected \"{LOSS}\" (Loss)"
    for k, (name, cls) in enumerate(layers[1:], 1):
        if (name, cls) == (INPUT, "Input") and k == len(layers) - 1:
            continue
        if cls in ("Loss", "Input") or name in (LOSS, INPUT):
            return (f"layer {k} is '{name}' ({cls}); only the first layer is \"{LOSS}\" (Loss) and only the last "
                    f"\"{INPUT}\" (Input)")
        if forward.get(name) != cls:
            return (f"layer {k} '{name}' ({cls}) is not a layer of the forward pass"
                    + (f" (there it is a {forward[name]})" if name in forward else ""))
    return None


# -- reading --------------------------------------------------------------------------------------
def shown(value: Any) -> str:
    """A value from a file, quoted for an error message: short, escaped, no control characters."""
    return clean_text(reprlib.repr(value), 60)


def what_is(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {shown(value)}"
    if isinstance(value, float):
        return f"the number {shown(value)}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an array reference" if convert(np.ndarray, None, value)[0] else "an object"
    return type(value).__name__


@dataclass
class Line:
    """One event line: its number in the file, kind, layer and field values (arrays once resolved)."""

    number: int
    kind: str
    layer: str
    values: dict[str, Any]
    schema: int = SCHEMA_VERSION


@dataclass
class LayerInfo:
    """What the steps of one layer are checked against: its class, input shape and output."""

    name: str
    cls: str
    input_shape: tuple = ()
    output: np.ndarray | None = None


class Reader:
    """Reads one trace file; `fail` raises TraceFormatError naming the file and the line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.npz = arrays_path(path)
        self.schema = SCHEMA_VERSION
        self.arrays: dict[str, np.ndarray] = {}

    def fail(self, line: int | None, message: str) -> typing.NoReturn:
        where = f"'{self.path}'" + (f" line {line}" if line else "")
        raise TraceFormatError(f"{where}: {message}")

    # -- the two files ----------------------------------------------------------------------------
    def text_lines(self) -> list[tuple[int, str]]:
        """The file's non-blank lines with their numbers (from 1)."""
        if not self.path.is_file():
            if not self.path.exists():
                raise TraceNotFoundError(f"no trace file at '{self.path}'")
            self.fail(None, "is not a file; expected an nntrace trace file (JSON lines)")
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            self.fail(None, f"cannot be read ({exc.strerror or exc})")
        if not data.strip():
            self.fail(None, "is empty; expected an nntrace trace file (a JSON header line, then one event per line)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(None, f"is not an nntrace trace file: byte {exc.start} is not UTF-8 text "
                            "(expected JSON lines written by `nntrace trace`)")
        return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]

    def load_arrays(self) -> None:
        """Every array of the `.npz` beside the file (no pickle)."""
        if not self.npz.is_file():
            self.fail(None, f"needs its arrays file '{self.npz}' beside it"
                            + ("" if not self.npz.exists() else " (that path is not a file)"))
        try:
            with self.npz.open("rb") as f:
                head = f.read(6)
            if not head:
                raise TraceFormatError(f"'{self.npz}' is empty; expected the .npz of arrays written with '{self.path}'")
            if head.startswith(b"\x93NUMPY"):
                raise TraceFormatError(f"'{self.npz}' holds a single array; expected the .npz of arrays of "
                                       f"'{self.path}'")
            if not head.startswith(b"PK"):
                raise TraceFormatError(f"'{self.npz}' is not a .npz file (a zip of .npy arrays); expected the arrays "
                                       f"of '{self.path}'")
            with np.load(self.npz, allow_pickle=False) as data:
                self.arrays = {k: data[k] for k in data.files}
        except TraceFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - zip, zlib, npy header and OS errors alike
            raise TraceFormatError(f"'{self.npz}' is damaged: it cannot be read as the .npz of arrays of "
                                   f"'{self.path}' ({type(exc).__name__}: {clean_text(str(exc), 120)})") from exc
        for key, value in self.arrays.items():
            if not isinstance(value, np.ndarray):
                raise TraceFormatError(f"'{self.npz}' holds {shown(key)}, which is not a NumPy array; expected only "
                                       ".npy arrays")

    def json_line(self, number: int, text: str) -> Any:
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            self.fail(number, f"is not JSON ({reason}); expected one JSON object per line")

    # -- the header -------------------------------------------------------------------------------
    def header(self, number: int, raw: Any) -> tuple[str, list[tuple[str, str]], list[str], dict]:
        """(model name, [(layer, class)], fine layers, raw context) from the header line."""
        if not isinstance(raw, dict):
            self.fail(number, f"is {what_is(raw)}; expected the trace header, a JSON object with "
                              f"\"format\": \"{FORMAT}\"")
        for key in ("format", "version", "schema", "model", "layers"):
            if key not in raw:
                self.fail(number, f"the header has no '{key}'; expected the keys {', '.join(sorted(HEADER_KEYS))}")
        if raw["format"] != FORMAT:
            self.fail(number, f"is not an nntrace trace file: format is {shown(raw['format'])}, expected \"{FORMAT}\"")
        version, schema = raw["version"], raw["schema"]
        if version != FORMAT_VERSION or not is_int(version) or schema not in READABLE_SCHEMAS or not is_int(schema):
            self.fail(None, f"is trace format version {shown(version)} (schema {shown(schema)}); this nntrace reads "
                            f"version {FORMAT_VERSION} (schemas {', '.join(map(str, READABLE_SCHEMAS))})")
        self.schema = schema
        unknown = sorted(set(raw) - HEADER_KEYS, key=str)
        if unknown:
            self.fail(number, f"the header has unknown keys {', '.join(map(shown, unknown))}; "
                              f"expected {', '.join(sorted(HEADER_KEYS))}")
        model = raw["model"]
        if not isinstance(model, str) or not model:
            self.fail(number, f"the header's 'model' is {what_is(model)}; expected the model's name (a string)")
        layers = self.header_layers(number, raw["layers"])
        fine = self.fine_layers(number, raw.get("fine_layers", []), layers)
        context = raw.get("context", {})
        if not isinstance(context, dict):
            self.fail(number, f"the header's 'context' is {what_is(context)}; expected an object")
        return clean_text(model, 128), layers, fine, context

    def header_layers(self, number: int, raw: Any, key: str = "layers") -> list[tuple[str, str]]:
        if not isinstance(raw, list):
            self.fail(number, f"the header's '{key}' is {what_is(raw)}; expected a list of {{\"name\", \"class\"}}")
        if not raw:
            self.fail(number, f"the header has no layers ('{key}' is empty); expected one entry per layer")
        layers: list[tuple[str, str]] = []
        for k, entry in enumerate(raw):
            if not isinstance(entry, dict) or set(entry) != {"name", "class"}:
                self.fail(number, f"{key}[{k}] is {what_is(entry)}"
                                  f"{' with keys ' + ', '.join(map(shown, entry)) if isinstance(entry, dict) else ''}; "
                                  "expected an object with exactly \"name\" and \"class\"")
            for what in ("name", "class"):
                value = entry[what]
                if not check_layer_name(value):
                    reason = first_unsafe(value) if isinstance(value, str) else f"it is {what_is(value)}"
                    self.fail(number, f"{key}[{k}].{what} is not a safe layer {what} ({reason}); "
                                      "expected 1–128 letters, digits, _ - . / :")
            if entry["name"] in dict(layers):
                self.fail(number, f"{key}[{k}].name '{entry['name']}' appears twice; layer names must be unique")
            layers.append((entry["name"], entry["class"]))
        return layers

    def fine_layers(self, number: int, raw: Any, layers: list[tuple[str, str]]) -> list[str]:
        names = dict(layers)
        if not isinstance(raw, list) or not all(isinstance(n, str) and n in names for n in raw) \
                or len(set(raw)) != len(raw):
            self.fail(number, "the header's 'fine_layers' is not a list of distinct layer names from 'layers'")
        return raw

    def backward_header(self, number: int, raw: Any,
                        forward: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]] | None:
        """The header's backward section, if any: ([(layer, class)] in backward order, fine layers)."""
        if raw is None:
            return None
        if self.schema < 3:
            self.fail(number, f"the header has a 'backward' section, which schema {self.schema} does not have; "
                              "expected schema 3")
        if not isinstance(raw, dict) or "layers" not in raw or set(raw) - BACKWARD_KEYS:
            keys = f" with keys {', '.join(map(shown, raw))}" if isinstance(raw, dict) else ""
            self.fail(number, f"the header's 'backward' is {what_is(raw)}{keys}; expected an object with "
                              "\"layers\" and optionally \"fine_layers\"")
        layers = self.header_layers(number, raw["layers"], "backward.layers")
        problem = backward_layers_problem(layers, dict(forward))
        if problem:
            self.fail(number, f"the header's backward section: {problem}")
        fine = raw.get("fine_layers", [])
        names = [n for n, _ in layers if n not in (LOSS, INPUT)]
        if not isinstance(fine, list) or not all(isinstance(n, str) and n in names for n in fine) \
                or len(set(fine)) != len(fine):
            self.fail(number, "the header's 'backward.fine_layers' is not a list of distinct model layer names from "
                              "'backward.layers' (the loss's and the input's steps are always there)")
        return layers, fine

    # -- events -----------------------------------------------------------------------------------
    def pass_of(self, number: int, raw: Any, has_backward: bool, after_backward: bool) -> bool:
        """Whether the event line belongs to the backward section ("pass": "backward", taken off
        the line); backward events need the header's backward section and come last."""
        if not isinstance(raw, dict) or "pass" not in raw:
            backward = False
        else:
            value = raw.pop("pass")
            if value not in ("forward", "backward"):
                self.fail(number, f"field 'pass' is {what_is(value)}; expected \"forward\" or \"backward\"")
            backward = value == "backward"
        if backward and not has_backward:
            self.fail(number, "has a backward event (\"pass\": \"backward\"), but the header has no 'backward' "
                              "section; expected forward events only")
        if after_backward and not backward:
            self.fail(number, "has a forward event after the backward section; expected the forward events first, "
                              "then the backward ones")
        return backward

    def event_line(self, number: int, raw: Any, layers: dict[str, str], fine: set[str],
                   backward: bool = False) -> Line:
        """Check an event line's kind, layer, field names and scalar values; arrays stay keys. A
        backward line's layers and fine layers are those of the header's backward section."""
        if not isinstance(raw, dict):
            self.fail(number, f"is {what_is(raw)}; expected an event (a JSON object with \"kind\" and \"layer\")")
        kind = raw.get("kind")
        if not isinstance(kind, str) or kind not in EVENT_TYPES:
            self.fail(number, f"has an event of unknown kind {shown(kind)}; expected one of {', '.join(EVENT_TYPES)}")
        if (kind in BACKWARD_KINDS) != backward:
            self.fail(number, f"has a {kind} event in the backward section; expected one of "
                              f"{', '.join(sorted(BACKWARD_KINDS))}" if backward else
                              f"has a {kind} event in the forward pass; a backward event carries \"pass\": "
                              "\"backward\" and needs the header's 'backward' section")
        layer = raw.get("layer")
        section = "backward section's " if backward else ""
        if not isinstance(layer, str) or layer not in layers:
            self.fail(number, f"{kind} names the layer {shown(layer)}, which is not in the header's {section}layers")
        if kind not in LAYER_KINDS + BACKWARD_LAYER_KINDS and layer not in fine and not (backward and layer == INPUT):
            self.fail(number, f"has a {kind} step of '{layer}', which the header's {section}'fine_layers' does not "
                              "list")
        types = FIELDS[kind]
        unknown = sorted(set(raw) - set(types) - {"kind", "layer"}, key=str)
        if unknown:
            self.fail(number, f"{kind} of '{layer}' has unknown fields {', '.join(map(shown, unknown))}; "
                              f"expected {', '.join(types)}")
        optional = OPTIONAL.get(kind, set()) | (ADDED_IN_SCHEMA_2.get(kind, set()) if self.schema == 1 else set())
        missing = [f for f in types if f not in raw and f not in optional]
        if missing:
            self.fail(number, f"{kind} of '{layer}' lacks the fields {', '.join(missing)}")
        values = {name: self.field(number, kind, layer, name, raw[name]) for name in types if name in raw}
        return Line(number, kind, layer, values, self.schema)

    def field(self, number: int, kind: str, layer: str, name: str, value: Any) -> Any:
        """A scalar field's value as the event holds it, or an array field's key (or None)."""
        base, nullable = FIELDS[kind][name]
        rule = RULES.get(kind, {}).get(name, UNNAMED.get(base))
        where = f"{kind} of '{layer}': field '{name}'"
        if value is None:
            if not nullable:
                self.fail(number, f"{where} is null; expected {expected(base, rule)}")
            return None
        ok, converted = convert(base, rule, value, TEXT_LIMIT.get(name, 200))
        if not ok:
            self.fail(number, f"{where} is {what_is(value)}; expected {expected(base, rule)}")
        return converted

    # -- arrays -----------------------------------------------------------------------------------
    def resolve(self, line: Line) -> None:
        """Replace the line's array keys by arrays, checking each dtype and the shapes they share."""
        sizes: dict[str, int] = {}
        for name, (base, _) in FIELDS[line.kind].items():
            rule = RULES.get(line.kind, {}).get(name, UNNAMED.get(base))
            where = f"{line.kind} of '{line.layer}': field '{name}'"
            if base is np.ndarray and line.values.get(name) is not None:
                line.values[name] = self.array(line.number, where, line.values[name])
                check_array(self, line, name, line.values[name], rule, sizes)
            elif isinstance(rule, Arrs) and line.values.get(name):
                arrays = tuple(None if key is None else self.array(line.number, where, key)
                               for key in line.values[name])
                for array in arrays:
                    if array is not None:
                        check_array(self, line, name, array, Arr(rule.dtype, "*"), sizes)
                line.values[name] = arrays

    def array(self, number: int, where: str, key: str) -> np.ndarray:
        if key not in self.arrays:
            self.fail(number, f"{where} refers to array {shown(key)}, which '{self.npz.name}' does not hold")
        return self.arrays[key]


def expected(base: type, rule: Any) -> str:
    """What a field should hold, in words."""
    if base is np.ndarray:
        return f"an array reference {{\"$array\": key}} ({rule.dtype}, dims {rule.dims})"
    if base is str:
        if isinstance(rule, frozenset):
            return "one of " + ", ".join(sorted(rule))
        return "text" if rule == TEXT else "a name of letters, digits, _ - . / :"
    if base is dict:
        return "an object of weight names (letters, digits, _ - . / :) to finite numbers ≥ 0"
    if base is tuple and isinstance(rule, Arrs):
        return f"a list of array references ({rule.dtype}{', or null' if rule.holes else ''})"
    if base is tuple:
        return {SHAPE: "a list of 1–8 sizes ≥ 0", PAIR: "a list of two integers",
                CELL: "a list of two integers ≥ 0", INDICES: "a list of up to 8 integers ≥ 0",
                TRIPLE: "a list of three integers ≥ 0",
                SIZES: "[] or a list of two integers ≥ 0"}.get(rule, "a list")
    if base is int:
        return f"an integer from 0 to {MAX_INDEX}"
    if base is float:
        return "a finite number"
    return "true or false"


def is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_INDEX


def convert(base: type, rule: Any, value: Any, limit: int = 200) -> tuple[bool, Any]:
    """(whether `value` is a valid JSON value for the field, the value the event holds)."""
    if base is np.ndarray:
        ok = isinstance(value, dict) and set(value) == {"$array"} and isinstance(value["$array"], str)
        return ok, value["$array"] if ok else None
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        return is_int(value), value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > 1e308:
            return False, None
        return math.isfinite(value), float(value)
    if base is str:
        if not isinstance(value, str):
            return False, None
        if rule == TEXT:
            return True, clean_text(value, limit)
        return (value in rule if isinstance(rule, frozenset) else check_layer_name(value)), value
    if base is tuple:
        if not isinstance(value, list):
            return False, None
        if isinstance(rule, Arrs):
            return array_keys(rule, value)
        if rule in (SHAPE, INDICES):
            ok = (len(value) >= 1 or rule == INDICES) and len(value) <= 8 and all(is_int(v) for v in value)
            return ok, tuple(value)
        if rule == SIZES and not value:
            return True, ()
        if rule == TRIPLE:
            return len(value) == 3 and all(is_int(v) for v in value), tuple(value)
        low = -MAX_INDEX if rule == PAIR else 0
        return len(value) == 2 and all(is_int(v, low) for v in value), tuple(value)
    if base is dict:
        ok = isinstance(value, dict) and len(value) <= 256 and all(
            check_layer_name(k) and isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1e308
            and math.isfinite(v) and v >= 0 for k, v in value.items())
        return ok, {k: float(v) for k, v in value.items()} if ok else None
    return False, None


def array_keys(rule: Arrs, value: list) -> tuple[bool, tuple]:
    """A list of array references (and nulls, where the rule allows them) as a tuple of keys."""
    keys = []
    for item in value:
        ok, key = (True, None) if item is None and rule.holes else convert(np.ndarray, None, item)
        if not ok:
            return False, ()
        keys.append(key)
    return True, tuple(keys)


def check_array(reader: Reader, line: Line, name: str, array: np.ndarray, rule: Arr, sizes: dict[str, int]) -> None:
    """An array field's dtype, values and dimensions (named sizes must agree within the event)."""
    where = f"{line.kind} of '{line.layer}': field '{name}'"
    if array.dtype.kind not in DTYPES[rule.dtype]:
        reader.fail(line.number, f"{where} is an array of dtype {array.dtype}; expected {rule.dtype} "
                                 f"(NumPy kinds {', '.join(DTYPES[rule.dtype])})")
    if array.dtype.kind == "f" and rule.dtype != "window" and not np.isfinite(array).all():
        reader.fail(line.number, f"{where} holds NaN or infinite values; expected finite numbers")
    if rule.dtype == "index" and array.size and array.min() < 0:
        reader.fail(line.number, f"{where} holds negative indices; expected indices ≥ 0")
    if rule.dims == "*":
        if array.size == 0:
            reader.fail(line.number, f"{where} is empty; expected at least one value")
        return
    dims = rule.dims.split()
    if array.ndim != len(dims):
        reader.fail(line.number, f"{where} has shape {array.shape}; expected {len(dims)} dimensions ({rule.dims})")
    for dim, size in zip(dims, array.shape):
        want = int(dim) if dim.isdigit() else sizes.setdefault(dim, size)
        may_be_empty = dim.endswith("?")
        if size != want or (size < 1 and not may_be_empty):
            reader.fail(line.number, f"{where} has shape {array.shape}; expected ({', '.join(dims)}) with "
                                     f"{dim} = {want if size >= 1 or may_be_empty else 'at least 1'} like the "
                                     "event's other fields")


# -- checks of a step against its layer -----------------------------------------------------------
def grid(layer: LayerInfo) -> tuple[int, ...]:
    """The layer's output as (rows, cols, channels); a 1-D conv's `(steps, filters)` is one row."""
    shape = layer.output.shape
    return (1,) + shape if len(shape) == 2 else shape


def grid_position(line: Line, layer: LayerInfo, names: tuple[str, ...]) -> str | None:
    """Whether the step's (row, col, channel) lies inside the layer's `(h, w, c)` output."""
    shape = grid(layer)
    if len(shape) != 3:
        return (f"a {line.kind} step needs a layer output of shape (rows, cols, channels); "
                f"'{layer.name}' has {layer.output.shape}")
    for name, size in zip(names, shape):
        if line.values[name] >= size:
            return f"{name} {line.values[name]} is outside the layer's output of shape {layer.output.shape}"
    return None


def check_geometry(line: Line, layer: LayerInfo, kernel: tuple[int, ...]) -> str | None:
    """A recorded geometry gives the layer's output size: ⌊(n + pad − k)/s⌋ + 1 on each axis."""
    n, s, pad, out = (line.values.get(name, DEFAULTS[line.kind][name]) for name in GEOMETRY)
    d = line.values.get("dilation", DEFAULTS[line.kind].get("dilation", (1, 1)))
    if not n:
        return None
    if not (len(s) == len(pad) == len(out) == len(d) == 2) or min(s) < 1 or min(d) < 1:
        return "fields input_size, strides (≥ 1), pad, output_size and dilation (≥ 1) must each be two integers"
    k = [(kernel[a] - 1) * d[a] + 1 for a in (0, 1)]
    if out != grid(layer)[:2] or any((n[a] + pad[a] - k[a]) // s[a] + 1 != out[a] for a in (0, 1)):
        return (f"geometry input_size {list(n)}, strides {list(s)}, pad {list(pad)}, window {k} does not "
                f"give output_size {list(out)} = the layer's output rows and cols {list(grid(layer)[:2])}")
    return None


def check_conv(line: Line, layer: LayerInfo) -> str | None:
    """Inside the output grid (a depthwise stage's channels are not the layer's: rows and cols only),
    reading a group of the input's channels, with a geometry that gives the output size."""
    v = line.values
    stage, cin = v.get("stage", ""), v["patch"].shape[2]
    channels = layer.input_shape[-1] if len(layer.input_shape) >= 2 else None
    if stage != "pointwise" and channels is not None and (v.get("group", 0) + 1) * cin > channels:
        return f"group {v.get('group', 0)} of {cin} channels is outside the layer's {channels} input channels"
    names = ("row", "col") if stage == "depthwise" else ("row", "col", "filter")
    return grid_position(line, layer, names) or check_geometry(line, layer, v["patch"].shape[:2])


def check_pool(line: Line, layer: LayerInfo) -> str | None:
    return check_window(line, layer) or check_geometry(line, layer, line.values["window"].shape)


def check_window(line: Line, layer: LayerInfo) -> str | None:
    """A pooling window's padding, winner and place in the layer's output (forward and backward)."""
    v = line.values
    window, real, winner = v["window"], v["real"], v["winner"]
    if np.isinf(window).any() or np.isnan(window[real]).any() or not np.isnan(window[~real]).all():
        return "field 'window' must hold finite values on real cells and NaN exactly on padding cells (real false)"
    if (winner is None) != (v["mode"] == "average"):
        return f"field 'winner' must be a cell for mode max and null for mode average (mode {v['mode']})"
    if winner is not None and not (winner[0] < window.shape[0] and winner[1] < window.shape[1] and real[winner]):
        return f"field 'winner' {list(winner)} is not a real cell of the {window.shape[0]}×{window.shape[1]} window"
    return grid_position(line, layer, ("row", "col", "channel"))


def check_flatten(line: Line, layer: LayerInfo) -> str | None:
    shape, sources = line.values["input_shape"], line.values["sources"]
    if sources.shape != (math.prod(shape), len(shape)):
        return (f"field 'sources' has shape {sources.shape}; expected ({math.prod(shape)}, {len(shape)}) "
                f"for input_shape {shape}")
    if (sources >= np.array(shape)).any():
        return f"field 'sources' holds a cell outside input_shape {shape}"
    if layer.output.size != len(sources):
        return f"maps {len(sources)} values but '{layer.name}' outputs {layer.output.size}"
    return None


def check_dense(line: Line, layer: LayerInfo) -> str | None:
    v = line.values
    if len(v["inputs"]) > v["n_inputs"] or (v["inputs"] >= v["n_inputs"]).any():
        return f"field 'inputs' must hold at most n_inputs ({v['n_inputs']}) indices below n_inputs"
    if layer.output.ndim != 1 or v["unit"] >= len(layer.output):
        return f"unit {v['unit']} is outside the layer's output of shape {layer.output.shape}"
    return None


def check_softmax(line: Line, layer: LayerInfo) -> str | None:
    n = len(line.values["probabilities"])
    return None if n == layer.output.size else f"has {n} classes but '{layer.name}' outputs {layer.output.size} values"


def check_embedding(line: Line, layer: LayerInfo) -> str | None:
    out, v = layer.output, line.values
    if out.ndim != 2 or v["position"] >= out.shape[0] or len(v["vector"]) != out.shape[1]:
        return (f"position {v['position']} with a vector of {len(v['vector'])} does not fit the layer's output "
                f"of shape {out.shape} (positions, vector size)")
    return None


def check_recurrent(line: Line, layer: LayerInfo) -> str | None:
    v = line.values
    fresh = [f for f in FRESH[line.kind] if v.get(f) is not None]
    if v["masked"] and fresh:
        return f"a masked step carries no fresh values, but {', '.join(fresh)} are set (expected null)"
    needed = FRESH[line.kind] if line.schema >= 2 else FRESH_IN_SCHEMA_1.get(line.kind, FRESH[line.kind])
    absent = [f for f in needed if v.get(f) is None]
    if not v["masked"] and absent:
        return f"a step that was not masked needs {', '.join(absent)} (they are null or missing)"
    if line.kind == "gru_step" and (v["recurrent_bias"] is None) == (v["reset_after"] and not v["masked"]):
        return "field 'recurrent_bias' must be set exactly at a step that was not masked with reset_after"
    if len(layer.input_shape) == 3 and max(v["time"], v["step"]) >= layer.input_shape[1]:
        return f"time {v['time']} / step {v['step']} is outside the layer's {layer.input_shape[1]} input steps"
    return None


def check_merge(line: Line, layer: LayerInfo) -> str | None:
    v = line.values
    fwd, bwd, merged, mode = v["forward"], v["backward"], v["merged"], v["merge_mode"]
    if fwd.shape != bwd.shape or fwd.ndim not in (1, 2):
        return (f"fields 'forward' {fwd.shape} and 'backward' {bwd.shape} must share one shape, (units,) or "
                "(steps, units)")
    if (merged is None) != (mode == "None"):
        return f"field 'merged' must be null exactly when merge_mode is None (merge_mode {mode})"
    if merged is not None:
        want = fwd.shape[:-1] + (2 * fwd.shape[-1],) if mode == "concat" else fwd.shape
        if merged.shape != want:
            return f"field 'merged' has shape {merged.shape}; expected {want} for merge_mode {mode}"
    return None


def check_dropout(line: Line, layer: LayerInfo) -> str | None:
    rate = line.values["rate"]
    return None if 0.0 <= rate <= 1.0 else f"field 'rate' is {rate}; expected a rate from 0 to 1"


def check_merge_step(line: Line, layer: LayerInfo) -> str | None:
    v = line.values
    operands, masks, result = v["operands"], v["masks"], v["result"]
    if not operands or (masks and len(masks) != len(operands)):
        return (f"has {len(operands)} operands and {len(masks)} masks; expected one or more operands and a mask "
                "(or null) for each")
    if layer.output is not None and result.shape != layer.output.shape:
        return f"field 'result' has shape {result.shape}; the layer's output has {layer.output.shape}"
    if v.get("axis") is not None and v["axis"] >= result.ndim:
        return f"field 'axis' {v['axis']} is not an axis of the result of shape {result.shape}"
    if len(v["axes"]) == 2 and (len(operands) != 2 or any(a >= o.ndim for a, o in zip(v["axes"], operands))):
        return f"field 'axes' {list(v['axes'])} does not name one axis of each of two operands"
    return None


def check_normalize(line: Line, layer: LayerInfo) -> str | None:
    """One group: values, normalized, output (and gamma, beta) share a shape; the position names
    the group on the layer's other axes."""
    v = line.values
    shapes = {name: v[name].shape for name in ("values", "normalized", "output", "gamma", "beta")
              if v.get(name) is not None}
    if len(set(shapes.values())) > 1:
        return "fields " + ", ".join(f"'{k}' {s}" for k, s in shapes.items()) + " must share one shape"
    if len(v["position"]) + v["values"].ndim != layer.output.ndim:
        return (f"position {list(v['position'])} and values of shape {v['values'].shape} do not make up the "
                f"layer's output of shape {layer.output.shape}")
    if v["variance"] < 0 or v["epsilon"] < 0:
        return "fields 'variance' and 'epsilon' must be ≥ 0"
    return None


def check_attention(line: Line, layer: LayerInfo) -> str | None:
    """The query is a row of the layer's `(queries, features)` output."""
    out = layer.output
    if out.ndim == 2 and line.values["query"] >= out.shape[0]:
        return f"query {line.values['query']} is outside the layer's output of shape {out.shape}"
    return None


def no_check(line: Line, layer: LayerInfo) -> None:
    return None


#: Each step kind's check against its layer (the layer's input shape and output).
STEP_CHECKS: dict[str, Callable[[Line, LayerInfo], str | None]] = {
    "conv_patch": check_conv, "pool_window": check_pool, "flatten_map": check_flatten, "dense_neuron": check_dense,
    "softmax": check_softmax, "embedding_lookup": check_embedding, "rnn_step": check_recurrent,
    "lstm_step": check_recurrent, "gru_step": check_recurrent, "bidirectional_merge": check_merge,
    "dropout": check_dropout,
    "merge": check_merge_step, "normalize": check_normalize, "attention": check_attention,
}


def upgrade(line: Line, layer: LayerInfo) -> None:
    """A schema 1 step in schema 2 form: conv channel sums (from the products), the dense remainder
    and input count (from the layer's input shape), activations named as unrecorded; a masked
    recurrent step's values are dropped (the step did not happen)."""
    v = line.values
    for name in ADDED_IN_SCHEMA_2.get(line.kind, ()):
        if name in UNRECORDED:
            v.setdefault(name, UNRECORDED[name])
    if line.kind == "conv_patch":
        v.setdefault("channel_totals", v["products"].sum(axis=(0, 1), dtype=np.float32))
    if line.kind == "dense_neuron":
        v.setdefault("rest", float(v["total"] - np.sum(v["contributions"], dtype=np.float64)))
        v.setdefault("n_inputs", math.prod(layer.input_shape[1:]))
    if line.kind in FRESH and v["masked"]:
        v.update(dict.fromkeys(FRESH[line.kind]))


def check_layer_events(reader: Reader, layers: list[tuple[str, str]], lines: list[Line]) -> dict[str, LayerInfo]:
    """Each header layer has one layer_start and, after it, one layer_end holding the layer's output,
    both with the header's class; returns each layer's info."""
    infos = {name: LayerInfo(name, cls) for name, cls in layers}
    seen: set[tuple[str, str]] = set()
    for line in lines:
        info, v = infos[line.layer], line.values
        if (line.kind, line.layer) in seen:
            reader.fail(line.number, f"has a second {line.kind} of '{line.layer}'; each layer has one layer_start "
                                     "and one layer_end")
        if line.kind == "layer_end" and ("layer_start", line.layer) not in seen:
            reader.fail(line.number, f"has the layer_end of '{line.layer}' before its layer_start")
        seen.add((line.kind, line.layer))
        if v["layer_class"] != info.cls:
            reader.fail(line.number, f"{line.kind} of '{line.layer}' says class {v['layer_class']}; "
                                     f"the header says {info.cls}")
        if line.kind == "layer_start":
            info.input_shape = v["input_shape"]
            continue
        shape = v["output_shape"][1:]
        if shape not in (v["output"].shape, v["output"].shape[1:]):
            reader.fail(line.number, f"layer_end of '{line.layer}': field 'output' has shape {v['output'].shape}; "
                                     f"expected {shape} (output_shape without the batch axis) or a stack of those")
        info.output = v["output"]
    for name, _ in layers:
        for kind in LAYER_KINDS:
            if (kind, name) not in seen:
                reader.fail(None, f"has no {kind} for layer '{name}'; every layer in the header needs a layer_start "
                                  "and a layer_end with its output (is the file cut short?)")
    return infos


def check_layer_steps(reader: Reader, layer: LayerInfo, steps: list[Line]) -> None:
    """One layer's steps together: kinds its class produces, kinds that go together, single steps
    that are single, and one unit count across its recurrent steps."""
    allowed = CLASS_KINDS.get(layer.cls)
    seen: dict[str, int] = {}
    units_of: int | None = None
    for line in steps:
        if allowed is not None and line.kind not in allowed:
            reader.fail(line.number, f"has a {line.kind} step of '{layer.name}', a {layer.cls} layer, whose steps are "
                                     f"{', '.join(sorted(allowed)) or 'not recorded'}")
        kinds = set(seen) | {line.kind}
        if len(kinds) > 1 and not any(kinds <= group for group in KIND_GROUPS):
            reader.fail(line.number, f"has a {line.kind} step of '{layer.name}' among its {', '.join(sorted(seen))} "
                                     "steps; one layer's steps are of one kind (conv, pooling, dense + softmax, "
                                     "recurrent + merge, …)")
        seen[line.kind] = seen.get(line.kind, 0) + 1
        if line.kind in ONCE and seen[line.kind] > 1:
            reader.fail(line.number, f"has a second {line.kind} step of '{layer.name}'; a layer has at most one")
        if line.kind in FRESH:
            n = len(line.values["h"])
            if units_of is not None and n != units_of:
                reader.fail(line.number, f"{line.kind} of '{layer.name}' has {n} units; the layer's earlier steps "
                                         f"have {units_of}")
            units_of = n


def context_value(reader: Reader, key: str, value: Any) -> Any:
    """One context entry, checked and cleaned (strings lose control characters)."""
    rule = CONTEXT[key]
    if value is None:
        return None
    if rule == "text" and isinstance(value, str):
        return clean_text(value, TEXT_LIMIT.get(key, 200))
    if rule in ("texts", "input") and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [clean_text(v, TEXT_LIMIT.get(key, 200)) for v in value]
    if rule == "index" and is_int(value):
        return value
    if rule == "input":
        ok, ref = convert(np.ndarray, None, value)
        if ok:
            array = reader.array(1, f"the header's context.{key}", ref)
            if array.dtype.kind in "fiu" and array.size and np.isfinite(array).all():
                return array
    want = {"text": "a string", "texts": "a list of strings", "index": f"an integer from 0 to {MAX_INDEX}",
            "input": "a list of strings or a reference to a finite numeric array"}[rule]
    reader.fail(1, f"the header's context.{key} is {what_is(value)}; expected {want} or null")


def read_context(reader: Reader, raw: dict) -> dict:
    unknown = sorted(set(raw) - set(CONTEXT), key=str)
    if unknown:
        reader.fail(1, f"the header's context has unknown keys {', '.join(map(shown, unknown))}; "
                       f"expected {', '.join(CONTEXT)}")
    return {key: context_value(reader, key, value) for key, value in raw.items()}


def event_of(line: Line) -> Event:
    return EVENT_TYPES[line.kind](layer=line.layer, **line.values)


def load_trace(path: str | Path) -> Trace:
    """Read a trace file written by `save_trace`; the Trace replays without the model. Anything
    wrong with either file raises TraceFormatError (TraceNotFoundError when there is no file).
    A backward section is checked too; `load_traces` returns it."""
    return load_traces(path)[0]


def load_traces(path: str | Path) -> tuple[Trace, Trace | None]:
    """(the forward trace, the backward trace or None) of a trace file, both checked in full."""
    reader = Reader(Path(path))
    lines = reader.text_lines()
    number, text = lines[0]
    raw_header = reader.json_line(number, text)
    model, layers, fine, raw_context = reader.header(number, raw_header)
    section = reader.backward_header(number, raw_header.get("backward"), layers)
    names, recorded = dict(layers), set(fine)
    back_names, back_recorded = dict(section[0]) if section else {}, set(section[1]) if section else set()
    events: list[Line] = []
    back_events: list[Line] = []
    for n, text in lines[1:]:
        raw = reader.json_line(n, text)
        if reader.pass_of(n, raw, section is not None, bool(back_events)):
            back_events.append(reader.event_line(n, raw, back_names, back_recorded, backward=True))
        else:
            events.append(reader.event_line(n, raw, names, recorded))
    reader.load_arrays()
    context = read_context(reader, raw_context)
    layer_lines = [line for line in events if line.kind in LAYER_KINDS]
    for line in layer_lines:
        reader.resolve(line)
    infos = check_layer_events(reader, layers, layer_lines)
    steps: dict[str, list[Line]] = {}
    for line in events:
        if line.kind in LAYER_KINDS:
            continue
        reader.resolve(line)
        if line.schema == 1:
            upgrade(line, infos[line.layer])
        problem = STEP_CHECKS.get(line.kind, no_check)(line, infos[line.layer])
        if problem:
            reader.fail(line.number, f"{line.kind} of '{line.layer}': {problem}")
        steps.setdefault(line.layer, []).append(line)
    for name, lines_of_layer in steps.items():
        check_layer_steps(reader, infos[name], lines_of_layer)
    forward = Trace(model, layers, [event_of(line) for line in layer_lines], context,
                    recorded_steps={name: [event_of(line) for line in ls] for name, ls in steps.items()})
    if section is None:
        return forward, None
    return forward, read_backward(reader, model, section, back_events, infos, layers, context)


# -- the backward section (schema 3) --------------------------------------------------------------
@dataclass
class BackwardInfo:
    """What a backward step is checked against: its layer's forward info, the model's input shape,
    its class count and class names."""

    forward: LayerInfo | None
    model_input: tuple
    classes: int
    labels: list | None


def check_loss_gradient(line: Line, info: BackwardInfo) -> str | None:
    v = line.values
    n, label = len(v["logits"]), v["label"]
    if n != info.classes:
        return f"has {n} logits but the model's last layer outputs {info.classes} values"
    if label >= n or (info.labels and label >= len(info.labels)):
        return f"label {label} is not one of the model's {min(n, len(info.labels or []) or n)} classes"
    onehot = np.zeros(n, v["onehot"].dtype)
    onehot[label] = 1
    if not np.array_equal(v["onehot"], onehot):
        return f"field 'onehot' must be 1 at the label ({label}) and 0 elsewhere"
    p = v["probabilities"]
    if p.min() < 0 or p.max() > 1 or abs(float(p.sum(dtype=np.float64)) - 1) > 1e-3:
        return "field 'probabilities' must hold values from 0 to 1 that sum to 1"
    return None if v["loss"] >= 0 else f"field 'loss' is {v['loss']}; expected a loss ≥ 0"


def check_layer_gradient(line: Line, info: BackwardInfo) -> str | None:
    v, layer = line.values, info.forward
    if v["norm"] < 0:
        return f"field 'norm' is {v['norm']}; expected a norm ≥ 0"
    out, given = layer.output, v["output_gradient"]
    if given is not None and out is not None and given.shape not in (out.shape, out.shape[1:]):
        return (f"field 'output_gradient' has shape {given.shape}; expected the shape of the layer's output "
                f"{out.shape}")
    dx, shape = v["input_gradient"], tuple(layer.input_shape[1:])
    if dx is not None and shape and dx.shape != shape:
        return f"field 'input_gradient' has shape {dx.shape}; expected the shape of the layer's input {shape}"
    return None


def check_dense_gradient(line: Line, info: BackwardInfo) -> str | None:
    v, layer = line.values, info.forward
    if len(v["inputs"]) > v["n_inputs"] or (v["inputs"] >= v["n_inputs"]).any():
        return f"field 'inputs' must hold at most n_inputs ({v['n_inputs']}) indices below n_inputs"
    if layer.output.ndim != 1 or v["unit"] >= len(layer.output):
        return f"unit {v['unit']} is outside the layer's output of shape {layer.output.shape}"
    if len(layer.input_shape) >= 2 and v["n_inputs"] != math.prod(layer.input_shape[1:]):
        return f"n_inputs is {v['n_inputs']}; the layer's input has {math.prod(layer.input_shape[1:])} values"
    if v["from_loss"] and (v["output_gradient"] is not None or v["slope"] is not None):
        return "a unit whose δ comes from the loss (from_loss) has null output_gradient and slope"
    if not v["from_loss"] and v["output_gradient"] is None:
        return "a unit whose δ does not come from the loss needs its output_gradient"
    return None


def conv_grids(layer: LayerInfo) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The layer's input and output as (rows, cols, channels) (a 1-D conv's as one row), or None."""
    out, shape = grid(layer), tuple(layer.input_shape[1:])
    shape = (1,) + shape if len(shape) == 2 else shape
    return (shape, out) if len(shape) == 3 and len(out) == 3 else None


def check_conv_kernel_gradient(line: Line, info: BackwardInfo) -> str | None:
    v, grids = line.values, conv_grids(info.forward)
    if grids is None:
        return f"needs a layer of (rows, cols, channels) input and output; '{line.layer}' has other shapes"
    (_, _, cin), (oh, ow, filters) = grids
    if v["inputs"].shape != (oh, ow):
        return f"fields 'inputs', 'deltas', … have shape {v['inputs'].shape}; expected the output's ({oh}, {ow})"
    if v["filter"] >= filters or v["tap"][2] >= cin:
        return (f"filter {v['filter']} / tap channel {v['tap'][2]} is outside the layer's {filters} filters and "
                f"{cin} input channels")
    return None


def check_conv_input_gradient(line: Line, info: BackwardInfo) -> str | None:
    v, grids = line.values, conv_grids(info.forward)
    if grids is None:
        return f"needs a layer of (rows, cols, channels) input and output; '{line.layer}' has other shapes"
    (h, w, cin), (oh, ow, filters) = grids
    if v["row"] >= h or v["col"] >= w or v["channel"] >= cin:
        return f"input cell ({v['row']}, {v['col']}, {v['channel']}) is outside the layer's input ({h}, {w}, {cin})"
    cells = v["cells"]
    if len(cells) and (cells[:, 0].max() >= oh or cells[:, 1].max() >= ow):
        return f"field 'cells' holds a cell outside the layer's {oh}×{ow} output"
    if v["weights"].shape[1] != filters:
        return f"fields 'weights' and 'deltas' have {v['weights'].shape[1]} filters; the layer has {filters}"
    return None


def check_pool_routing(line: Line, info: BackwardInfo) -> str | None:
    v = line.values
    if (v["routed"][~v["real"]] != 0).any():
        return "field 'routed' must be 0 on the window's padding cells (real false)"
    return check_window(line, info.forward)


def check_recurrent_gradient(line: Line, info: BackwardInfo) -> str | None:
    v, layer = line.values, info.forward
    later = ("dz", "slopes", "gates", "dc", "c_prev", "c", "c_slope", "c_act", "h_prev", "h_in")
    if v["masked"]:
        fresh = [f for f in later if v.get(f) is not None]  # a field left out is null
        if fresh:
            return f"a masked step passes its gradients through, but {', '.join(fresh)} are set (expected null)"
    elif v["dz"] is None:
        return "a step that was not masked needs its gate gradients 'dz'"
    rows = GATE_ROWS.get(v["cell"])
    if v["dz"] is not None and rows is not None and v["dz"].shape[0] != rows:
        return f"field 'dz' has {v['dz'].shape[0]} gate rows; a {v['cell']} cell has {rows}"
    lstm = v["cell"] == "lstm"
    want = (CELL_FIELDS if not v["masked"] else ("dc_next", "dc_prev")) if lstm else ()
    wrong = [f for f in CELL_FIELDS if (v.get(f) is not None) != (f in want)]
    if wrong:
        return (f"fields {', '.join(wrong)} must be {'set' if wrong[0] in want else 'null'} at a "
                f"{'masked ' if v['masked'] else ''}step of a {v['cell']} cell")
    if len(layer.input_shape) == 3 and max(v["time"], v["step"]) >= layer.input_shape[1]:
        return f"time {v['time']} / step {v['step']} is outside the layer's {layer.input_shape[1]} input steps"
    return None


def check_saliency(line: Line, info: BackwardInfo) -> str | None:
    v = line.values
    shape = tuple(info.model_input[1:])
    if shape and v["gradient"].shape != shape:
        return f"field 'gradient' has shape {v['gradient'].shape}; the model's input has {shape}"
    return None if v["saliency"].min() >= 0 else "field 'saliency' holds negative values; expected |∂L/∂x| ≥ 0"


BACKWARD_CHECKS: dict[str, Callable[[Line, BackwardInfo], str | None]] = {
    "loss_gradient": check_loss_gradient, "layer_gradient": check_layer_gradient,
    "dense_gradient": check_dense_gradient, "conv_kernel_gradient": check_conv_kernel_gradient,
    "conv_input_gradient": check_conv_input_gradient, "pool_routing": check_pool_routing,
    "recurrent_gradient": check_recurrent_gradient, "saliency": check_saliency,
}


def check_backward_layer_events(reader: Reader, layers: list[tuple[str, str]], lines: list[Line]) -> None:
    """One loss_gradient (of the loss), one layer_gradient of every model layer with its class, and
    one saliency of the input (when the section has the input)."""
    classes, seen = dict(layers), set()
    for line in lines:
        want = {LOSS: "loss_gradient", INPUT: "saliency"}.get(line.layer, "layer_gradient")
        if line.kind in BACKWARD_LAYER_KINDS + ("saliency",) and line.kind != want:
            reader.fail(line.number, f"has a {line.kind} of '{line.layer}'; the backward section's '{line.layer}' "
                                     f"has a {want}")
        if line.kind != want:
            continue
        if line.layer in seen:
            reader.fail(line.number, f"has a second {want} of '{line.layer}'; each backward layer has one")
        seen.add(line.layer)
        if want == "layer_gradient" and line.values["layer_class"] != classes[line.layer]:
            reader.fail(line.number, f"layer_gradient of '{line.layer}' says class {line.values['layer_class']}; "
                                     f"the header says {classes[line.layer]}")
    for name, _ in layers:
        if name not in seen:
            want = {LOSS: "loss_gradient", INPUT: "saliency"}.get(name, "layer_gradient")
            reader.fail(None, f"has no {want} for the backward layer '{name}'; every layer of the backward section "
                              "needs one (is the file cut short?)")


def check_backward_steps(reader: Reader, name: str, cls: str, steps: list[Line]) -> None:
    """One backward layer's steps: kinds its class produces, of one group, and one unit count."""
    allowed = BACKWARD_CLASS_KINDS.get(cls)
    seen: set[str] = set()
    units_of: int | None = None
    for line in steps:
        if allowed is not None and line.kind not in allowed:
            reader.fail(line.number, f"has a {line.kind} step of the backward layer '{name}', a {cls} layer, whose "
                                     f"backward steps are {', '.join(sorted(allowed)) or 'not recorded'}")
        seen.add(line.kind)
        if not any(seen <= group for group in BACKWARD_KIND_GROUPS):
            reader.fail(line.number, f"has a {line.kind} step of the backward layer '{name}' among other kinds "
                                     "of backward steps; one layer's are of one kind (dense, conv, pooling, recurrent)")
        if line.kind == "recurrent_gradient":
            n = len(line.values["dh"])
            if units_of is not None and n != units_of:
                reader.fail(line.number, f"recurrent_gradient of '{name}' has {n} units; the layer's earlier steps "
                                         f"have {units_of}")
            units_of = n


def read_backward(reader: Reader, model: str, section: tuple[list[tuple[str, str]], list[str]],
                  lines: list[Line], infos: dict[str, LayerInfo], forward_layers: list[tuple[str, str]],
                  context: dict) -> Trace:
    """The backward section, checked against the forward pass, as a backward Trace."""
    layers, _ = section
    for line in lines:
        reader.resolve(line)
    check_backward_layer_events(reader, layers, lines)
    steps: dict[str, list[Line]] = {}
    for line in lines:
        if line.kind not in BACKWARD_LAYER_KINDS:
            steps.setdefault(line.layer, []).append(line)
    classes = dict(layers)
    for name, lines_of_layer in steps.items():
        check_backward_steps(reader, name, classes[name], lines_of_layer)
    last = infos[forward_layers[-1][0]].output
    model_input = infos[forward_layers[0][0]].input_shape
    labels = context.get("labels")
    for line in lines:
        info = BackwardInfo(infos.get(line.layer), model_input, int(last.size), labels)
        problem = BACKWARD_CHECKS[line.kind](line, info)
        if problem:
            reader.fail(line.number, f"{line.kind} of '{line.layer}': {problem}")
    by_layer = {line.layer: event_of(line) for line in lines if line.kind in BACKWARD_LAYER_KINDS}
    events = [by_layer[name] for name, _ in layers if name in by_layer]
    loss = by_layer[LOSS]
    recorded = {LOSS: [loss], **{name: [event_of(line) for line in ls] for name, ls in steps.items()}}
    return Trace(model, layers, events, {**context, "label": loss.label, "loss": loss.loss},
                 recorded_steps=recorded, direction="backward")
