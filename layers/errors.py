"""Errors raised by scratch layers and models; each names the layer, the shapes and what is supported."""
from __future__ import annotations


class NNTraceError(Exception):
    """Base class of every error nntrace raises on purpose."""


class UnsupportedLayerError(NNTraceError):
    """A Keras layer (or a setting of one) that the scratch engine cannot reproduce."""

    def __init__(self, layer_name: str, class_name: str, supported: list[str], detail: str = "",
                 source: str = "") -> None:
        self.layer_name = layer_name
        self.class_name = class_name
        self.supported = list(supported)
        self.detail = detail
        what = f"layer '{layer_name}' of class {class_name} is not supported"
        if detail:
            what = f"layer '{layer_name}' ({class_name}): {detail}"
        where = f"'{source}': " if source else ""
        super().__init__(f"{where}{what}. Supported layers: {', '.join(sorted(self.supported))}")

    def in_file(self, source: str) -> "UnsupportedLayerError":
        """The same error, naming the file the layer came from."""
        return UnsupportedLayerError(self.layer_name, self.class_name, self.supported, self.detail, source)


class InputShapeError(NNTraceError, ValueError):
    """An input whose shape or dtype a layer cannot take."""

    def __init__(self, layer_name: str, class_name: str, expected: str, got: object) -> None:
        self.layer_name = layer_name
        self.class_name = class_name
        super().__init__(f"layer '{layer_name}' ({class_name}) expects input {expected}, got {got}")


class WeightMismatchError(NNTraceError, ValueError):
    """Weights whose names or shapes do not match the layers that should hold them."""


class ModelStructureError(NNTraceError, ValueError):
    """A Keras model whose layers do not form a single chain, or a malformed saved model."""


class ModelFileError(NNTraceError, ValueError):
    """A model or weights file that cannot be read: empty, truncated, not a zip archive, or holding
    something other than what nntrace writes (a malformed architecture, arrays of the wrong type)."""


class UnsafeModelError(ModelFileError):
    """A saved Keras model that holds Python code (a Lambda layer), which nntrace never runs."""
