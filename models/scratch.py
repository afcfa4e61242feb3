"""Scratch model containers: a graph of scratch layers with Keras's masking, save/load without TF."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NoReturn

import numpy as np

from nntrace.layers import (InputShapeError, Layer, ModelStructureError, NNTraceError, TextVectorization,
                            UnsupportedLayerError, WeightMismatchError)
from nntrace.layers.errors import ModelFileError
from nntrace.layers.parallel import over_batch
from nntrace.models.convert import ZIP_ERRORS, build_layer, check_zip_file
from nntrace.models import gradients as backprop
from nntrace.models.graph import Graph, check_batches, run
from nntrace.tracer.recorder import NULL_TRACER
from nntrace.tracer.sanitize import first_unprintable

FORMAT = "nntrace-scratch"
FORMAT_VERSION = 1
ARCH_KEY = "__architecture__"


class ScratchModel:
    """Scratch layers that reproduce a Keras model's forward pass: a chain, or a graph of layer
    calls (`graph`; `inbound[name]` lists what each node reads, `order` the order they run).

    Build one with `load_keras_model(model_or_path)` or `load_weights(path)` on an `.npz` written by
    `save_weights`. `forward(x)` returns the output layer's output (probabilities for the shipped
    models): images `(batch, h, w, c)`; text models take token ids `(batch, seq_len)` or, when the
    model starts with TextVectorization, raw strings `(batch,)`. A model with several inputs takes a
    list of arrays in input order, or a dict keyed by input name.
    """

    kind = "model"
    requires: tuple[str, ...] = ()  # a layer class one of which this container expects

    def __init__(self, layers: list[Layer] | None = None, name: str = "model",
                 input_info: dict | None = None, meta: dict | None = None, graph: Graph | None = None) -> None:
        self.layers: list[Layer] = list(layers or [])
        self.name = name
        self.input_info = input_info or {"shape": None, "dtype": None}
        self.meta: dict[str, Any] = dict(meta or {})
        self._graph = graph  # None: the layers form a chain

    # -- building -------------------------------------------------------------------------------
    def load_keras_model(self, model_or_path: Any) -> "ScratchModel":
        """Read layers and weights from a `keras.Model` or a `.keras` file (safe mode)."""
        layers, input_info, name, meta, graph = read_keras(model_or_path)
        self._check_kind(layers)
        self.layers, self.input_info, self.name = layers, input_info, name
        self._graph = None if graph.is_chain else graph
        self.meta.update(meta)
        return self

    @classmethod
    def from_keras(cls, model_or_path: Any) -> "ScratchModel":
        return cls().load_keras_model(model_or_path)

    def _check_kind(self, layers: list[Layer]) -> None:
        if self.requires and not any(_class_names(l) & set(self.requires) for l in layers):
            raise ModelStructureError(
                f"{type(self).__name__} expects a model with a {' or '.join(self.requires)} layer; "
                f"this one has {', '.join(type(l).__name__ for l in layers)}. Use models.load_scratch().")

    def layer(self, name: str) -> Layer:
        """The layer called `name`, or the layer a graph node of that name calls (`dense:1`)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        if self._graph is not None:
            for node in self._graph.nodes:
                if node.name == name:
                    return self.layer(node.layer)
        raise KeyError(f"no layer named '{name}'; layers: {', '.join(l.name for l in self.layers)}")

    # -- the graph ------------------------------------------------------------------------------
    @property
    def graph(self) -> Graph:
        """The layer calls in the order they run; for a chain, each layer reads the one before."""
        return self._graph if self._graph is not None else Graph.chain(self.layers, self.input_info)

    @property
    def order(self) -> list[str]:
        """Node names (layer names; `name:k` for a shared layer's further calls) in the order they run."""
        return self.graph.order

    @property
    def inbound(self) -> dict[str, list[str]]:
        """Node name → the nodes (or model inputs) it reads."""
        return self.graph.inbound

    # -- forward --------------------------------------------------------------------------------
    @property
    def takes_text(self) -> bool:
        return bool(self.layers) and isinstance(self.layers[0], TextVectorization)

    def prepare(self, x: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Validate the model input; returns (input name → array, node name → output given in
        advance: token ids in place of the tokenizer)."""
        if not self.layers:
            raise ModelStructureError(f"{type(self).__name__} has no layers yet: call load_keras_model() "
                                      "or load_weights() first")
        graph = self.graph
        if len(graph.inputs) > 1:
            return self.split_inputs(x, graph), {}
        name = graph.inputs[0]["name"]
        if self.takes_text:
            if isinstance(x, np.ndarray) and x.dtype.kind in "iu":
                first, then = graph.nodes[0], self.layer(graph.nodes[1].layer) if len(graph.nodes) > 1 else None
                if x.ndim != 2 and then is not None:
                    raise InputShapeError(then.name, type(then).__name__, "token ids of shape (batch, seq_len)",
                                          f"shape {x.shape}")
                return {name: x}, {first.name: x}  # token ids: skip the tokenizer
            return {name: x}, {}
        x = self.as_array(x)
        self.check_input(x, self.input_info.get("shape"), self.layer(graph.nodes[0].layer))
        return {name: x}, {}

    def as_array(self, x: Any) -> np.ndarray:
        """`x` as one NumPy array; InputShapeError for None or nested lists of uneven lengths."""
        expected = "an array (or nested lists) of numbers"
        if x is None:
            raise InputShapeError(self.name, type(self).__name__, expected, "None")
        try:
            return np.asarray(x)
        except ValueError:
            raise InputShapeError(self.name, type(self).__name__, expected,
                                  "nested lists of uneven lengths") from None

    @staticmethod
    def check_input(x: np.ndarray, expected: list | None, first: Layer) -> None:
        if expected:
            ok = x.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected[1:], x.shape[1:]))
            if not ok:
                want = "(" + ", ".join("batch" if e is None else str(e) for e in expected) + ")"
                raise InputShapeError(first.name, type(first).__name__, f"of shape {want}", f"shape {x.shape}")

    def split_inputs(self, x: Any, graph: Graph) -> dict[str, Any]:
        """Several inputs, given as a list in input order or a dict keyed by input name."""
        names = [i["name"] for i in graph.inputs]
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing:
                raise InputShapeError(self.name, type(self).__name__, f"inputs named {', '.join(names)}",
                                      f"no {', '.join(missing)}")
            x = [x[n] for n in names]
        if not isinstance(x, (list, tuple)) or len(x) != len(names):
            raise InputShapeError(self.name, type(self).__name__, f"a list of {len(names)} arrays "
                                  f"({', '.join(names)})", type(x).__name__)
        inputs = {}
        for info, value in zip(graph.inputs, x):
            value = np.asarray(value)
            readers = [n for n in graph.nodes if any(r.node == info["name"] for r in n.refs)]
            self.check_input(value, info.get("shape"), self.layer(readers[0].layer) if readers else self.layers[0])
            inputs[info["name"]] = value
        check_batches(inputs, self.name)
        return inputs

    def take(self, x: Any, rows: slice) -> Any:
        """Rows `rows` of a batch (of every input, for a model with several)."""
        if len(self.graph.inputs) > 1:
            if isinstance(x, dict):
                return {k: v[rows] for k, v in x.items()}
            return [v[rows] for v in x]
        return x[rows]

    def batch_length(self, x: Any) -> int:
        if len(self.graph.inputs) > 1:
            return len(next(iter(x.values())) if isinstance(x, dict) else x[0])
        return len(x)

    def forward_nodes(self, x: Any, training: bool = False,
                      tracer: Any = NULL_TRACER) -> Iterator[tuple[str, Layer, Any, Any]]:
        """Run the graph in topological order, yielding `(node name, layer, output, mask)` after each
        call; a recording `tracer` sees every call's input and output."""
        inputs, given = self.prepare(x)
        for node, layer, y, mask in run(self.graph, {l.name: l for l in self.layers}, inputs, training, tracer,
                                        given):
            yield node.name, layer, y, mask

    def forward_layers(self, x: Any, training: bool = False,
                       tracer: Any = NULL_TRACER) -> Iterator[tuple[Layer, Any, Any]]:
        """Run the model, yielding `(layer, output, mask)` after each layer call (a shared layer once per
        call); a recording `tracer` sees every layer's input and output."""
        for _, layer, y, mask in self.forward_nodes(x, training=training, tracer=tracer):
            yield layer, y, mask

    def forward(self, x: Any, training: bool = False, tracer: Any = NULL_TRACER) -> np.ndarray:
        """The model's output for a batch, e.g. probabilities `(batch, classes)`."""
        output = self.graph.output
        y = None
        for name, _, out, _ in self.forward_nodes(x, training=training, tracer=tracer):
            if name == output.node:
                y = out
        if y is None:  # the output is a model input, or a node given in advance
            inputs, given = self.prepare(x)
            y = {**inputs, **given}[output.node]
        return y[output.index] if isinstance(y, tuple) and output.index >= 0 else y

    def predict_proba(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities `(n, classes)`, computed in batches of `batch_size`."""
        if len(self.graph.inputs) == 1 and not self.takes_text:
            x = self.as_array(x)
            if x.ndim == 0:
                self.prepare(x)  # the first layer's shape error
        elif x is None:
            raise InputShapeError(self.name, type(self).__name__, "a batch of inputs", "None")
        n = self.batch_length(x)
        if n == 0:
            raise InputShapeError(self.name, type(self).__name__, "at least one sample", "an empty batch")
        parts = [self.forward_split(self.take(x, slice(i, i + batch_size))) for i in range(0, n, batch_size)]
        return np.concatenate(parts, axis=0)

    def forward_split(self, x: Any) -> np.ndarray:
        """`forward` of one batch, split between the cores: each part runs the whole model on its
        share of the samples, so a layer's output is read by the next layer while still in cache
        and the cores wait for each other once per batch, not once per layer
        (bench/bench_forward.py: +15% on the seed CNN)."""
        parts = over_batch(lambda lo, hi: self.forward(self.take(x, slice(lo, hi))), self.batch_length(x))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class ids `(n,)`."""
        return np.argmax(self.predict_proba(x, batch_size=batch_size), axis=-1)

    __call__ = forward

    # -- backward (models/gradients.py) ---------------------------------------------------------
    optimizer_state = None  # the optimizer's momenta / moments, kept between apply_gradients calls
    gradients = backprop.gradients
    apply_gradients = backprop.apply_gradients
    train_step = backprop.train_step

    # -- saving ---------------------------------------------------------------------------------
    def architecture(self) -> dict:
        """What `save_weights` stores beside the arrays; a model that is not a chain adds its `graph`."""
        arch = {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "name": self.name,
                "input": self.input_info, "meta": self.meta,
                "layers": [{"class_name": type(l).__name__, "config": l.get_config()} for l in self.layers]}
        if self._graph is not None and not self._graph.is_chain:
            arch["graph"] = self._graph.get_config()
        return arch

    def weight_arrays(self) -> dict[str, np.ndarray]:
        return {f"{l.name}/{w}": a for l in self.layers for w, a in zip(l.weight_shapes(), l.get_weights())}

    def save_weights(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write one `.npz`: every weight as `layer/weight` plus the architecture as JSON.

        The file appears whole or not at all (written beside it, then renamed); an existing file is
        replaced only with `overwrite=True`.
        """
        if os.path.basename(os.fspath(path)) in ("", ".", ".."):  # `dir/`, `.`, `dir/..`: no file name
            raise IsADirectoryError(21, "is a directory; give the weights file a name (e.g. model.npz)", str(path))
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory; give the weights file another name", str(path))
        if path.exists() and not overwrite:
            raise FileExistsError(f"'{path}' exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = self.weight_arrays()
        arch = self.architecture()
        check_architecture(arch, path)  # what load_scratch would refuse is not written
        check_runs(self, path)
        arrays[ARCH_KEY] = np.array(json.dumps(arch))
        write_atomically(path, lambda f: np.savez(f, **arrays), overwrite)
        return path

    def load_weights(self, path: str | Path) -> "ScratchModel":
        """Load a `.npz` from `save_weights` (no pickle, no TensorFlow).

        An empty model is built from the stored architecture; a model that already has layers
        gets the weights after every name and shape is checked. A file that is not what
        `save_weights` writes raises an NNTraceError naming it (ModelFileError, WeightMismatchError,
        UnsupportedLayerError).
        """
        path = Path(path)
        arrays = read_npz(path)
        arch = read_architecture(arrays.pop(ARCH_KEY, None), path)
        if not self.layers:
            self.layers = build_layers(arch["layers"], path)
            self._check_kind(self.layers)
            self.name, self.input_info = arch["name"], arch["input"]
            self.meta = dict(arch["meta"])
            self._graph = read_graph(arch, self.layers, path)
            self._set_weight_arrays(arrays, path)
            check_runs(self, path)
            return self
        self._set_weight_arrays(arrays, path)
        return self

    def _set_weight_arrays(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        expected = {f"{l.name}/{w}" for l in self.layers for w in l.weight_shapes()}
        missing, unexpected = sorted(expected - arrays.keys()), sorted(arrays.keys() - expected)
        if missing or unexpected:
            raise WeightMismatchError(
                f"'{path}' does not match model '{self.name}': "
                + "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                          f"unexpected {', '.join(unexpected)}" if unexpected else ""])))
        for layer in self.layers:
            current = dict(zip(layer.weight_shapes(), layer.get_weights())) if layer.weights else {}
            new = [arrays[f"{layer.name}/{w}"] for w in layer.weight_shapes()]
            for w, arr in zip(layer.weight_shapes(), new):
                check_weight_array(f"{layer.name}/{w}", arr, path)
                if w in current and current[w].shape != arr.shape:
                    raise WeightMismatchError(
                        f"'{path}': weight '{layer.name}/{w}' has shape {arr.shape}, "
                        f"model '{self.name}' expects {current[w].shape}")
            try:
                layer.set_weights(new)
            except WeightMismatchError as exc:
                raise WeightMismatchError(f"'{path}': {exc}") from exc
            except UnsupportedLayerError as exc:
                raise exc.in_file(str(path)) from None
            except NNTraceError as exc:
                raise ModelFileError(f"'{path}': {exc}") from exc
            except CONFIG_ERRORS as exc:
                raise ModelFileError(f"'{path}': layer '{layer.name}' ({type(layer).__name__}) cannot take the "
                                     f"weights stored for it ({type(exc).__name__}: {exc})") from exc

    def summary(self) -> str:
        lines = [f"{type(self).__name__} '{self.name}'"]
        lines += [f"  {l!r}" for l in self.layers]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.name}', {len(self.layers)} layers)"


#: What a layer's constructor or weight hook raises on a config that no Keras model has (a
#: hand-edited or damaged file); the configs Keras writes are checked by the layers themselves.
CONFIG_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError)
WEIGHTS_FILE = "an nntrace .npz weights file"


def write_atomically(path: Path, write: Callable[[BinaryIO], None], overwrite: bool) -> None:
    """Write `path` through a temporary file beside it, so that it appears whole or not at all; an
    existing file is replaced only when `overwrite`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if `path` appeared meanwhile, unlike a rename
        except FileExistsError:
            raise FileExistsError(f"'{path}' exists; pass overwrite=True to replace it") from None
        except OSError:  # a file system without hard links
            if path.exists():
                raise FileExistsError(f"'{path}' exists; pass overwrite=True to replace it") from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a `.npz` weights file, read without pickle; ModelFileError when it is not one."""
    check_zip_file(path, WEIGHTS_FILE)
    arrays = {}
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ModelFileError(f"'{path}' holds a single array, not {WEIGHTS_FILE}")
        with data:
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise ModelFileError(f"'{path}': array '{key}' is pickled Python objects, which nntrace "
                                             "never loads (unpickling can run code)") from exc
                    raise ModelFileError(f"'{path}': array '{key}' cannot be read ({exc})") from exc
    except ModelFileError:
        raise
    except (*ZIP_ERRORS, MemoryError) as exc:
        raise ModelFileError(f"'{path}' is not {WEIGHTS_FILE}: {type(exc).__name__}: {exc}") from exc
    return arrays


def check_weight_array(name: str, arr: np.ndarray, path: Path) -> None:
    """A vocabulary is an array of strings; every other weight real, finite numbers."""
    if name.endswith("/vocabulary"):
        if arr.dtype.kind != "U":
            raise ModelFileError(f"'{path}': weight '{name}' must be an array of strings, got dtype {arr.dtype}")
        return
    if arr.dtype.kind not in "fiu":
        raise ModelFileError(f"'{path}': weight '{name}' must hold real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ModelFileError(f"'{path}': weight '{name}' holds NaN or infinite values")


def read_architecture(raw: np.ndarray | None, path: Path) -> dict:
    """The architecture JSON stored in a weights file, checked field by field."""
    if raw is None:
        raise WeightMismatchError(f"'{path}' has no '{ARCH_KEY}' entry: not written by nntrace's save_weights")
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise ModelFileError(f"'{path}': '{ARCH_KEY}' must be one JSON string, got an array of dtype {raw.dtype} "
                             f"and shape {raw.shape}")
    try:
        arch = json.loads(str(raw), parse_constant=not_json)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"'{path}': the architecture is not valid JSON ({exc})") from exc
    if not isinstance(arch, dict):
        raise ModelFileError(f"'{path}': the architecture must be a JSON object, got {type(arch).__name__}")
    if arch.get("format") != FORMAT:
        raise WeightMismatchError(f"'{path}' is not an nntrace scratch model file")
    if arch.get("version") != FORMAT_VERSION:
        raise WeightMismatchError(f"'{path}' has format version {arch.get('version')}; this nntrace reads "
                                  f"version {FORMAT_VERSION}")
    check_architecture(arch, path)
    return {**arch, "input": {"shape": arch["input"].get("shape"), "dtype": arch["input"].get("dtype")},
            "meta": arch.get("meta", {})}


def not_json(constant: str) -> NoReturn:
    """NaN and Infinity, which Python's json reads but JSON does not have (nor a Keras config)."""
    raise ValueError(f"{constant} is not a JSON value")


def _field(arch: dict, key: str, ok: Callable[[Any], bool], expected: str, path: Path, where: str = "") -> Any:
    value = arch.get(key)
    if key not in arch or not ok(value):
        got = "nothing" if key not in arch else f"{json.dumps(value)[:60]}"
        raise ModelFileError(f"'{path}': the architecture's '{where}{key}' must be {expected}, got {got}")
    return value


#: Values one sample of a model's input may hold (256 MB of float32): a larger declared shape is
#: refused before anything is allocated for it.
MAX_SAMPLE_VALUES = 1 << 26


def sample_values(shape: list | tuple) -> int:
    """The values one sample of an input of `shape` `(batch, …)` holds (sizes left open count 1)."""
    return int(np.prod([d for d in shape[1:] if d is not None], dtype=object))


def check_text(value: str, what: str, path: Path) -> None:
    """ModelFileError when a string from the file holds a character a terminal would act on."""
    where = first_unprintable(value)
    if where is not None:
        raise ModelFileError(f"'{path}': the architecture's '{what}' holds a control character or a bidi "
                             f"override ({where}); names and labels must be printable text")


def check_architecture(arch: dict, path: Path) -> None:
    """ModelFileError naming the first field that is not what `save_weights` writes."""
    check_text(_field(arch, "name", lambda v: isinstance(v, str), "a string", path), "name", path)
    _field(arch, "kind", lambda v: isinstance(v, str), "a string", path)
    info = _field(arch, "input", lambda v: isinstance(v, dict), "an object with 'shape' and 'dtype'", path)
    shape = info.get("shape")
    if shape is not None and not (isinstance(shape, list) and shape and all(
            d is None or (type(d) is int and d > 0) for d in shape)):
        raise ModelFileError(f"'{path}': the architecture's 'input.shape' must be a list of positive integers "
                             f"or nulls, got {json.dumps(shape)[:60]}")
    if shape is not None and sample_values(shape) > MAX_SAMPLE_VALUES:
        raise ModelFileError(f"'{path}': the architecture's 'input.shape' {json.dumps(shape)[:60]} holds more than "
                             f"{MAX_SAMPLE_VALUES:,} values per sample; nntrace takes at most that many")
    if not isinstance(info.get("dtype"), (str, type(None))):
        raise ModelFileError(f"'{path}': the architecture's 'input.dtype' must be a string, got "
                             f"{json.dumps(info.get('dtype'))[:60]}")
    meta = arch.get("meta", {})
    if not isinstance(meta, dict):
        raise ModelFileError(f"'{path}': the architecture's 'meta' must be an object, got {json.dumps(meta)[:60]}")
    if "labels" in meta and meta["labels"] is not None:
        labels = _field(meta, "labels", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                        "a list of strings", path, "meta.")
        for k, label in enumerate(labels):
            check_text(label, f"meta.labels[{k}]", path)
    layers = _field(arch, "layers", lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of layers",
                    path)
    names = set()
    for i, spec in enumerate(layers):
        where = f"layers[{i}]."
        if not isinstance(spec, dict):
            raise ModelFileError(f"'{path}': the architecture's 'layers[{i}]' must be an object with "
                                 f"'class_name' and 'config', got {json.dumps(spec)[:60]}")
        check_text(_field(spec, "class_name", lambda v: isinstance(v, str), "a string", path, where),
                   where + "class_name", path)
        config = _field(spec, "config", lambda v: isinstance(v, dict), "an object", path, where)
        name = _field(config, "name", lambda v: isinstance(v, str) and v != "", "a non-empty string", path,
                      where + "config.")
        check_text(name, where + "config.name", path)
        if name in names:
            raise ModelFileError(f"'{path}': two layers are named '{name}'; layer names must be unique")
        names.add(name)


def read_graph(arch: dict, layers: list[Layer], path: Path) -> Graph | None:
    """The stored graph of layer calls (None for a chain); ModelFileError naming what is wrong."""
    if "graph" not in arch:
        return None
    try:
        return Graph.from_config(arch["graph"], {l.name for l in layers})
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"'{path}': the architecture's 'graph' is not what save_weights writes: {exc}") from exc


def probe_input(model: "ScratchModel") -> Any:
    """A one-sample input of the shape and type the model declares (zeros; "a" for text), or None
    when a size is left open (any size fits, so none can stand for all)."""
    if model.takes_text:
        return ["a"]
    arrays = []
    for info in model.graph.inputs:
        shape, dtype = info.get("shape"), str(info.get("dtype") or "float32")
        if not shape or any(d is None for d in shape[1:]):
            return None
        kind = np.str_ if "str" in dtype else np.int64 if "int" in dtype else np.float32
        arrays.append(np.full((1, *shape[1:]), "a" if kind is np.str_ else 0, kind))
    return arrays[0] if len(arrays) == 1 else arrays


def check_runs(model: "ScratchModel", path: Path) -> None:
    """ModelFileError unless the model built from `path` runs on one input of its declared shape:
    layer settings that no Keras model has (strides of 0, a scale of the wrong length, layers
    whose shapes do not follow) show here rather than in the middle of a trace."""
    for info in model.graph.inputs:  # a stored graph declares its own input shapes
        shape = info.get("shape") or []
        if sample_values(shape) > MAX_SAMPLE_VALUES:
            raise ModelFileError(f"'{path}': input '{info.get('name')}' of shape {tuple(shape)} holds more than "
                                 f"{MAX_SAMPLE_VALUES:,} values per sample; nntrace takes at most that many")
    try:
        x = probe_input(model)
        if x is None:
            return
        y = model.forward(x)
    except (*CONFIG_ERRORS, NNTraceError, MemoryError) as exc:
        raise ModelFileError(f"'{path}': the model it describes cannot run on an input of its own shape "
                             f"({type(exc).__name__}: {exc})") from exc
    labels = model.meta.get("labels")
    outputs = np.shape(y)[-1] if np.ndim(y) >= 2 else None
    if labels is not None and outputs is not None and len(labels) != outputs and (len(labels), outputs) != (2, 1):
        raise ModelFileError(f"'{path}': 'meta.labels' names {len(labels)} class{'' if len(labels) == 1 else 'es'}, but the model gives "
                             f"{outputs} outputs; there must be one label per output (or two for one sigmoid output)")


def build_layers(specs: list[dict], path: Path) -> list[Layer]:
    """Scratch layers from checked `{"class_name", "config"}` specs; errors name the file and layer."""
    layers = []
    for spec in specs:
        name, class_name = spec["config"]["name"], spec["class_name"]
        try:
            layer = build_layer(spec)
            layer.weight_shapes()
        except UnsupportedLayerError as exc:
            raise exc.in_file(str(path)) from None
        except NNTraceError:
            raise
        except CONFIG_ERRORS as exc:
            raise ModelFileError(f"'{path}': layer '{name}' ({class_name}) has a config nntrace cannot build "
                                 f"({type(exc).__name__}: {exc})") from exc
        layers.append(layer)
    return layers


def _class_names(layer: Layer) -> set[str]:
    names = {type(layer).__name__}
    for inner in (getattr(layer, "forward_layer", None), getattr(layer, "backward_layer", None)):
        if inner is not None:
            names.add(type(inner).__name__)
    return names


class CNNFromScratch(ScratchModel):
    """Image classifier: `(batch, h, w, c)` → probabilities."""

    kind = "cnn"
    requires = ("Conv2D", "Dense")


class RNNFromScratch(ScratchModel):
    """SimpleRNN (or GRU) text classifier: strings or token ids → probabilities."""

    kind = "rnn"
    requires = ("SimpleRNN", "GRU")


class LSTMFromScratch(ScratchModel):
    """LSTM text classifier: strings or token ids → probabilities."""

    kind = "lstm"
    requires = ("LSTM",)


def container_for(layers: list[Layer]) -> type[ScratchModel]:
    names = set().union(*(_class_names(l) for l in layers)) if layers else set()
    if "LSTM" in names:
        return LSTMFromScratch
    if names & {"SimpleRNN", "GRU"}:
        return RNNFromScratch
    if names & {"Conv2D", "Dense"}:
        return CNNFromScratch
    return ScratchModel


def load_scratch(path_or_model: Any) -> ScratchModel:
    """The right container for a `.npz` (no TensorFlow), a `.keras` path or a `keras.Model`."""
    if isinstance(path_or_model, (str, Path)):
        path = Path(path_or_model)
        if path.suffix not in (".npz", ".keras"):  # (a model file's own loader names its problems)
            if path.is_dir():
                raise IsADirectoryError(21, "is a directory, not a model file (.npz or .keras)", str(path))
            if not path.exists():
                raise FileNotFoundError(2, "no such model file", str(path))
            raise ModelStructureError(f"'{path}': expected a model file: a scratch model '.npz' or a Keras v3 '.keras'")
    if isinstance(path_or_model, (str, Path)) and Path(path_or_model).suffix == ".npz":
        generic = ScratchModel().load_weights(path_or_model)
        model = container_for(generic.layers)(generic.layers, generic.name, generic.input_info, generic.meta,
                                              generic._graph)
        return model
    layers, input_info, name, meta, graph = read_keras(path_or_model)
    return container_for(layers)(layers, name, input_info, meta, None if graph.is_chain else graph)


def read_keras(model_or_path: Any) -> tuple[list[Layer], dict, str, dict, Graph]:
    """(scratch layers, first input's description, name, meta, graph of layer calls) from a
    `keras.Model` or `.keras` path."""
    import keras

    from nntrace.models.convert import convert, load_keras
    from nntrace.models.variables import META_KEY, keras_variables

    model = load_keras(model_or_path)
    layers, input_info, graph = convert(model)
    meta = {"keras_version": keras.__version__, META_KEY: keras_variables(model, layers)}
    return layers, input_info, model.name, meta, graph
