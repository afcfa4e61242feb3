"""Keras's own per-layer outputs for an input, aligned with scratch layers by name."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np


def keras_layer_outputs(model, x: Any) -> dict[str, Any]:
    """Every layer call's output for `x`, keyed by graph node name (the layer's name; `name:k` for a
    shared layer's further calls).

    Text models take a list/array of strings (batch,) like the scratch side; a model with several
    inputs a list of arrays in input order (or a dict keyed by input name).
    """
    return {name: out for name, (out, _) in keras_node_outputs(model, x).items()}


def keras_node_outputs(model, x: Any) -> dict[str, tuple[Any, Any]]:
    """Node name → (Keras's output, the mask Keras attached to it, or None), in the order they run.

    The model runs once, as Keras runs it (inference mode); every layer of the flattened graph
    (`models.convert.keras_graph`, nested models expanded) records what its calls return, the k-th
    call of a layer being node `name:k`.
    """
    import keras
    from keras.src import backend

    from nntrace.models.convert import keras_graph

    graph = keras_graph(model)
    names = [name for name, _ in graph.inputs]
    if isinstance(x, dict):
        x = [x[n] for n in names]
    given = [keras_tensor_of(v) for v in x] if len(names) > 1 else keras_tensor_of(x)
    with recorded_calls(graph) as calls:
        model(given, training=False)
    out = {}
    for knode in graph.nodes:
        y = node_output(calls, knode)
        if isinstance(y, (list, tuple)):
            out[knode.node.name] = (tuple(to_numpy(v) for v in y), None)
        else:
            mask = backend.get_keras_mask(y)
            out[knode.node.name] = (to_numpy(y), None if mask is None else np.asarray(keras.ops.convert_to_numpy(mask)))
    return out


@contextmanager
def recorded_calls(graph) -> Iterator[dict[int, list]]:
    """While the block runs, every layer of `graph` (`models.convert.keras_graph`) records what its
    calls return: `calls[id(keras layer)]` lists them in call order. The layers' own `call` is back
    afterwards."""
    calls: dict[int, list] = {}
    layers = {id(k.klayer): k.klayer for k in graph.nodes}

    def recording(klayer):
        call = klayer.call

        def record(*args, **kwargs):
            out = call(*args, **kwargs)
            calls.setdefault(id(klayer), []).append(out)
            return out
        return record

    own = {key: vars(klayer).get("call") for key, klayer in layers.items()}
    try:
        for klayer in layers.values():
            klayer.call = recording(klayer)
        yield calls
    finally:
        for key, klayer in layers.items():
            if own[key] is None:
                del klayer.call  # back to the class's own method
            else:
                klayer.call = own[key]


def node_output(calls: dict[int, list], knode) -> Any:
    """What a graph node's call returned: the k-th call of its layer for node `name:k`."""
    node = knode.node
    k = int(node.name[len(node.layer) + 1:]) if node.name != node.layer else 0
    return calls[id(knode.klayer)][k]


def keras_tensor_of(x: Any):
    """A model input as Keras takes it: strings as a `(n, 1)` string tensor, arrays as tensors."""
    import keras

    from nntrace.models.train import keras_input

    arr = np.asarray(x)
    if arr.dtype.kind in "UO":
        return keras_input(arr)
    return keras.ops.convert_to_tensor(arr)


def to_numpy(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(to_numpy(v) for v in value)
    return np.asarray(value)
