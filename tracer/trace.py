"""A traced forward pass of one sample: layer-level events now, fine-grained steps on demand."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from nntrace.tracer.events import Event, LayerEnd, LayerStart
from nntrace.tracer.recorder import Recorder

#: Layers whose fine-grained steps are recorded by default, in order of preference.
FINE_DEFAULT = ("Conv2D", "Conv1D", "LSTM", "GRU", "SimpleRNN", "Bidirectional")


@dataclass
class Trace:
    """One sample through a scratch model.

    `events` holds the layer-level events (LayerStart/LayerEnd per layer, in order); `steps(layer)`
    produces that layer's fine-grained events lazily from the layer that owns the maths.
    """

    model_name: str
    layers: list[tuple[str, str]]                  # (name, class) in forward order
    events: list[Event]
    context: dict = field(default_factory=dict)   # input description, tokens, labels
    model: Any = None                             # the scratch model (None when replayed from a file)
    inputs: dict = field(default_factory=dict)    # layer name → (one-sample input, mask)
    recorded_steps: dict[str, list[Event]] = field(default_factory=dict)  # from a file
    options: dict = field(default_factory=dict)   # layer name → the call's options (use_causal_mask, …)
    #: "forward", or "backward": the layers run from the loss back to the input, the layer-level
    #: events are `LossGradient` and `LayerGradient`, and `gradients` holds each call's ∂L/∂y
    #: (and ∂L/∂z where the loss gave it) for the backward steps.
    direction: str = "forward"
    gradients: dict = field(default_factory=dict)  # layer name → {"dy": …, "dz": …} (backward)

    @property
    def backward(self) -> bool:
        return self.direction == "backward"

    def output(self, layer: str) -> np.ndarray:
        """The layer's output for the sample (in a backward trace: ∂L/∂ its output)."""
        for e in self.events:
            if isinstance(e, LayerEnd) and e.layer == layer:
                return e.output
            if getattr(e, "KIND", "") == "layer_gradient" and e.layer == layer:
                return e.output_gradient
        raise KeyError(f"no layer named '{layer}' in this trace; layers: {', '.join(n for n, _ in self.layers)}")

    def has_steps(self, layer: str) -> bool:
        if layer in self.recorded_steps:
            return True
        if self.model is None or layer not in self.inputs:
            return False
        return not self.backward or hasattr(self.model.layer(layer), "backward_steps")

    def steps(self, layer: str, **filters: Any) -> Iterator[Event]:
        """Fine-grained events of `layer`; filters (rows, cols, filters, channels, units, times,
        positions) pass to the layer. A replayed trace has only the layers that were recorded."""
        if layer in self.recorded_steps and (self.model is None or layer not in self.inputs):
            return iter(self.recorded_steps[layer])
        if self.model is None or layer not in self.inputs:
            raise KeyError(f"no fine-grained steps of '{layer}' in this trace; recorded: "
                           f"{', '.join(self.recorded_steps) or 'none'}")
        x, mask = self.inputs[layer]
        if self.backward:
            given = self.gradients[layer]
            extra = {} if given.get("dz") is None else {"dz": given["dz"]}
            return self.model.layer(layer).backward_steps(x, mask, given["dy"], self.context, **extra, **filters)
        return self.model.layer(layer).steps(x, mask, self.context, **self.options.get(layer, {}), **filters)

    def step_total(self, layer: str) -> int | None:
        """The number of backward steps of `layer` when the layer can say it without producing
        them (a conv layer's many kernel and input-cell steps), else None."""
        if not self.backward or self.model is None or layer not in self.inputs or layer in self.recorded_steps:
            return None
        count = getattr(self.model.layer(layer), "backward_step_count", None)
        return None if count is None else count(self.inputs[layer][0])

    def default_fine_layer(self) -> str | None:
        for cls in FINE_DEFAULT:
            for name, layer_class in self.layers:
                if layer_class == cls:
                    return name
        return None

    @property
    def probabilities(self) -> np.ndarray:
        return self.output(self.layers[-1][0])


def one_sample(model, x: Any, sample: int = 0) -> Any:
    """Sample `sample` of batch `x`, as a batch of one the model takes (a string → `[string]`)."""
    if isinstance(x, str):
        return [x]
    # a model with several inputs takes the sample of each
    return model.take(x, slice(sample, sample + 1)) if hasattr(model, "take") else x[sample:sample + 1]


def input_context(model, one: Any, labels: list[str] | None = None) -> dict:
    """What the views read beside the events: class names, and for text the tokens."""
    context: dict = {"labels": labels or model.meta.get("labels")}
    first = model.layers[0] if model.layers else None
    if first is not None and type(first).__name__ == "TextVectorization" and not (
            isinstance(one, np.ndarray) and one.dtype.kind in "iu"):
        text = first.as_texts(one)[0]
        context.update(text=text, tokens=first.tokens(text), oov_id=first.oov_id,
                       vocabulary_size=len(first.weights["vocabulary"]))
    return context


def trace(model, x: Any, sample: int = 0, labels: list[str] | None = None) -> Trace:
    """Run `model` on sample `sample` of batch `x` with a Recorder; returns the Trace."""
    one = one_sample(model, x, sample)
    context = input_context(model, one, labels)
    with Recorder() as rec:
        model.forward(one, tracer=rec)
    return Trace(model.name, [(n.name, type(model.layer(n.layer)).__name__) for n in model.graph.nodes
                              if n.name in rec.inputs], rec.events, context, model, rec.inputs, options=rec.options)
