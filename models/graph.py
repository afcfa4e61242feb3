"""A model as a graph of layer calls, run in topological order; a chain is the simplest graph.

Each `Node` is one call of a layer (a layer called twice, or shared, has two nodes: the first is
named after the layer, the k-th further call `name:k`). Tensors are `Ref`s: output `index` of a node,
or one of the model's inputs. Masks travel with the tensors as Keras's `compute_mask` says; a merge
or attention layer gets the masks of all its inputs.

No TensorFlow here: the graph is read from a Keras model by `models.convert` and from an `.npz`
architecture by `Graph.from_config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from nntrace.layers.base import Layer
from nntrace.layers.errors import InputShapeError, ModelStructureError
from nntrace.tracer.recorder import NULL_TRACER


@dataclass(frozen=True)
class Ref:
    """A tensor: output `index` of node `node` (or the model input named `node`); as the model's
    output, index -1 means all of the node's outputs (the pair a Bidirectional layer may return)."""

    node: str
    index: int = 0

    def to_config(self) -> dict:
        return {"node": self.node, "index": self.index}

    def __repr__(self) -> str:
        return self.node if self.index == 0 else f"{self.node}[{self.index}]"


@dataclass
class Node:
    """One call of layer `layer`: `layer(*args, **kwargs)`, with `Ref`s where tensors go.

    `args` hold Refs or lists of Refs (a merge layer takes one list); `kwargs` hold Refs (an
    attention layer's `key`, an explicit `mask`) or plain values (`use_causal_mask=True`).

    `scope` names the nested model the call came from ("" for the model itself) and `graph_mask`
    says that Keras hands this call the mask it worked out when the model was built rather than
    the one its input tensors carry (see `run`).
    """

    name: str
    layer: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    scope: str = ""
    graph_mask: bool = False

    @property
    def refs(self) -> list[Ref]:
        """Every tensor this call reads, in argument order."""
        return [r for r in flatten([self.args, list(self.kwargs.values())]) if isinstance(r, Ref)]

    @property
    def options(self) -> dict:
        """The keyword arguments that are not tensors (`use_causal_mask`, …)."""
        return {k: v for k, v in self.kwargs.items() if not any(isinstance(r, Ref) for r in flatten([v]))}

    def to_config(self) -> dict:
        config = {"name": self.name, "layer": self.layer, "args": to_config(self.args),
                  "kwargs": to_config(self.kwargs)}
        if self.scope:
            config["scope"] = self.scope
        if self.graph_mask:
            config["graph_mask"] = True
        return config

    def __repr__(self) -> str:
        return f"Node('{self.name}' ← {', '.join(map(repr, self.refs))})"


