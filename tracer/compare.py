"""Scratch vs Keras, layer by layer, for the same input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class LayerDiff:
    layer: str
    layer_class: str
    shape: tuple
    max_abs_diff: float
    passed: bool  # within rtol 1e-4 / atol 1e-5 everywhere


def diff_outputs(scratch_outputs: dict[str, Any], keras_outputs: dict[str, Any],
                 classes: dict[str, str]) -> list[LayerDiff]:
    """Align by layer name; layers Keras does not expose (none in a chain) are skipped."""
    rows = []
    for name, ours in scratch_outputs.items():
        if name not in keras_outputs:
            continue
        theirs = keras_outputs[name]
        a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        if a.shape != b.shape:
            rows.append(LayerDiff(name, classes[name], a.shape, float("inf"), False))
            continue
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        ok = bool(np.all(np.abs(a - b) <= ATOL + RTOL * np.abs(b)))
        rows.append(LayerDiff(name, classes[name], a.shape, diff, ok))
    return rows


def compare(scratch, keras_model, x: Any) -> list[LayerDiff]:
    """Per-layer max |scratch − Keras| and pass/fail for input batch `x`."""
    from nntrace.models.keras_probe import keras_layer_outputs

    ours, classes = {}, {}
    for name, layer, out, _ in scratch.forward_nodes(x):
        ours[name] = np.stack(out, 0) if isinstance(out, tuple) else out
        classes[name] = type(layer).__name__
    theirs = {k: (np.stack(v, 0) if isinstance(v, tuple) else v) for k, v in keras_layer_outputs(keras_model, x).items()}
    return diff_outputs(ours, theirs, classes)
