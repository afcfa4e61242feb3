"""Keras model → scratch layers: the chain check, layer mapping and weight extraction.

Keras is imported lazily, inside the functions that need it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nntrace.layers import LAYER_CLASSES, SUPPORTED_LAYERS, Layer, ModelStructureError, UnsupportedLayerError

#: Keras layers that only exist in training or only reshape metadata, mapped to identity.
IDENTITY_LAYERS = {"InputLayer"}
#: Augmentation layers are identity at inference (Keras skips them when training=False).
INFERENCE_IDENTITY = {"RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast",
                      "RandomCrop", "GaussianNoise", "GaussianDropout", "SpatialDropout1D", "SpatialDropout2D"}


def load_keras(model_or_path: Any):
    """A `keras.Model` as is, or one loaded from a `.keras` path with `safe_mode=True`."""
    import keras

    if isinstance(model_or_path, keras.Model):
        return model_or_path
    path = Path(model_or_path)
    if not path.exists():
        raise FileNotFoundError(f"no Keras model file at '{path}'")
    if path.suffix != ".keras":
        raise ModelStructureError(f"'{path}': expected a Keras v3 '.keras' file")
    return keras.models.load_model(path, safe_mode=True, compile=False)


def keras_chain(model) -> list:
    """The model's layers in order, after checking they form one chain (input → … → output)."""
    import keras

    layers = [l for l in model.layers if type(l).__name__ not in IDENTITY_LAYERS]
    if isinstance(model, keras.Sequential):
        return layers
    if len(model.inputs) != 1:
        raise ModelStructureError(
            f"model '{model.name}' has {len(model.inputs)} inputs; only single-input chains are supported")
    prev, last_outputs = model.inputs[0], [model.inputs[0]]
    for layer in layers:
        nodes = layer._inbound_nodes
        # Keras passes a propagated mask as an extra input made by an op (e.g. not_equal), not a layer.
        inputs = [t for t in nodes[0].input_tensors
                  if isinstance(t._keras_history.operation, keras.layers.Layer)] if len(nodes) == 1 else []
        if len(nodes) != 1 or len(inputs) != 1 or inputs[0] is not prev:
            raise ModelStructureError(
                f"model '{model.name}' is not a single chain: layer '{layer.name}' does not take exactly "
                "the previous layer's output")
        last_outputs = nodes[0].output_tensors
        prev = last_outputs[0]
    if len(model.outputs) != len(last_outputs) or any(a is not b for a, b in zip(model.outputs, last_outputs)):
        raise ModelStructureError(f"model '{model.name}' is not a single chain: its output is not the last layer's")
    return layers


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


def build_layer(spec: dict) -> Layer:
    """A scratch layer from `{"class_name", "config"}`; UnsupportedLayerError when there is none."""
    class_name = spec["class_name"]
    cls = LAYER_CLASSES.get(class_name)
    if cls is None:
        raise UnsupportedLayerError(spec["config"].get("name", "?"), class_name, SUPPORTED_LAYERS)
    return cls.from_config(spec["config"])


def convert(model) -> tuple[list[Layer], dict]:
    """Scratch layers (weights set) for a Keras chain model, and the model's input description."""
    layers = []
    for klayer in keras_chain(model):
        spec = layer_spec(klayer)
        layer = build_layer(spec)
        layer.set_weights(layer_weights(klayer) if spec["class_name"] != "Identity" else [])
        layers.append(layer)
    tensor = model.inputs[0] if getattr(model, "inputs", None) else None
    input_info = {
        "shape": list(tensor.shape) if tensor is not None else None,
        "dtype": str(tensor.dtype) if tensor is not None else None,
    }
    return layers, input_info
