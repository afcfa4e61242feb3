"""Keras model → scratch layers: the graph of layer calls, layer mapping and weight extraction.

Keras is imported lazily, inside the functions that need it.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nntrace.layers import LAYER_CLASSES, SUPPORTED_LAYERS, Layer, ModelStructureError, UnsupportedLayerError
from nntrace.layers.errors import ModelFileError, UnsafeModelError
from nntrace.models.graph import Graph, Node, Ref, scope_path
from nntrace.tracer.sanitize import first_unprintable

#: Augmentation layers are identity at inference (Keras skips them when training=False).
INFERENCE_IDENTITY = {"RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast",
                      "RandomCrop", "GaussianNoise", "GaussianDropout"}


#: The most a model file may unpack to; nntrace's models are megabytes, so this only stops zip bombs.
MAX_UNPACKED_BYTES = 2 * 1024**3
#: What reading a damaged zip archive raises: one flipped byte can name an unknown compression
#: method (NotImplementedError) or mark a member encrypted (RuntimeError).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
              RuntimeError, zlib.error)


def check_zip_file(path: Path, what: str) -> None:
    """Check that `path` is a non-empty, readable zip archive (`.keras` and `.npz` files both are)
    whose members unpack to at most MAX_UNPACKED_BYTES; FileNotFoundError or ModelFileError."""
    if not path.exists():
        raise FileNotFoundError(f"no model file at '{path}' (expected {what})")
    if not path.is_file():
        raise ModelFileError(f"'{path}' is a directory, not {what}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"'{path}' is empty (0 bytes): expected {what}")
    try:
        with zipfile.ZipFile(path) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
    except ZIP_ERRORS as exc:
        raise ModelFileError(f"'{path}' is not {what}: it is not a readable zip archive (truncated or "
                             f"another kind of file: {exc})") from exc
    if unpacked > MAX_UNPACKED_BYTES:
        raise ModelFileError(f"'{path}' would unpack to {unpacked:,} bytes, more than the "
                             f"{MAX_UNPACKED_BYTES:,} bytes nntrace reads from {what}")


def keras_file_config(path: Path) -> dict:
    """The `config.json` of a `.keras` file, after checking the archive is whole."""
    what = "a Keras .keras model file"
    check_zip_file(path, what)
    try:
        with zipfile.ZipFile(path) as zf:
            damaged = zf.testzip()
            raw = zf.read("config.json") if "config.json" in zf.namelist() else None
    except ZIP_ERRORS as exc:
        raise ModelFileError(f"'{path}' is not {what}: its zip archive cannot be read ({exc})") from exc
    if damaged is not None:
        raise ModelFileError(f"'{path}' is damaged: its member '{damaged}' fails its checksum")
    if raw is None:
        raise ModelFileError(f"'{path}' is a zip archive without config.json: not {what}")
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested beyond reason
        raise ModelFileError(f"'{path}': config.json is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ModelFileError(f"'{path}': config.json does not describe a Keras model (expected an object with "
                             "a 'class_name')")
    return config


def layer_configs(config: Any) -> Iterator[dict]:
    """Every `{"class_name", "config"}` object nested anywhere in a Keras model config."""
    todo = [config]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            if isinstance(value.get("class_name"), str):
                yield value
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)


def check_no_code(config: dict, path: Path) -> None:
    """UnsafeModelError when a saved model holds Python code (a Lambda layer)."""
    for spec in layer_configs(config):
        if spec["class_name"] in ("Lambda", "__lambda__"):
            inner = spec.get("config")
            name = inner.get("name", "?") if isinstance(inner, dict) else "?"
            raise UnsafeModelError(
                f"'{path}': the model contains code (Lambda layer '{name}') that nntrace does not run, for "
                "safety; rebuild it with built-in Keras layers instead of a Lambda")


def keras_error_detail(exc: Exception, limit: int = 300) -> str:
    """The gist of a Keras load error: its first line, and when that only introduces the cause
    ("… Example error message for object <Dense …>:") the cause's first sentence too."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    detail = lines[0]
    if detail.endswith(":") and len(lines) > 1:
        cause = lines[1].split(" Target variable:")[0]
        detail = f"{detail} {cause}"
    return detail if len(detail) <= limit else detail[:limit - 1] + "…"


