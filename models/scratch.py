"""Scratch model containers: a chain of scratch layers with Keras's masking, save/load without TF."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nntrace.layers import (InputShapeError, Layer, ModelStructureError, TextVectorization, WeightMismatchError)
from nntrace.models.convert import build_layer
from nntrace.tracer.recorder import NULL_TRACER

FORMAT = "nntrace-scratch"
FORMAT_VERSION = 1
ARCH_KEY = "__architecture__"


class ScratchModel:
    """A chain of scratch layers that reproduces a Keras model's forward pass.

    Build one with `load_keras_model(model_or_path)` or `load_weights(path)` on an `.npz` written by
    `save_weights`. `forward(x)` returns the last layer's output (probabilities for the shipped
    models): images `(batch, h, w, c)`; text models take token ids `(batch, seq_len)` or, when the
    model starts with TextVectorization, raw strings `(batch,)`.
    """

    kind = "model"
    requires: tuple[str, ...] = ()  # a layer class one of which this container expects

    def __init__(self, layers: list[Layer] | None = None, name: str = "model",
                 input_info: dict | None = None, meta: dict | None = None) -> None:
        self.layers: list[Layer] = list(layers or [])
        self.name = name
        self.input_info = input_info or {"shape": None, "dtype": None}
        self.meta: dict[str, Any] = dict(meta or {})

    # -- building -------------------------------------------------------------------------------
    def load_keras_model(self, model_or_path: Any) -> "ScratchModel":
        """Read layers and weights from a `keras.Model` or a `.keras` file (safe mode)."""
        layers, input_info, name, meta = read_keras(model_or_path)
        self._check_kind(layers)
        self.layers, self.input_info, self.name = layers, input_info, name
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
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named '{name}'; layers: {', '.join(l.name for l in self.layers)}")

    # -- forward --------------------------------------------------------------------------------
    @property
    def takes_text(self) -> bool:
        return bool(self.layers) and isinstance(self.layers[0], TextVectorization)

    def prepare(self, x: Any) -> tuple[Any, int]:
        """Validate the model input; returns (input, index of the first layer to run)."""
        if not self.layers:
            raise ModelStructureError(f"{type(self).__name__} has no layers yet: call load_keras_model() "
                                      "or load_weights() first")
        if self.takes_text:
            if isinstance(x, np.ndarray) and x.dtype.kind in "iu":
                if x.ndim != 2:
                    raise InputShapeError(self.layers[1].name, type(self.layers[1]).__name__,
                                          "token ids of shape (batch, seq_len)", f"shape {x.shape}")
                return x, 1  # token ids: skip the tokenizer
            return x, 0
        x = np.asarray(x)
        expected = self.input_info.get("shape")
        if expected:
            ok = x.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected[1:], x.shape[1:]))
            if not ok:
                want = "(" + ", ".join("batch" if e is None else str(e) for e in expected) + ")"
                first = self.layers[0]
                raise InputShapeError(first.name, type(first).__name__, f"of shape {want}", f"shape {x.shape}")
        return x, 0

    def forward_layers(self, x: Any, training: bool = False,
                       tracer: Any = NULL_TRACER) -> Iterator[tuple[Layer, Any, Any]]:
        """Run the chain, yielding `(layer, output, mask)` after each layer; a recording `tracer`
        sees every layer's input and output."""
        x, start = self.prepare(x)
        mask = None
        for layer in self.layers[start:]:
            if tracer.enabled:
                tracer.layer_start(layer, x, mask)
            y = layer.forward(x, mask=mask, training=training)
            mask = layer.compute_mask(x, mask)
            x = y
            if tracer.enabled:
                tracer.layer_end(layer, y, mask)
            yield layer, x, mask

    def forward(self, x: Any, training: bool = False, tracer: Any = NULL_TRACER) -> np.ndarray:
        """The last layer's output for a batch, e.g. probabilities `(batch, classes)`."""
        out = None
        for _, out, _ in self.forward_layers(x, training=training, tracer=tracer):
            pass
        return out

    def predict_proba(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities `(n, classes)`, computed in batches of `batch_size`."""
        n = len(x)
        if n == 0:
            raise InputShapeError(self.name, type(self).__name__, "at least one sample", "an empty batch")
        parts = [self.forward(x[i:i + batch_size]) for i in range(0, n, batch_size)]
        return np.concatenate(parts, axis=0)

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class ids `(n,)`."""
        return np.argmax(self.predict_proba(x, batch_size=batch_size), axis=-1)

    __call__ = forward

    # -- saving ---------------------------------------------------------------------------------
    def architecture(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "name": self.name,
                "input": self.input_info, "meta": self.meta,
                "layers": [{"class_name": type(l).__name__, "config": l.get_config()} for l in self.layers]}

    def weight_arrays(self) -> dict[str, np.ndarray]:
        return {f"{l.name}/{w}": a for l in self.layers for w, a in zip(l.weight_shapes(), l.get_weights())}

    def save_weights(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write one `.npz`: every weight as `layer/weight` plus the architecture as JSON."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        if path.exists() and not overwrite:
            raise FileExistsError(f"'{path}' exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = self.weight_arrays()
        arrays[ARCH_KEY] = np.array(json.dumps(self.architecture()))
        np.savez(path, **arrays)
        return path

    def load_weights(self, path: str | Path) -> "ScratchModel":
        """Load a `.npz` from `save_weights` (no pickle, no TensorFlow).

        An empty model is built from the stored architecture; a model that already has layers
        gets the weights after every name and shape is checked.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no scratch weights file at '{path}'")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError) as exc:
            raise WeightMismatchError(f"'{path}' is not a readable .npz weights file: {exc}") from exc
        arch = read_architecture(arrays.pop(ARCH_KEY, None), path)
        if not self.layers:
            self.layers = [build_layer(spec) for spec in arch["layers"]]
            self._check_kind(self.layers)
            self.name, self.input_info = arch["name"], arch["input"]
            self.meta = dict(arch.get("meta", {}))
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
                if w in current and current[w].shape != arr.shape:
                    raise WeightMismatchError(
                        f"'{path}': weight '{layer.name}/{w}' has shape {arr.shape}, "
                        f"model '{self.name}' expects {current[w].shape}")
            try:
                layer.set_weights(new)
            except WeightMismatchError as exc:
                raise WeightMismatchError(f"'{path}': {exc}") from exc

    def summary(self) -> str:
        lines = [f"{type(self).__name__} '{self.name}'"]
        lines += [f"  {l!r}" for l in self.layers]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.name}', {len(self.layers)} layers)"


def read_architecture(raw: np.ndarray | None, path: Path) -> dict:
    if raw is None:
        raise WeightMismatchError(f"'{path}' has no '{ARCH_KEY}' entry: not written by nntrace's save_weights")
    arch = json.loads(str(raw))
    if arch.get("format") != FORMAT:
        raise WeightMismatchError(f"'{path}' is not an nntrace scratch model file")
    if arch.get("version") != FORMAT_VERSION:
        raise WeightMismatchError(f"'{path}' has format version {arch.get('version')}; this nntrace reads "
                                  f"version {FORMAT_VERSION}")
    return arch


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
    """SimpleRNN text classifier: strings or token ids → probabilities."""

    kind = "rnn"
    requires = ("SimpleRNN",)


class LSTMFromScratch(ScratchModel):
    """LSTM text classifier: strings or token ids → probabilities."""

    kind = "lstm"
    requires = ("LSTM",)


def container_for(layers: list[Layer]) -> type[ScratchModel]:
    names = set().union(*(_class_names(l) for l in layers)) if layers else set()
    if "LSTM" in names:
        return LSTMFromScratch
    if "SimpleRNN" in names:
        return RNNFromScratch
    if names & {"Conv2D", "Dense"}:
        return CNNFromScratch
    return ScratchModel


def load_scratch(path_or_model: Any) -> ScratchModel:
    """The right container for a `.npz` (no TensorFlow), a `.keras` path or a `keras.Model`."""
    if isinstance(path_or_model, (str, Path)) and Path(path_or_model).suffix == ".npz":
        generic = ScratchModel().load_weights(path_or_model)
        model = container_for(generic.layers)(generic.layers, generic.name, generic.input_info, generic.meta)
        return model
    layers, input_info, name, meta = read_keras(path_or_model)
    return container_for(layers)(layers, name, input_info, meta)


def read_keras(model_or_path: Any) -> tuple[list[Layer], dict, str, dict]:
    """(scratch layers, input description, name, meta) from a `keras.Model` or `.keras` path."""
    import keras

    from nntrace.models.convert import convert, load_keras

    model = load_keras(model_or_path)
    layers, input_info = convert(model)
    return layers, input_info, model.name, {"keras_version": keras.__version__}
