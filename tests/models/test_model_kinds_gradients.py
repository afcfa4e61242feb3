"""The seven kinds of model of `test_model_kinds` (residual CNN, inception, dilated/grouped,
bidirectional GRU, text CNN, tiny transformer, LSTM + attention): the loss, every trainable
variable's gradient, every layer output's and the input's equal tf.GradientTape's."""
import keras
import numpy as np
import pytest

from nntrace.layers import LAYER_CLASSES, Layer
from tests.gradient_parity import assert_gradient_parity
from tests.models.test_model_kinds import KINDS
from tests.parity import randomise_weights


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
    randomise_weights(model, seed)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:  # LayerNormalization starts at gamma 1, beta 0: give it numbers
        if type(layer).__name__ == "LayerNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    missing = without_backward(model)
    if missing:
        pytest.skip(f"no backward pass yet for {', '.join(missing)}")
    x = make_input(np.random.default_rng(seed + 2))
    y = rng.integers(0, model.output_shape[-1], len(x))
    g = assert_gradient_parity(model, x, y)
    assert sorted(g.weights) == sorted(v.path for v in model.trainable_variables)
    assert any(np.abs(grad).max() > 0 for grad in g.weights.values())