def load_keras(model_or_path: Any):
    """A `keras.Model` as is, or one loaded from a `.keras` path with `safe_mode=True`.

    The file is checked first (a readable zip holding `config.json`, no Lambda layers); whatever
    Keras then reports about the file becomes a ModelFileError naming it.
    """
    import keras

    if isinstance(model_or_path, keras.Model):
        return model_or_path
    path = Path(model_or_path)
    if path.suffix != ".keras":
        if not path.exists():
            raise FileNotFoundError(f"no Keras model file at '{path}'")
        raise ModelStructureError(f"'{path}': expected a Keras v3 '.keras' file")
    check_no_code(keras_file_config(path), path)
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras reports a damaged model with many exception types
        detail = keras_error_detail(exc)
        if "safe_mode" in str(exc):
            raise UnsafeModelError(f"'{path}': the model contains code that nntrace does not run, for safety "
                                   f"(Keras safe mode: {detail})") from exc
        raise ModelFileError(f"'{path}': Keras cannot load this model ({type(exc).__name__}: {detail})") from exc


@dataclass
class KerasNode:
    """One call of a Keras layer in the flattened graph: the scratch `Node` and the Keras layer."""

    node: Node
    klayer: Any


@dataclass
class KerasGraph:
    """A Keras model flattened into layer calls (nested models expanded), in topological order."""

    inputs: list[tuple[str, Any]]      # (name, Keras input tensor)
    nodes: list[KerasNode]
    output: Ref
    layer_names: dict[int, str] = field(default_factory=dict)  # id(Keras layer) → unique scratch name
    scopes: dict[str, bool] = field(default_factory=dict)      # nested call → called with the graph's mask

    def graph(self) -> Graph:
        used = {s for k in self.nodes for s in scope_path(k.node.scope)}
        return Graph([{"name": name, "shape": list(t.shape), "dtype": str(t.dtype)} for name, t in self.inputs],
                     [k.node for k in self.nodes], self.output, {s: v for s, v in self.scopes.items() if s in used})


@dataclass(frozen=True)
class OpTensor:
    """A tensor made by a Keras operation that is not a layer (a mask computation, `keras.ops.add`…)."""

    op: Any


#: Call arguments that carry masks; Keras fills them in from the tensors' own masks.
MASK_ARGUMENTS = ("mask", "query_mask", "value_mask", "key_mask")


def keras_graph(model) -> KerasGraph:
    """Flatten a Keras model (Sequential or functional, nested models expanded) into layer calls.

    A layer called more than once gets one node per call (`name`, then `name:1`, …). Masks that
    Keras propagates on its own are left out (the scratch layers compute them again); an
    operation that is not a layer (`keras.ops.*` on tensors) raises UnsupportedLayerError.
    """
    import keras

    fn = functional_of(model)
    histories = [t._keras_history for t in fn.outputs]
    if len(fn.outputs) > 1 and not (len({id(h.operation) for h in histories}) == 1
                                    and len({h.node_index for h in histories}) == 1
                                    and [h.tensor_index for h in histories] == list(range(len(histories)))):
        raise ModelStructureError(f"model '{model.name}' has {len(fn.outputs)} outputs; nntrace shows models "
                                  "with one output (or the pair one Bidirectional layer returns)")
    graph = KerasGraph([], [], Ref(""))
    refs: dict[int, Any] = {}
    for t in fn.inputs:
        name = t._keras_history.operation.name
        graph.inputs.append((name, t))
        refs[id(t)] = Ref(name)
    calls: dict[str, int] = {}
    outputs = expand(fn, refs, graph, calls, keras)
    graph.output = outputs[0] if len(outputs) == 1 or not isinstance(outputs[0], Ref) else Ref(outputs[0].node, -1)
    graph.nodes = reachable(graph)
    return graph


def functional_of(model):
    """The functional graph behind a model (a Sequential keeps one once built)."""
    import keras

    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise ModelStructureError(f"model '{model.name}' is not built: give it a keras.Input first")
        return fn
    if not hasattr(model, "_nodes_by_depth"):
        raise ModelStructureError(f"model '{model.name}' ({type(model).__name__}) is a subclassed model; nntrace "
                                  "reads Sequential and functional models")
    return model


