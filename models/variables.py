"""Keras variable paths and trainability for a scratch model's weights.

Every scratch weight is named `layer/weight` (its `.npz` key); Keras names the same variable by its
`path` (`sequential/conv2d_1/kernel`, `forward_lstm_1/lstm_cell/recurrent_kernel`), which depends
on how the Keras model was built. The paths read at conversion are kept in the model's
`meta["keras_variables"]` (so they travel in the `.npz`); a model without them gets the paths
Keras gives a model loaded from a `.keras` file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nntrace.layers import Layer
from nntrace.layers.errors import ModelFileError
from nntrace.layers.recurrent import Bidirectional, Recurrent

META_KEY = "keras_variables"
#: Scratch weights that are never Keras trainable variables.
NOT_TRAINABLE = {"moving_mean", "moving_variance", "vocabulary"}
#: The name Keras gives the cell inside each recurrent layer (`lstm/lstm_cell/kernel`).
CELL_NAMES: dict[str, str] = {"SimpleRNN": "simple_rnn_cell", "LSTM": "lstm_cell", "GRU": "gru_cell"}


@dataclass(frozen=True)
class Variable:
    """One scratch weight and the Keras variable it stands for."""

    layer: str      # scratch layer name
    weight: str     # scratch weight name (`kernel`, `forward_recurrent_kernel`, ...)
    path: str       # Keras `Variable.path`
    trainable: bool

    @property
    def key(self) -> str:
        """The `.npz` key, `layer/weight`."""
        return f"{self.layer}/{self.weight}"


def keras_variables(keras_model: Any, layers: list[Layer]) -> dict[str, dict]:
    """`{layer/weight: {"path", "trainable"}}` read from a Keras model and its converted scratch
    layers (the JSON kept in `meta["keras_variables"]`). Layers whose variables do not line up
    one to one with the scratch weights (a TextVectorization's vocabulary) are left out."""
    from nntrace.models.convert import keras_graph

    klayers = {knode.node.layer: knode.klayer for knode in keras_graph(keras_model).nodes}
    trainable = {id(v) for v in keras_model.trainable_variables}
    table = {}
    for layer in layers:
        klayer, names = klayers.get(layer.name), list(layer.weight_shapes())
        if klayer is None or not names or len(klayer.weights) != len(names) or "vocabulary" in names:
            continue
        for name, variable in zip(names, klayer.weights):
            table[f"{layer.name}/{name}"] = {"path": str(variable.path), "trainable": id(variable) in trainable}
    return table


def derived_path(layer: Layer, weight: str) -> str:
    """The path Keras gives this weight in a model loaded from a `.keras` file."""
    if isinstance(layer, Bidirectional):
        direction, _, inner_weight = weight.partition("_")
        inner = layer.forward_layer if direction == "forward" else layer.backward_layer
        return derived_path(inner, inner_weight)
    if isinstance(layer, Recurrent) and type(layer).__name__ in CELL_NAMES:
        return f"{layer.name}/{CELL_NAMES[type(layer).__name__]}/{weight}"
    return f"{layer.name}/{weight}"


def variables(model: Any) -> list[Variable]:
    """Every weight of `model` (a ScratchModel) with its Keras path and trainability, in layer and
    Keras weight order; ModelFileError when the stored table is malformed."""
    stored = model.meta.get(META_KEY)
    if stored is not None and not isinstance(stored, dict):
        raise ModelFileError(f"model '{model.name}': meta['{META_KEY}'] must map 'layer/weight' to "
                             f"{{path, trainable}}, got {type(stored).__name__}")
    stored = stored or {}
    out = []
    for layer in model.layers:
        for weight in layer.weight_shapes():
            key = f"{layer.name}/{weight}"
            entry = stored.get(key)
            if entry is None:
                out.append(Variable(layer.name, weight, derived_path(layer, weight), weight not in NOT_TRAINABLE))
                continue
            if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                    and isinstance(entry.get("trainable"), bool)):
                raise ModelFileError(f"model '{model.name}': the Keras variable stored for '{key}' must be "
                                     f"{{\"path\": str, \"trainable\": bool}}, got {str(entry)[:60]}")
            out.append(Variable(layer.name, weight, entry["path"], entry["trainable"]))
    return out


def trainable_variables(model: Any) -> list[Variable]:
    """The weights Keras trains (its `trainable_variables`), in the same order."""
    return [v for v in variables(model) if v.trainable]
