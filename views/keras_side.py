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
    """tf.GradientTape's gradients for a backward trace (see `models.gradient_check.compare_backward`)."""
    from nntrace.models.convert import load_keras
    from nntrace.models.gradient_check import compare_backward

    return compare_backward(trace, load_keras(keras_path))
