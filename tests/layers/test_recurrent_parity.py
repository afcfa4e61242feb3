"""Random recurrent stacks with post-padded, masked sequences; scratch must match Keras per layer."""
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nntrace.models import load_scratch
from tests.parity import assert_parity, randomise_weights

VOCAB = 20


@dataclass
class RecurrentStack:
    """A functional model as data (so hypothesis reports a failing example readably), built in the test."""

    seq_len: int
    embedding_dim: int
    layers: list = field(default_factory=list)  # (class name, kwargs, bidirectional merge mode or None, dropout)

    def build(self) -> keras.Model:
        inputs = keras.Input((self.seq_len,), dtype="int32")
        x = keras.layers.Embedding(VOCAB, self.embedding_dim, mask_zero=True)(inputs)
        for name, kwargs, merge_mode, dropout in self.layers:
            layer = getattr(keras.layers, name)(**kwargs)
            x = (keras.layers.Bidirectional(layer, merge_mode=merge_mode) if merge_mode else layer)(x)
            if dropout:
                x = keras.layers.Dropout(0.3)(x)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@st.composite
def recurrent_stacks(draw):
    stack = RecurrentStack(draw(st.integers(1, 8)), draw(st.integers(1, 5)))
    depth = draw(st.integers(1, 3))
    for i in range(depth):
        last = i == depth - 1
        name = draw(st.sampled_from(["SimpleRNN", "LSTM"]))
        kwargs = {"units": draw(st.integers(1, 6)), "return_sequences": (not last) or draw(st.booleans())}
        if name == "SimpleRNN":
            kwargs["activation"] = draw(st.sampled_from(["tanh", "relu"]))
        else:
            kwargs["recurrent_activation"] = draw(st.sampled_from(["sigmoid", "hard_sigmoid"]))
        merge_mode = None
        if draw(st.booleans()):
            merge_mode = draw(st.sampled_from(["concat", "sum", "mul", "ave"]))
        else:
            kwargs["go_backwards"] = draw(st.booleans())
        stack.layers.append((name, kwargs, merge_mode, draw(st.booleans())))
    return stack


def post_padded(rng, batch: int, seq_len: int) -> np.ndarray:
    """Token ids with real lengths 1..seq_len, zeros after (post-padding)."""
    ids = rng.integers(1, VOCAB, (batch, seq_len))
    lengths = rng.integers(1, seq_len + 1, batch)
    ids[np.arange(seq_len)[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.int32)


@given(recurrent_stacks(), st.integers(0, 2**16), st.integers(1, 5))
def test_random_recurrent_stacks_match_keras_layer_by_layer(stack, seed, batch):
    model = stack.build()
    randomise_weights(model, seed)
    x = post_padded(np.random.default_rng(seed), batch, model.input_shape[1])
    assert_parity(model, x)


@pytest.mark.parametrize("cls", [keras.layers.SimpleRNN, keras.layers.LSTM])
def test_padding_does_not_change_the_answer(cls):
    """Masking: appending padding to a sequence leaves the prediction unchanged."""
    def build(seq_len):
        inputs = keras.Input((seq_len,), dtype="int32")
        x = keras.layers.Embedding(VOCAB, 4, mask_zero=True, name="emb")(inputs)
        x = keras.layers.Bidirectional(cls(5, name="rnn"), name="bi")(x)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(x))

    short, long = build(4), build(9)
    randomise_weights(short, 3)
    long.set_weights(short.get_weights())
    ids = np.array([[3, 7, 1, 9]], np.int32)
    padded = np.concatenate([ids, np.zeros((1, 5), np.int32)], axis=1)
    np.testing.assert_allclose(load_scratch(short).forward(ids), load_scratch(long).forward(padded), atol=1e-6)


def test_bidirectional_merge_mode_none_returns_both_directions():
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 3, mask_zero=True)(inputs)
    pair = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), merge_mode=None)
    model = keras.Model(inputs, pair(x))
    randomise_weights(model, 5)
    ids = post_padded(np.random.default_rng(5), 3, 6)
    expected = model(ids)
    scratch = load_scratch(model)
    got = scratch.forward(ids)
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)
