"""The seven kinds of model of `test_model_kinds` (residual CNN, inception, dilated/grouped,
bidirectional GRU, text CNN, tiny transformer, LSTM + attention): the loss, every trainable
variable's gradient, every layer output's and the input's equal tf.GradientTape's."""
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from nntrace.layers import LAYER_CLASSES, Layer
from tests.gradient_parity import assert_gradient_parity
from tests.models.test_model_kinds import KINDS
from tests.parity import randomise_weights

ROOT = Path(__file__).resolve().parents[2]
#: Kinds whose TensorFlow reference crashes the process with oneDNN on: TF 2.21's oneDNN
#: Conv2DBackpropFilter corrupts the heap on the residual CNN's 1×1 stride-2 projection (12×12×8 →
#: 6×6×16; plain `tf.nn.convolution` + GradientTape reproduces it). They run in a child process
#: with TF_ENABLE_ONEDNN_OPTS=0.
ONEDNN_CRASHES = {"residual_cnn"}


def without_backward(model: keras.Model) -> list[str]:
    """Keras class names in `model` (nested ones too) whose scratch layer has no backward pass yet."""
    names = set()
    for layer in model._flatten_layers(include_self=False):
        cls = LAYER_CLASSES.get(type(layer).__name__)
        if cls is not None and cls.backward is Layer.backward and type(layer).__name__ != "InputLayer":
            names.add(type(layer).__name__)
    return sorted(names)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("seed", [7, 8])
def test_model_kind_gradients_match_tensorflow(kind, seed):
    build, make_input, _ = KINDS[kind]
    keras.utils.set_random_seed(seed)
    model = build()
    missing = without_backward(model)
    if missing:
        pytest.skip(f"no backward pass yet for {', '.join(missing)}")
    if kind in ONEDNN_CRASHES and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        test = f"{Path(__file__).relative_to(ROOT)}::test_model_kind_gradients_match_tensorflow[{seed}-{kind}]"
        child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                               cwd=ROOT, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"},
                               capture_output=True, text=True, timeout=600)
        assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
        return
    randomise_weights(model, seed)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:  # LayerNormalization starts at gamma 1, beta 0: give it numbers
        if type(layer).__name__ == "LayerNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    x = make_input(np.random.default_rng(seed + 2))
    y = rng.integers(0, model.output_shape[-1], len(x))
    g = assert_gradient_parity(model, x, y)
    assert sorted(g.weights) == sorted(v.path for v in model.trainable_variables)
    assert any(np.abs(grad).max() > 0 for grad in g.weights.values())