def expand(fn, refs: dict[int, Any], graph: KerasGraph, calls: dict[str, int], keras, scope: str = "") -> list:
    """Add the layer calls of functional `fn` to `graph`, its input tensors bound by `refs`; returns
    the Refs (or OpTensors) of its outputs. The calls of a nested model get their own `scope`."""
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        for knode in fn._nodes_by_depth[depth]:
            op = knode.operation
            if op is None or knode.is_input:
                continue
            if not isinstance(op, keras.layers.Layer):  # an op: its outputs are not layer outputs
                for t in knode.outputs:
                    refs[id(t)] = OpTensor(op)
                continue
            args, kwargs, graph_mask = call_arguments(knode, op, refs, keras)
            if isinstance(op, keras.Model):
                inner = functional_of(op)
                bound = [a for a in flatten_args(args)]
                if kwargs.keys() - {"mask"} or len(bound) != len(inner.inputs):
                    raise ModelStructureError(f"nested model '{op.name}' is called with {len(bound)} tensors "
                                              f"{'and options ' + ', '.join(kwargs) if kwargs else ''}; nntrace "
                                              f"expands nested models called on their {len(inner.inputs)} inputs")
                inner_refs = dict(refs)
                inner_refs.update({id(t): r for t, r in zip(inner.inputs, bound)})
                k = calls.get("\0" + op.name, 0)
                calls["\0" + op.name] = k + 1
                inner_scope = "/".join(filter(None, [scope, op.name if k == 0 else f"{op.name}:{k}"]))
                graph.scopes[inner_scope] = graph_mask
                outputs = expand(inner, inner_refs, graph, calls, keras, inner_scope)
                for t, r in zip(knode.outputs, outputs):
                    refs[id(t)] = r
                continue
            layer_name = scratch_layer_name(op, fn, graph)
            k = calls.get(layer_name, 0)
            calls[layer_name] = k + 1
            name = layer_name if k == 0 else f"{layer_name}:{k}"
            graph.nodes.append(KerasNode(Node(name, layer_name, args, kwargs, scope, graph_mask), op))
            for i, t in enumerate(knode.outputs):
                refs[id(t)] = Ref(name, i)
    return [refs.get(id(t), OpTensor(t._keras_history.operation)) for t in fn.outputs]


def flatten_args(args: list) -> list:
    out = []
    for a in args:
        out.extend(flatten_args(a) if isinstance(a, (list, tuple)) else [a])
    return out


def scratch_layer_name(klayer, fn, graph: KerasGraph) -> str:
    """The layer's own name, or `model/name` when a nested model's layer shares a name with another."""
    key = id(klayer)
    if key not in graph.layer_names:
        taken = set(graph.layer_names.values()) | {name for name, _ in graph.inputs}
        name = klayer.name if klayer.name not in taken else f"{fn.name}/{klayer.name}"
        while name in taken:
            name += "_"
        graph.layer_names[key] = name
    return graph.layer_names[key]


def call_arguments(knode, klayer, refs: dict[int, Any], keras) -> tuple[list, dict, bool]:
    """The call's positional and keyword arguments with Refs for tensors, and whether Keras recorded
    the mask it worked out when building the model (it then passes that mask, not the one the
    input carries). Those masks are dropped (the scratch side works them out again), as are
    `training` and options left at their defaults."""
    from keras.src.backend import KerasTensor

    def convert(value: Any) -> Any:
        if isinstance(value, KerasTensor):
            return refs.get(id(value), OpTensor(value._keras_history.operation))
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    args = [convert(a) for a in knode.arguments.args]
    kwargs, graph_mask = {}, False
    for key, value in knode.arguments.kwargs.items():
        if key == "training" or value is None or (key.startswith("return_") and value is False):
            continue
        value = convert(value)
        if key in MASK_ARGUMENTS:
            parts = [v for v in flatten_args([value]) if v is not None]
            if all(isinstance(v, OpTensor) for v in parts):
                graph_mask = graph_mask or bool(parts)
                continue  # the mask Keras propagated on its own: the scratch side computes it again
            if key != "mask" or not all(isinstance(v, Ref) for v in parts):
                raise UnsupportedLayerError(klayer.name, type(klayer).__name__, SUPPORTED_LAYERS,
                                            f"an explicit '{key}' argument is not supported")
        if not json_value(value):
            raise UnsupportedLayerError(klayer.name, type(klayer).__name__, SUPPORTED_LAYERS,
                                        f"is called with {key}={value!r:.40}, which nntrace cannot store")
        kwargs[key] = value
    return args, kwargs, graph_mask


def json_value(value: Any) -> bool:
    if isinstance(value, (Ref, OpTensor)) or value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and json_value(v) for k, v in value.items())
    return False


