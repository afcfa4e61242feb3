"""Keras's own per-layer outputs for an input, aligned with scratch layers by name."""
from __future__ import annotations

from typing import Any

import numpy as np


def keras_layer_outputs(model, x: Any) -> dict[str, Any]:
    """Every layer's output for `x`, keyed by layer name (one sub-model over all layer outputs).

    Text models take a list/array of strings (batch,) like the scratch side.
    """
    import keras

    from nntrace.models.convert import keras_chain
    from nntrace.models.train import keras_input

    chain = keras_chain(model)
    probe = keras.Model(model.inputs[0], [layer.output for layer in chain])
    outputs = probe(keras_input(np.asarray(x)) if np.asarray(x).dtype.kind in "UO" else x, training=False)
    if not isinstance(outputs, (list, tuple)) or len(chain) == 1:
        outputs = [outputs]
    return {layer.name: to_numpy(out) for layer, out in zip(chain, outputs)}


def to_numpy(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(to_numpy(v) for v in value)
    return np.asarray(value)
