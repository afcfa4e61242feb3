"""Helpers for parity tests: randomise Keras weights and compare every layer with the scratch side."""
from __future__ import annotations

import numpy as np

from nntrace.models import load_scratch
from nntrace.models.keras_probe import keras_layer_outputs

RTOL, ATOL, PROB_ATOL = 1e-4, 1e-5, 1e-5


def randomise_weights(model, seed: int) -> None:
    """Give every layer non-trivial weights (random biases, BN statistics) so no term hides."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        name = type(layer).__name__
        new = []
        for w in weights:
            if name == "BatchNormalization":
                new.append(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
            elif w.ndim == 1:  # biases
                new.append(rng.normal(0, 0.3, w.shape).astype(np.float32))
            else:
                new.append(w)
        layer.set_weights(new)


def assert_parity(keras_model, x, scratch=None) -> None:
    """Every layer within rtol 1e-4 / atol 1e-5, probabilities within 1e-5, same argmax."""
    scratch = scratch or load_scratch(keras_model)
    expected = keras_layer_outputs(keras_model, x)
    seen = 0
    for name, layer, out, _ in scratch.forward_nodes(x):
        if name not in expected:
            continue
        ref = expected[name]
        if isinstance(ref, tuple):
            for a, b in zip(out, ref):
                np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"layer {name}")
        elif ref.dtype.kind in "iu":
            np.testing.assert_array_equal(out, ref, err_msg=f"layer {name}")
        else:
            np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=f"layer {name}")
        seen += 1
    assert seen == len([n for n in scratch.order if n in expected]) and seen > 0
    final = expected[scratch.graph.output.node]  # the output node's output is the model's output
    probs = scratch.forward(x)
    np.testing.assert_allclose(probs, final, atol=PROB_ATOL, rtol=0)
    if final.shape[-1] < 2:
        return
    top2 = np.sort(final, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-5  # ties aside
    np.testing.assert_array_equal(probs.argmax(-1)[clear], final.argmax(-1)[clear])