def reachable(graph: KerasGraph) -> list[KerasNode]:
    """The nodes the output depends on, in order; an operation on the way raises UnsupportedLayerError."""
    by_name = {k.node.name: k for k in graph.nodes}
    needed: set[str] = set()
    todo = [graph.output]
    while todo:
        ref = todo.pop()
        if isinstance(ref, OpTensor):
            op = ref.op
            raise UnsupportedLayerError(op.name, type(op).__name__, SUPPORTED_LAYERS,
                                        "an operation on tensors (keras.ops), not a layer, is not supported")
        if ref.node in needed or ref.node not in by_name:
            continue
        needed.add(ref.node)
        knode = by_name[ref.node]
        todo.extend(v for v in flatten_args([knode.node.args, list(knode.node.kwargs.values())])
                    if isinstance(v, (Ref, OpTensor)))
    return [k for k in graph.nodes if k.node.name in needed]


def layer_weights(klayer) -> list[np.ndarray]:
    """A Keras layer's arrays in the order its scratch twin's `set_weights` takes."""
    if type(klayer).__name__ == "TextVectorization":
        return [np.array(klayer.get_vocabulary(), dtype=np.str_)]
    return [np.asarray(w) for w in klayer.get_weights()]


def layer_spec(klayer) -> dict:
    """`{"class_name", "config"}` for a Keras layer, mapped to what the scratch side rebuilds."""
    class_name = type(klayer).__name__
    config = klayer.get_config()
    if class_name in INFERENCE_IDENTITY:
        return {"class_name": "Identity", "config": {"name": config["name"], "keras_class": class_name}}
    return {"class_name": class_name, "config": config}


def build_shapes(klayer) -> dict[str, tuple]:
    """The input shapes a Keras layer was built for, by argument name (`input_shape`, or a
    MultiHeadAttention's `query_shape`, `value_shape`, `key_shape`); empty when it does not say."""
    try:
        config = klayer.get_build_config() or {}
    except Exception:  # noqa: BLE001 — a layer that cannot say is checked when it runs
        return {}
    shapes = config.get("shapes_dict") or ({"input_shape": config["input_shape"]} if "input_shape" in config else {})
    return {k: tuple(v) for k, v in shapes.items() if isinstance(v, (list, tuple))}


def build_layer(spec: dict) -> Layer:
    """A scratch layer from `{"class_name", "config"}`; UnsupportedLayerError when there is none."""
    class_name = spec["class_name"]
    cls = LAYER_CLASSES.get(class_name)
    if cls is None:
        raise UnsupportedLayerError(spec["config"].get("name", "?"), class_name, SUPPORTED_LAYERS)
    return cls.from_config(spec["config"])


def check_call(node: Node, layer: Layer, class_name: str) -> None:
    """UnsupportedLayerError for a call argument the scratch layer does not take (an RNN's
    `initial_state`, an option it has no maths for)."""
    names = getattr(layer, "input_names", ())
    for key, value in node.kwargs.items():
        tensor = any(isinstance(v, Ref) for v in flatten_args([value]))
        if (tensor and key not in names and key != "mask") or (not tensor and key not in layer.call_options):
            raise UnsupportedLayerError(layer.name, class_name, SUPPORTED_LAYERS,
                                        f"is called with {key}=…, which nntrace does not support")
    if len(node.args) > max(1, len(names)):
        raise UnsupportedLayerError(layer.name, class_name, SUPPORTED_LAYERS,
                                    f"is called with {len(node.args)} positional arguments")


def convert(model) -> tuple[list[Layer], dict, Graph]:
    """Scratch layers (weights set) for a Keras model in the order they are first called, the first
    input's description, and the graph of their calls."""
    kgraph = keras_graph(model)
    layers, built = [], {}
    for knode in kgraph.nodes:
        name = knode.node.layer
        where = first_unprintable(name)
        if where is not None:
            raise ModelStructureError(f"a {type(knode.klayer).__name__} layer's name holds a control character "
                                      f"or a bidi override ({where}); nntrace needs layer names of printable text")
        if name not in built:
            spec = layer_spec(knode.klayer)
            spec["config"]["name"] = name
            layer = build_layer(spec)
            layer.check_build_shapes(build_shapes(knode.klayer))
            layer.set_weights(layer_weights(knode.klayer) if spec["class_name"] != "Identity" else [])
            layers.append(layer)
            built[name] = layer
        check_call(knode.node, built[name], type(knode.klayer).__name__)
    graph = kgraph.graph()
    first = graph.inputs[0]
    return layers, {"shape": first["shape"], "dtype": first["dtype"]}, graph
