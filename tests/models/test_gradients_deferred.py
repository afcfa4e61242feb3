"""The input end of the backward pass is worked out when read: a model that begins with a plain
chain to its first weighted layer leaves that layer's input gradient (and the gradients of the
weightless calls before it, a Rescaling) until `g.inputs` or `g.outputs[name]` is read. The values
are TensorFlow's, on split and unsplit batches, and the rest of the gradients do not wait."""
import keras
import numpy as np
import pytest

from nntrace.layers.conv import Conv2D
from nntrace.models import load_scratch
from nntrace.models.gradients import forward_pass, gradients, input_end
from tests.gradient_parity import assert_gradient_parity
from tests.parity import randomise_weights

L = keras.layers


def conv_model(inputs_first: list) -> keras.Sequential:
    model = keras.Sequential([keras.Input((8, 8, 3)), *inputs_first, L.Conv2D(4, 3, padding="same", activation="relu"),
                              L.Conv2D(5, 3, strides=2), L.Flatten(), L.Dense(3, activation="softmax")])
    randomise_weights(model, 4)
    return model


def images(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)


class CountingInputGradient:
    """Counts the calls of Conv2D.input_gradient (the work that is left until read)."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        original = Conv2D.input_gradient

        def counted(layer, *args):
            self.calls += 1
            return original(layer, *args)

        monkeypatch.setattr(Conv2D, "input_gradient", counted)


@pytest.mark.parametrize("batch", [3, 40])  # 40 is split between the cores
def test_inputs_and_leading_outputs_are_worked_out_when_read(batch, monkeypatch):
    model = conv_model([L.Rescaling(1 / 255.0)])
    scratch = load_scratch(model)
    x, y = images(batch), np.arange(batch) % 3
    counter = CountingInputGradient(monkeypatch)
    g = scratch.gradients(x, y)
    done = counter.calls  # the second conv's input gradient only
    assert done >= 1
    leading = model.layers[0].name
    assert g.outputs[leading].shape == x.shape and counter.calls > done
    after_output = counter.calls
    assert g.inputs.shape == x.shape and counter.calls == after_output  # computed once, for both
    # the values are TensorFlow's (weights, input, every layer output)
    assert_gradient_parity(model, x, y, scratch)
    # and equal to the backward that computes everything at once (the one the trace records)
    eager = gradients(scratch, x, y, calls={})
    np.testing.assert_allclose(eager.inputs, g.inputs, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(eager.outputs[leading], g.outputs[leading], rtol=1e-5, atol=1e-9)


def test_the_first_weighted_layer_is_found_only_on_a_plain_chain():
    chained = load_scratch(conv_model([L.Rescaling(1 / 255.0)]))
    fwd = forward_pass(chained, images(2))
    assert input_end(fwd).layer.name == chained.layers[1].name

    inputs = keras.Input((8, 8, 3))
    scaled = L.Rescaling(1 / 255.0)(inputs)
    branches = L.Add()([L.Conv2D(2, 3)(scaled), L.Conv2D(2, 3)(scaled)])  # the scaled input is read twice
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(branches)))
    randomise_weights(model, 2)
    branched = load_scratch(model)
    assert input_end(forward_pass(branched, images(2))) is None
    assert_gradient_parity(model, images(5), np.arange(5) % 3, branched)


def test_a_dense_first_layer_and_token_inputs_keep_working():
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, activation="tanh"), L.Dense(3, activation="softmax")])
    randomise_weights(model, 1)
    x = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    assert_gradient_parity(model, x, np.arange(20) % 3)
    tokens = keras.Sequential([keras.Input((5,), dtype="int32"), L.Embedding(7, 3), L.Conv1D(4, 2),
                               L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")])
    randomise_weights(tokens, 1)
    ids = np.random.default_rng(1).integers(0, 7, (20, 5)).astype(np.int32)
    g = assert_gradient_parity(tokens, ids, np.arange(20) % 3)
    assert g.inputs is None


def test_values_read_after_a_training_step_are_those_of_the_pass():
    """The input gradient left until read uses the kernel of the pass that made it, not the
    weights an optimizer step wrote since."""
    model = conv_model([L.Rescaling(1 / 255.0)])
    scratch = load_scratch(model)
    x, y = images(6), np.arange(6) % 3
    want = gradients(scratch, x, y, calls={})  # everything at once
    g = scratch.gradients(x, y)
    scratch.apply_gradients(g, optimizer="sgd", learning_rate=1.0)
    leading = model.layers[0].name
    np.testing.assert_allclose(g.inputs, want.inputs, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(g.outputs[leading], want.outputs[leading], rtol=1e-5, atol=1e-9)
