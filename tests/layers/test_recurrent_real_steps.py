"""Masked batches of mixed lengths: the scans run the longest rows first and compute only the rows
that step (`length_order`, `step_rows`), and a Bidirectional layer steps both directions through
each row's real steps only (`real_steps_at_once`). Keras and TensorFlow are the reference, for
post-, pre- and middle padding, holes, empty and full rows."""
import keras
import numpy as np
import pytest
from keras import layers as L

from nntrace.layers import recurrent
from nntrace.models import load_scratch
from tests.gradient_parity import assert_gradient_parity
from tests.parity import assert_parity, randomise_weights

VOCAB, STEPS = 20, 9


def padded(rng, padding: str, batch: int = 10) -> np.ndarray:
    """Token ids, zero where masked: real runs of lengths 0 … STEPS (one empty row, one full row)
    at the end (`post`), the start (`pre`) or in between (`middle`), or scattered zeros (`holes`)."""
    ids = rng.integers(1, VOCAB, (batch, STEPS))
    if padding == "holes":
        ids[rng.random(ids.shape) < 0.4] = 0
        return ids.astype(np.int32)
    lengths = np.concatenate([[0, STEPS], rng.integers(1, STEPS, batch - 2)])
    rng.shuffle(lengths)
    start = {"post": np.zeros(batch, int), "pre": STEPS - lengths,
             "middle": rng.integers(0, STEPS - lengths + 1)}[padding]
    t = np.arange(STEPS)
    ids[(t < start[:, None]) | (t >= (start + lengths)[:, None])] = 0
    return ids.astype(np.int32)


def bidirectional_model(cell: str, return_sequences: bool, **options) -> keras.Model:
    inputs = keras.Input((STEPS,), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    if return_sequences:
        x = L.Bidirectional(getattr(L, cell)(5, return_sequences=True, **options))(x)
    x = L.Bidirectional(getattr(L, cell)(3, **options), merge_mode="sum")(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(x))
    randomise_weights(model, 7)
    return model


CELLS = [("SimpleRNN", {}), ("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False})]


@pytest.mark.parametrize("cell,options", CELLS)
@pytest.mark.parametrize("padding", ["post", "pre", "middle", "holes"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_forward_matches_keras(cell, options, padding, return_sequences, monkeypatch):
    model = bidirectional_model(cell, return_sequences, **options)
    x = padded(np.random.default_rng(len(padding) + 3 * return_sequences), padding)
    calls = []
    original = recurrent.Bidirectional.real_steps_at_once

    def spy(self, *args):
        calls.append(self.name)
        return original(self, *args)

    monkeypatch.setattr(recurrent.Bidirectional, "real_steps_at_once", spy)
    assert_parity(model, x)
    # runs of real steps take the real-steps path (both Bidirectional layers); holes the general one
    assert len(calls) >= (0 if padding == "holes" else 1 + return_sequences)
    assert padding != "holes" or not calls


@pytest.mark.parametrize("cell,options", CELLS)
@pytest.mark.parametrize("padding", ["pre", "middle", "holes"])
def test_gradients_of_mixed_lengths_match_tensorflow(cell, options, padding):
    """Backward through the sorted, trimmed scans: both directions, stacked, every padding."""
    model = bidirectional_model(cell, True, **options)
    rng = np.random.default_rng(5)
    assert_gradient_parity(model, padded(rng, padding), rng.integers(0, 3, 10))


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_single_direction_with_zero_outputs_matches_keras(go_backwards, zero_output_for_mask):
    inputs = keras.Input((STEPS,), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    x = L.LSTM(5, return_sequences=True, go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask)(x)
    x = L.GRU(3, go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask)(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(x))
    randomise_weights(model, 3)
    rng = np.random.default_rng(3)
    for padding in ("post", "pre", "middle"):
        x_ids = padded(rng, padding)
        assert_parity(model, x_ids)
        assert_gradient_parity(model, x_ids, rng.integers(0, 3, 10))


def test_rows_come_back_in_the_batch_order():
    """Each row's result does not depend on the other rows it was batched with."""
    scratch = load_scratch(bidirectional_model("LSTM", True))
    x = padded(np.random.default_rng(9), "post", batch=12)
    together = scratch.forward(x)
    alone = np.concatenate([scratch.forward(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_step_rows_and_length_order():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]], bool)
    assert recurrent.step_rows(mask, 4, 4) == [(4, False), (2, True), (4, False), (2, False)]
    order = recurrent.length_order(mask)
    assert order.tolist() == [1, 0, 3, 2]
    assert recurrent.step_rows(mask[order], 4, 4) == [(3, True), (2, True), (3, False), (1, True)]
    assert recurrent.length_order(mask[:1]) is None and recurrent.length_order(np.ones((3, 4), bool)) is None
    assert recurrent.contiguous_runs(mask) is None
    start, stop = recurrent.contiguous_runs(mask[:3])
    assert start.tolist() == [0, 0, 0] and stop.tolist() == [2, 4, 0]


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_masking_layer_and_a_pair_of_outputs_match_keras(padding):
    """Float inputs masked by a Masking layer, and merge_mode=None (both directions' sequences)."""
    inputs = keras.Input((STEPS, 3))
    x = L.Masking(0.0)(inputs)
    forward, backward = L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode=None)(x)
    x = L.Bidirectional(L.GRU(3))(L.Concatenate()([forward, backward]))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(x))
    randomise_weights(model, 8)
    rng = np.random.default_rng(8)
    ids = padded(rng, padding)
    values = rng.normal(size=ids.shape + (3,)).astype(np.float32) * (ids != 0)[..., None]
    assert_parity(model, values)
    assert_gradient_parity(model, values, rng.integers(0, 3, len(values)))
