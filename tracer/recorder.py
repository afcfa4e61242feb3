"""Tracers: the null tracer (off = free) and the recorder that keeps one sample's layer-level events."""
from __future__ import annotations

from typing import Any

import numpy as np

from nntrace.tracer.events import Event, LayerEnd, LayerStart


class NullTracer:
    """Tracing off: `enabled` is False and layers check it before copying or formatting anything."""

    enabled = False

    def layer_start(self, layer, x, mask, name=None, options=None) -> None:  # pragma: no cover - never called
        pass

    def layer_end(self, layer, y, mask, name=None) -> None:  # pragma: no cover
        pass


NULL_TRACER = NullTracer()


class Recorder:
    """Records LayerStart/LayerEnd for sample `sample` of the batch, and each layer's input for that
    sample (so fine-grained steps can be produced later, lazily). Use as a context manager; it
    refuses to nest.

    Events are named after the graph node (`name`, default the layer's name: a shared layer's
    further calls are `layer:k`); a layer with several inputs gets a tuple `x` and a tuple `mask`,
    and the call's `options` (`use_causal_mask`, …) are kept beside its input.
    """

    enabled = True
    _active: "Recorder | None" = None

    def __init__(self, sample: int = 0) -> None:
        self.sample = sample
        self.events: list[Event] = []
        self.inputs: dict[str, tuple[Any, np.ndarray | None]] = {}
        self.options: dict[str, dict] = {}

    def __enter__(self) -> "Recorder":
        if Recorder._active is not None:
            raise RuntimeError("a Recorder is already recording; recordings do not nest")
        Recorder._active = self
        return self

    def __exit__(self, *exc) -> None:
        Recorder._active = None

    def _pick(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, tuple):
            return tuple(self._pick(v) for v in value)
        if isinstance(value, np.ndarray):
            return value[self.sample:self.sample + 1].copy()
        return list(value)[self.sample:self.sample + 1]  # raw strings

    def layer_start(self, layer, x, mask, name=None, options=None) -> None:
        name = name or layer.name
        self.inputs[name] = (self._pick(x), self._pick(mask))
        if options:
            self.options[name] = dict(options)
        first = x[0] if isinstance(x, tuple) else x  # several inputs: the first one's shape
        shape = tuple(np.shape(first)) if isinstance(first, np.ndarray) else (len(first),)
        self.events.append(LayerStart(name, layer_class=type(layer).__name__, input_shape=shape))

    def layer_end(self, layer, y, mask, name=None) -> None:
        name = name or layer.name
        if isinstance(mask, tuple):
            mask = next((m for m in mask if m is not None), None)
        if isinstance(y, tuple):
            shape, out = tuple(np.shape(y[0])), np.stack([v[self.sample] for v in y])
        else:
            shape, out = tuple(np.shape(y)), y[self.sample].copy()
        self.events.append(LayerEnd(name, layer_class=type(layer).__name__, output_shape=shape, output=out,
                                    mask=None if mask is None else np.asarray(mask[self.sample]).copy()))
