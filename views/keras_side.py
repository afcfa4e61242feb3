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
