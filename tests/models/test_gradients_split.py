"""model.gradients over a batch split between cores: each part runs the model forward and back,
and the combined loss and gradients still equal tf.GradientTape's for the whole batch."""
import keras
import numpy as np
import pytest

import nntrace.models.gradients as gradients_module
from nntrace.layers import InputShapeError
from nntrace.models import load_scratch
from tests.gradient_parity import assert_gradient_parity
from tests.parity import randomise_weights

L = keras.layers


@pytest.fixture
def parts_run(monkeypatch):
    """Counts the forward-and-backward passes `gradients` runs, and the batch size of each."""
    sizes: list[int] = []
    backward = gradients_module.backward

    def counted(model, x, y, calls=None, total=None):
        sizes.append(len(x))
        return backward(model, x, y, calls, total)

    monkeypatch.setattr(gradients_module, "backward", counted)
    return sizes


def conv_model(head: str) -> keras.Sequential:
    model = keras.Sequential([keras.Input((7, 7, 2)), L.Rescaling(1 / 255.0), L.Conv2D(4, 3, activation="relu"),
                              L.BatchNormalization(), L.MaxPooling2D(), L.Flatten(), L.Dense(5, activation=head)])
    randomise_weights(model, 3)
    return model


@pytest.mark.parametrize("threads", ["2", "3"])
@pytest.mark.parametrize("head", ["softmax", "linear"])
def test_a_split_batch_matches_gradient_tape(monkeypatch, parts_run, threads, head):
    """41 images in 2 or 3 uneven parts; probabilities (dL/dp of the last layer) or logits."""
    monkeypatch.setenv("NNTRACE_THREADS", threads)
    km = conv_model(head)
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 255, (41, 7, 7, 2)).astype(np.float32)
    y = rng.integers(0, 5, 41)
    g = assert_gradient_parity(km, x, y)
    assert sorted(parts_run) == sorted(41 * (k + 1) // int(threads) - 41 * k // int(threads)
                                       for k in range(int(threads)))
    assert g.inputs.shape == x.shape and all(out.shape[0] == 41 for out in g.outputs.values())


def test_split_and_whole_batch_agree(monkeypatch):
    """The same model and batch, split in two and not split: the loss to float32 round-off, every
    gradient to 1e-5 of its size."""
    scratch = load_scratch(conv_model("softmax"))
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 255, (32, 7, 7, 2)).astype(np.float32)
    y = rng.integers(0, 5, 32)
    monkeypatch.setenv("NNTRACE_THREADS", "2")
    split = scratch.gradients(x, y)
    monkeypatch.setenv("NNTRACE_THREADS", "1")
    whole = scratch.gradients(x, y)
    assert split.loss == pytest.approx(whole.loss, rel=1e-6)
    for path, grad in whole.weights.items():
        assert np.abs(split.weights[path] - grad).max() <= 1e-5 * np.abs(grad).max(), path
    np.testing.assert_allclose(split.inputs, whole.inputs, rtol=0, atol=1e-5 * np.abs(whole.inputs).max())


def test_a_masked_sequence_output_is_not_split(monkeypatch, parts_run):
    """Keras weights a masked output's entries by total / valid over the whole batch, so the
    gradients come from the batch run whole (and still match)."""
    monkeypatch.setenv("NNTRACE_THREADS", "2")
    km = keras.Sequential([keras.Input((6,), dtype="int32"), L.Embedding(20, 4, mask_zero=True),
                           L.SimpleRNN(5, return_sequences=True), L.Dense(3, activation="softmax")])
    randomise_weights(km, 4)
    rng = np.random.default_rng(7)
    ids = rng.integers(1, 20, (24, 6))
    ids[:, 4:] = 0
    ids[:3, 2:] = 0
    assert_gradient_parity(km, ids, rng.integers(0, 3, (24, 6)))
    assert parts_run[-1] == 24


def test_a_bad_label_in_one_part_reports_the_whole_batch(monkeypatch):
    monkeypatch.setenv("NNTRACE_THREADS", "2")
    scratch = load_scratch(conv_model("softmax"))
    x = np.zeros((32, 7, 7, 2), np.float32)
    y = np.zeros(32, int)
    y[30] = 9
    with pytest.raises(InputShapeError, match=r"labels from 0 to 9"):
        scratch.gradients(x, y)
