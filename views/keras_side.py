"""Keras's per-layer outputs for the traced sample, and their differences from the scratch layers."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def keras_comparison(keras_path: Path, trace) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, bool]]]:
    """Load the Keras model (TensorFlow is imported here), run the trace's input through it.

    Returns (layer → Keras's output for the sample, layer → (max |scratch − Keras|, passed)).
    """
    from nntrace.models.convert import load_keras
    from nntrace.models.keras_probe import keras_layer_outputs
    from nntrace.tracer.compare import diff_outputs

    keras_model = load_keras(keras_path)
    outputs = keras_layer_outputs(keras_model, trace.context.get("model_input"))
    outputs = {k: (np.stack(v, 0) if isinstance(v, tuple) else v) for k, v in outputs.items()}
    ours = {e.layer: e.output[None] for e in trace.events if e.kind == "layer_end"}
    rows = diff_outputs(ours, outputs, dict(trace.layers))
    return {k: v[0] for k, v in outputs.items()}, {r.layer: (r.max_abs_diff, r.passed) for r in rows}


class KerasSide:
    """What the app knows of Keras for the current trace: its outputs, the per-layer differences,
    a one-line status, and whether the learner has hidden it (`k`)."""

    def __init__(self, keras_path: Path | None, name: str = "Keras") -> None:
        self.path = keras_path
        self.name = name  # "Keras" (outputs) or "GradientTape" (gradients of the backward pass)
        self.shown = True
        self.trace = None  # the trace whose comparison is loading or loaded
        self.reset()

    def reset(self) -> None:
        self.outputs: dict[str, np.ndarray] | None = None
        self.diffs: dict[str, tuple[float, bool]] = {}
        self.status = f"{self.name} loading…" if self.path is not None else "no Keras model"

    def ready(self, outputs: dict, diffs: dict) -> None:
        self.outputs, self.diffs = outputs, diffs
        failed = [k for k, (_, ok) in diffs.items() if not ok]
        what = "every layer matches" if self.name == "Keras" else "every gradient matches"
        self.status = f"{self.name}: {what}" if not failed else f"{self.name} differs at {', '.join(failed)}"

    def output(self, layer: str) -> np.ndarray | None:
        """Keras's output of `layer` for the sample, when loaded and shown."""
        return self.outputs.get(layer) if self.shown and self.outputs is not None else None

    def diff(self, layer: str) -> float | None:
        d = self.diffs.get(layer) if self.shown else None
        return None if d is None else d[0]

    def line(self) -> str:
        return self.status if self.shown else f"{self.name} hidden (k)"


def tape_comparison(keras_path: Path, trace) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, bool]]]:
    """tf.GradientTape's gradients for a backward trace's sample and label (TensorFlow is imported
    here). Returns (layer → the tape's ∂L/∂y for the sample, layer → (max |g − g_tf| / max |g_tf|,
    passed)); the loss row compares the loss, the input row the input's gradient, and the layer
    whose softmax the loss reads its input's gradient."""
    from nntrace.models.convert import load_keras
    from nntrace.models.gradient_check import keras_gradients, rel_error

    keras_model = load_keras(keras_path)
    label = np.array([int(trace.context["label"])])
    tape = keras_gradients(keras_model, trace.context.get("model_input"), label)
    grads = {name: g for name, g in tape["outputs"].items() if isinstance(g, np.ndarray)}
    inbound = getattr(trace.model, "inbound", None) or {}
    names = [n for n, _ in trace.layers]
    diffs: dict[str, tuple[float, bool]] = {}
    loss = next(e for e in trace.events if e.kind == "loss_gradient")
    err = abs(loss.loss - tape["loss"]) / max(abs(tape["loss"]), 1e-12)
    diffs["loss"] = (err, err <= GRADIENT_REL)
    for e in trace.events:
        if e.kind != "layer_gradient" or e.output_gradient is None:
            continue
        got, want = e.output_gradient, grads.get(e.layer)
        if e.from_loss or want is None:  # compare what the layer passes on instead
            sources = inbound.get(e.layer) or ([names[names.index(e.layer) + 1]] if names.index(e.layer) + 1 < len(names)
                                               else [])
            got, want = e.input_gradient, grads.get(sources[0]) if len(sources) == 1 else None
        if got is None or want is None or np.shape(want[0]) != np.shape(got):
            continue
        err = rel_error(got, want[0])
        diffs[e.layer] = (err, err <= GRADIENT_REL)
    saliency = trace.recorded_steps.get("input")
    if saliency and tape["inputs"] is not None:
        err = rel_error(saliency[0].gradient, tape["inputs"][0])
        diffs["input"] = (err, err <= GRADIENT_REL)
    return {k: v[0] for k, v in grads.items()}, diffs


#: max |g − g_tf| / max |g_tf| for a layer's gradient to pass (the bound the tests hold them to).
GRADIENT_REL = 1e-4