def flatten(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in flatten(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in flatten(item)]
    return [value]


def to_config(value: Any) -> Any:
    if isinstance(value, Ref):
        return {"$ref": value.to_config()}
    if isinstance(value, (list, tuple)):
        return [to_config(v) for v in value]
    if isinstance(value, dict):
        return {k: to_config(v) for k, v in value.items()}
    return value


def from_config(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$ref"}:
        ref = value["$ref"]
        if not (isinstance(ref, dict) and isinstance(ref.get("node"), str) and type(ref.get("index", 0)) is int
                and ref.get("index", 0) >= 0 and set(ref) <= {"node", "index"}):
            raise ValueError(f"a tensor reference must be {{'node': name, 'index': n ≥ 0}}, got {ref!r:.60}")
        return Ref(ref["node"], ref.get("index", 0))
    if isinstance(value, list):
        return [from_config(v) for v in value]
    if isinstance(value, dict):
        return {k: from_config(v) for k, v in value.items()}
    return value


class Graph:
    """Nodes in topological order, the model's named inputs and its one output.

    `inputs` describes each model input: `{"name", "shape", "dtype"}`. `scopes` maps each nested
    model's scope to whether Keras called it with the mask worked out when the model was built.
    """

    def __init__(self, inputs: list[dict], nodes: list[Node], output: Ref,
                 scopes: dict[str, bool] | None = None) -> None:
        self.inputs = inputs
        self.nodes = nodes
        self.output = output
        self.scopes = dict(scopes or {})
        self.check()

    @classmethod
    def chain(cls, layers: list[Layer], input_info: dict | None = None) -> "Graph":
        """Each layer takes the previous layer's output; the first takes the model input."""
        info = {"name": "input", **(input_info or {"shape": None, "dtype": None})}
        prev, nodes = Ref(info["name"]), []
        for layer in layers:
            nodes.append(Node(layer.name, layer.name, [prev]))
            prev = Ref(layer.name)
        return cls([info], nodes, Ref(prev.node, -1))

    def check(self) -> None:
        """ModelStructureError unless every node reads only inputs and earlier nodes, names are unique
        and the output is a tensor of the graph."""
        seen = {i["name"] for i in self.inputs}
        if len(seen) != len(self.inputs):
            raise ModelStructureError("two model inputs have the same name")
        for node in self.nodes:
            if node.name in seen:
                raise ModelStructureError(f"two graph nodes (or an input and a node) are named '{node.name}'")
            for ref in node.refs:
                if ref.node not in seen:
                    raise ModelStructureError(f"node '{node.name}' reads '{ref.node}', which is not an input or an "
                                              "earlier node (the nodes must be in topological order)")
            seen.add(node.name)
        if self.output.node not in seen:
            raise ModelStructureError(f"the model output '{self.output.node}' is not an input or a node")
        for node in self.nodes:
            if node.scope and any(s not in self.scopes for s in scope_path(node.scope)):
                raise ModelStructureError(f"node '{node.name}' is in scope '{node.scope}', which the graph does "
                                          "not list")

    # -- what the app shows ---------------------------------------------------------------------
    @property
    def order(self) -> list[str]:
        """Node names in the order they run (topological)."""
        return [n.name for n in self.nodes]

    @property
    def inbound(self) -> dict[str, list[str]]:
        """Node name → the names of the nodes (or model inputs) it reads, in argument order."""
        out = {}
        for node in self.nodes:
            names: list[str] = []
            for ref in node.refs:
                if ref.node not in names:
                    names.append(ref.node)
            out[node.name] = names
        return out

    @property
    def is_chain(self) -> bool:
        """One input, each node reading only the one before it (or the input), the last is the output."""
        prev = Ref(self.inputs[0]["name"]) if len(self.inputs) == 1 else None
        for node in self.nodes:
            if prev is None or node.args != [prev] or node.kwargs or node.name != node.layer or node.scope \
                    or node.graph_mask:
                return False
            prev = Ref(node.name)
        return prev is not None and prev.node == self.output.node and self.output.index in (0, -1)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    # -- saving ---------------------------------------------------------------------------------
    def get_config(self) -> dict:
        config = {"inputs": self.inputs, "nodes": [n.to_config() for n in self.nodes],
                  "output": self.output.to_config()}
        if self.scopes:
            config["scopes"] = self.scopes
        return config

    @classmethod
    def from_config(cls, config: Any, layer_names: set[str]) -> "Graph":
        """A graph from `get_config()`; ValueError naming the first field that is wrong."""
        if not isinstance(config, dict) or not {"inputs", "nodes", "output"} <= set(config) \
                or set(config) - {"inputs", "nodes", "output", "scopes"}:
            raise ValueError("the graph must be an object with 'inputs', 'nodes', 'output' (and 'scopes')")
        scopes = config.get("scopes", {})
        if not (isinstance(scopes, dict) and all(isinstance(k, str) and k and isinstance(v, bool)
                                                 for k, v in scopes.items())):
            raise ValueError("the graph's 'scopes' must map scope names to true or false")
        inputs = config["inputs"]
        if not (isinstance(inputs, list) and inputs and all(
                isinstance(i, dict) and isinstance(i.get("name"), str) and i["name"] for i in inputs)):
            raise ValueError("the graph's 'inputs' must be a non-empty list of objects with a 'name'")
        for i in inputs:
            shape = i.get("shape")
            if shape is not None and not (isinstance(shape, list) and all(
                    d is None or (type(d) is int and d > 0) for d in shape)):
                raise ValueError(f"input '{i['name']}' has a shape that is not a list of positive integers or nulls")
            if not isinstance(i.get("dtype"), (str, type(None))):
                raise ValueError(f"input '{i['name']}' has a dtype that is not a string")
        nodes = []
        if not isinstance(config["nodes"], list) or not config["nodes"]:
            raise ValueError("the graph's 'nodes' must be a non-empty list")
        for k, raw in enumerate(config["nodes"]):
            if not (isinstance(raw, dict) and {"name", "layer", "args", "kwargs"} <= set(raw)
                    and not set(raw) - {"name", "layer", "args", "kwargs", "scope", "graph_mask"}
                    and isinstance(raw["name"], str) and raw["name"] and isinstance(raw["layer"], str)
                    and isinstance(raw["args"], list) and isinstance(raw["kwargs"], dict)
                    and isinstance(raw.get("scope", ""), str) and isinstance(raw.get("graph_mask", False), bool)):
                raise ValueError(f"graph node {k} must be an object with 'name', 'layer', 'args' and 'kwargs' "
                                 "(and 'scope', 'graph_mask')")
            if raw["layer"] not in layer_names:
                raise ValueError(f"graph node '{raw['name']}' calls layer '{raw['layer']}', which is not a layer "
                                 "of the model")
            nodes.append(Node(raw["name"], raw["layer"], from_config(raw["args"]), from_config(raw["kwargs"]),
                              raw.get("scope", ""), raw.get("graph_mask", False)))
        raw_output = config["output"]
        whole = isinstance(raw_output, dict) and raw_output.get("index") == -1
        output = from_config({"$ref": {**raw_output, "index": 0} if whole else raw_output})
        output = Ref(output.node, -1) if whole else output
        try:
            return cls([{"name": i["name"], "shape": i.get("shape"), "dtype": i.get("dtype")} for i in inputs],
                       nodes, output, scopes)
        except ModelStructureError as exc:
            raise ValueError(str(exc)) from exc

    def __repr__(self) -> str:
        return f"Graph({len(self.inputs)} inputs, {len(self.nodes)} nodes → {self.output!r})"


# ---------------------------------------------------------------------------------------------
# Running a graph
# ---------------------------------------------------------------------------------------------
@dataclass
class Call:
    """What one node hands its layer: `layer.forward(x, mask, training, **options)`.

    `x` is one array, or a tuple for a layer that takes several (a merge's operands in order; an
    attention layer's `input_names`, None where not given); `mask` has the same structure.
    `graph_mask` is the mask Keras worked out for the same inputs when the model was built.
    """

    x: Any
    mask: Any
    graph_mask: Any
    options: dict


@dataclass
class Value:
    """A node's output, its mask, the mask Keras's built graph gives it, and the scope it was made in."""

    y: Any
    mask: Any = None
    graph_mask: Any = None
    scope: str = ""


def scope_path(scope: str) -> list[str]:
    """`a/b` → [`a`, `a/b`]: the nested scopes from the outside in."""
    parts = scope.split("/") if scope else []
    return ["/".join(parts[:k + 1]) for k in range(len(parts))]


def seen_from(scope: str, value: Value, scopes: dict[str, bool]) -> tuple[Any, Any]:
    """(mask, graph mask) of `value` as a call in `scope` sees them.

    Keras builds a nested model's graph from its own inputs, so a tensor crossing into or out of a
    nested model has no graph mask; inside, it carries its mask on, or the outer graph mask when
    Keras called the nested model with that (`scopes`).
    """
    if scope == value.scope:
        return value.mask, value.graph_mask
    inner, outer = scope_path(scope), scope_path(value.scope)
    common = 0
    while common < min(len(inner), len(outer)) and inner[common] == outer[common]:
        common += 1
    mask, graph = value.mask, value.graph_mask
    if len(outer) > common:  # leaving a nested model
        graph = None
    for entered in inner[common:]:
        mask, graph = (graph if scopes.get(entered) else mask), None
    return mask, graph


def bind(node: Node, layer: Layer, values: dict[str, Value], scopes: dict[str, bool] | None = None) -> Call:
    """The arrays and masks one node's layer gets, from the values computed so far."""
    scopes = scopes or {}

    def value(ref: Ref) -> tuple[Any, Any, Any]:
        v = values[ref.node]
        mask, graph = seen_from(node.scope, v, scopes)
        if isinstance(v.y, tuple):  # a layer with several outputs: pick one (and its mask)
            pick = lambda m: m[ref.index] if isinstance(m, tuple) else m  # noqa: E731
            return v.y[ref.index], pick(mask), pick(graph)
        return v.y, mask, graph

    def resolve(arg: Any) -> tuple[Any, Any, Any]:
        if isinstance(arg, Ref):
            return value(arg)
        if isinstance(arg, list) and arg and all(isinstance(a, Ref) for a in arg):
            triples = [value(a) for a in arg]
            return tuple(tuple(t[k] for t in triples) for k in range(3))
        raise ModelStructureError(f"node '{node.name}' passes {arg!r} where a tensor was expected")

    names = getattr(layer, "input_names", ())
    options = {k: v for k, v in node.options.items() if k not in names}
    if names:  # several named tensor arguments (MultiHeadAttention: query, value, key, attention_mask)
        given = dict(zip(names, node.args))
        given.update({k: v for k, v in node.kwargs.items() if k in names})
        triples = [resolve(given[n]) if given.get(n) is not None else (None, None, None) for n in names]
        x, mask, graph = (tuple(t[k] for t in triples) for k in range(3))
        return Call(x, mask, graph, options)
    if len(node.args) != 1:
        raise ModelStructureError(f"node '{node.name}' calls '{layer.name}' with {len(node.args)} positional "
                                  "arguments; it takes one tensor (or one list of tensors)")
    x, mask, graph = resolve(node.args[0])
    explicit = node.kwargs.get("mask")
    if isinstance(explicit, (Ref, list)):
        mask = resolve(explicit)[0]
        mask = graph = tuple(None if m is None else np.asarray(m, bool) for m in mask) \
            if isinstance(mask, tuple) else np.asarray(mask, bool)
    return Call(x, mask, graph, options)


def cleared_refs(node: Node, layer: Layer) -> list[Ref]:
    """The tensors whose masks a call removes (Keras's MultiHeadAttention does so to its query,
    value and key): later calls see them unmasked, though the built graph keeps their masks."""
    cleared = getattr(layer, "clears_input_masks", ())
    if not cleared:
        return []
    given = dict(zip(layer.input_names, node.args))
    given.update(node.kwargs)
    return [given[name] for name in cleared if isinstance(given.get(name), Ref)]


def same(a: Any, b: Any) -> bool:
    """The same mask objects (no copy needed to tell a graph mask from a propagated one)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(p is q for p, q in zip(a, b))
    return a is b


def run(graph: Graph, layers: dict[str, Layer], inputs: dict[str, Any], training: bool = False,
        tracer: Any = NULL_TRACER, given: dict[str, Any] | None = None) -> Iterator[tuple[Node, Layer, Any, Any]]:
    """Run `graph` in topological order, yielding `(node, layer, output, mask)` after each node.

    `inputs` maps each model input name to its array; `given` maps node names to outputs computed
    elsewhere (token ids in place of the tokenizer): those nodes are skipped. A recording `tracer`
    sees every node's input and output under the node's name.

    Masks follow Keras: each layer's `compute_mask` gives the mask its output carries. Keras also
    keeps the masks it worked out when the model was built; they differ only across a nested
    model's boundary, and a call marked `graph_mask` uses those.
    """
    values: dict[str, Value] = {name: Value(x) for name, x in inputs.items()}
    values.update({name: Value(y) for name, y in (given or {}).items()})
    last_use = {ref.node: k for k, node in enumerate(graph.nodes) for ref in node.refs}
    free_after: dict[int, list[str]] = {}
    for name, k in last_use.items():
        if name != graph.output.node:
            free_after.setdefault(k, []).append(name)
    for k, node in enumerate(graph.nodes):
        for name in free_after.get(k - 1, ()):
            values.pop(name, None)  # read by no later node: let it go
        if given and node.name in given:
            values[node.name].scope = node.scope
            continue
        layer = layers[node.layer]
        call = bind(node, layer, values, graph.scopes)
        used = call.graph_mask if node.graph_mask else call.mask
        if tracer.enabled:
            tracer.layer_start(layer, call.x, used, name=node.name, options=call.options)
        y = layer.forward(call.x, mask=used, training=training, **call.options)
        mask = layer.compute_mask(call.x, used)
        graph_mask = mask if node.graph_mask or same(call.mask, call.graph_mask) \
            else layer.compute_mask(call.x, call.graph_mask)
        values[node.name] = Value(y, mask, graph_mask, node.scope)
        for ref in cleared_refs(node, layer):
            cleared = values[ref.node]
            if isinstance(cleared.mask, tuple):
                cleared.mask = tuple(None if i == ref.index else m for i, m in enumerate(cleared.mask))
            else:
                cleared.mask = None
        if tracer.enabled:
            tracer.layer_end(layer, y, mask, name=node.name)
        yield node, layer, y, mask


def check_batches(inputs: dict[str, Any], model: str) -> None:
    """InputShapeError unless every input has the same batch size."""
    sizes = {name: len(x) for name, x in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise InputShapeError(model, "model inputs", "the same batch size for every input",
                              ", ".join(f"{k}: {v}" for k, v in sizes.items()))
