"""Random functional graphs (residual and concatenated branches, shared layers, nested models,
masked sequences, several inputs); the scratch graph must match every layer call of Keras."""
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nntrace.models import load_scratch
from tests.parity import assert_parity, randomise_weights

L = keras.layers
MERGES = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"]
VOCAB = 16


@dataclass
class ImageGraph:
    """A convolutional DAG as data (so a failing example reads as blocks), built in the test."""

    size: int
    channels: int
    blocks: list = field(default_factory=list)  # (kind, settings)
    head: str = "GlobalAveragePooling2D"

    def build(self) -> keras.Model:
        inputs = keras.Input((self.size, self.size, self.channels), name="image")
        x = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
        width = 4
        for kind, s in self.blocks:
            if kind == "residual":
                y = L.Conv2D(width, s["kernel"], padding="same", dilation_rate=s["dilation"],
                             activation=s["activation"])(x)
                y = L.Conv2D(width, 3, padding="same", groups=s["groups"])(y)
                x = getattr(L, s["merge"])()([x, y])
                if s["merge"] == "Concatenate":
                    width *= 2
                x = L.ReLU()(x) if s["relu_layer"] else x
            elif kind == "projection":  # a strided 1×1 shortcut beside a strided 3×3
                short = L.Conv2D(s["filters"], 1, strides=2)(x)
                main = L.Conv2D(s["filters"], 3, strides=2, padding="same", activation="relu")(x)
                x = L.LeakyReLU(0.1)(L.Add()([short, main]))
                width = s["filters"]
            elif kind == "inception":
                pool = L.MaxPooling2D(3, strides=1, padding="same")(x)
                branches = [L.Conv2D(2, 1, activation="relu")(x),
                            L.SeparableConv2D(2, 3, padding="same", depth_multiplier=s["multiplier"])(x),
                            L.Conv2D(2, 1)(L.DepthwiseConv2D(3, padding="same")(x)),
                            pool if s["axis"] == -1 else L.Conv2D(2, 1)(pool)]
                x = L.Concatenate(axis=s["axis"])(branches)
                width = 6 + width
                if s["axis"] != -1:  # four maps stacked along rows or columns: back to one
                    window = (4, 1) if s["axis"] == 1 else (1, 4)
                    x = L.Conv2D(4, window, strides=window)(x)
                    width = 4
            elif kind == "shared":  # one layer called twice
                conv = L.Conv2D(width, 3, padding="same", activation="tanh")
                x = conv(conv(x))
        pooled = getattr(L, self.head)()(x)
        return keras.Model(inputs, L.Dense(3, activation="softmax")(pooled))


@st.composite
def image_graphs(draw):
    graph = ImageGraph(draw(st.integers(5, 9)), draw(st.integers(1, 3)),
                       head=draw(st.sampled_from(["GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten"])))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["residual", "projection", "inception", "shared"]))
        settings = {}
        if kind == "residual":
            settings = {"kernel": draw(st.sampled_from([1, 3])), "dilation": draw(st.sampled_from([1, 2])),
                        "groups": draw(st.sampled_from([1, 2])), "merge": draw(st.sampled_from(MERGES)),
                        "activation": draw(st.sampled_from(["relu", "gelu", "swish", "elu"])),
                        "relu_layer": draw(st.booleans())}
        elif kind == "projection":
            settings = {"filters": draw(st.sampled_from([2, 4]))}
        elif kind == "inception":
            settings = {"multiplier": draw(st.integers(1, 2)), "axis": draw(st.sampled_from([-1, -1, 1, 2]))}
        graph.blocks.append((kind, settings))
    return graph


@dataclass
class SequenceGraph:
    """A masked-sequence DAG as data, built in the test."""

    seq_len: int
    dim: int
    blocks: list = field(default_factory=list)
    head: str = "GlobalAveragePooling1D"

    def build(self) -> keras.Model:
        inputs = keras.Input((self.seq_len,), dtype="int32", name="ids")
        x = L.Embedding(VOCAB, self.dim, mask_zero=True)(inputs)
        for kind, s in self.blocks:
            if kind == "branches":
                a = getattr(L, s["cell"])(self.dim, return_sequences=True)(x)
                b = L.Dense(self.dim, activation="tanh")(x)
                x = getattr(L, s["merge"])()([a, b]) if s["merge"] != "Concatenate" else \
                    L.Dense(self.dim)(L.Concatenate()([a, b]))
            elif kind == "time_concat":  # joined along time: the masks join too
                x = L.Concatenate(axis=1)([x, L.Dense(self.dim)(x)])
            elif kind == "nested":
                inner_in = keras.Input((None, self.dim))
                inner = keras.Model(inner_in, L.LayerNormalization()(L.Dense(self.dim, activation="relu")(inner_in)))
                x = L.Add()([x, inner(x)]) if s["residual"] else inner(x)
            elif kind == "bidirectional":
                x = L.Bidirectional(getattr(L, s["cell"])(self.dim // 2 or 1, return_sequences=True),
                                    merge_mode="concat")(x)
                x = L.Dense(self.dim)(x)
        if self.head == "recurrent":
            x = L.GRU(3)(x)
        else:
            x = getattr(L, self.head)()(x)
        return keras.Model(inputs, L.Dense(3, activation="softmax")(x))


@st.composite
def sequence_graphs(draw):
    graph = SequenceGraph(draw(st.integers(2, 6)), draw(st.integers(2, 5)),
                          head=draw(st.sampled_from(["GlobalAveragePooling1D", "GlobalMaxPooling1D", "recurrent"])))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["branches", "time_concat", "nested", "bidirectional"]))
        settings = {"cell": draw(st.sampled_from(["GRU", "LSTM", "SimpleRNN"])),
                    "merge": draw(st.sampled_from(MERGES)), "residual": draw(st.booleans())}
        graph.blocks.append((kind, settings))
    return graph


def post_padded(rng, batch: int, seq_len: int) -> np.ndarray:
    ids = rng.integers(1, VOCAB, (batch, seq_len))
    lengths = rng.integers(1, seq_len + 1, batch)
    ids[np.arange(seq_len)[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.int32)


@given(image_graphs(), st.integers(0, 2**16), st.integers(1, 3))
def test_random_image_graphs_match_keras_layer_by_layer(graph, seed, batch):
    model = graph.build()
    randomise_weights(model, seed)
    x = np.random.default_rng(seed).uniform(-1, 1, (batch,) + model.input_shape[1:]).astype(np.float32)
    assert_parity(model, x)


@given(sequence_graphs(), st.integers(0, 2**16), st.integers(1, 4))
def test_random_masked_sequence_graphs_match_keras_layer_by_layer(graph, seed, batch):
    model = graph.build()
    randomise_weights(model, seed)
    assert_parity(model, post_padded(np.random.default_rng(seed), batch, graph.seq_len))


def test_graph_with_two_inputs_and_a_shared_layer():
    """Two inputs; one Dense shared by both branches (two nodes, `shared` and `shared:1`); Dot and
    Concatenate merge them."""
    a_in, b_in = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = L.Dense(3, activation="tanh", name="shared")
    a, b = shared(a_in), shared(b_in)
    cos = L.Dot(axes=1, normalize=True, name="cos")([a, b])
    out = L.Dense(2, activation="softmax", name="out")(L.Concatenate(name="join")([a, b, cos]))
    model = keras.Model([a_in, b_in], out)
    randomise_weights(model, 1)
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(2)]
    scratch = load_scratch(model)
    assert scratch.order == ["shared", "shared:1", "cos", "join", "out"]
    assert {scratch.inbound["shared"][0], scratch.inbound["shared:1"][0]} == {"a", "b"}
    assert scratch.inbound["join"] == ["shared", "shared:1", "cos"] or \
        scratch.inbound["join"] == ["shared:1", "shared", "cos"]
    assert_parity(model, x, scratch)
    np.testing.assert_allclose(scratch.forward({"b": x[1], "a": x[0]}), scratch.forward(x), rtol=0, atol=0)
    np.testing.assert_allclose(scratch.predict_proba(x, batch_size=2), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("axes,shapes", [((1, 2), ((3, 4), (5, 3))), ((2, 2), ((3, 4), (5, 4))),
                                         ((2, 1), ((3, 4), (4, 5))), (-1, ((3, 4), (5, 4)))])
def test_dot_axes_of_sequences(axes, shapes):
    a_in, b_in = keras.Input(shapes[0]), keras.Input(shapes[1])
    out = L.Flatten()(L.Dot(axes=axes)([a_in, b_in]))
    model = keras.Model([a_in, b_in], L.Dense(2, activation="softmax")(out))
    randomise_weights(model, 2)
    rng = np.random.default_rng(2)
    assert_parity(model, [rng.normal(size=(2,) + tuple(t.shape[1:])).astype(np.float32) for t in model.inputs])


def test_masks_cross_a_nested_model_as_keras_passes_them():
    """Keras hands a nested model's output on without the mask its graph was built with, while the
    tensor itself still carries one: calls that take the built mask (a GRU) and calls that read the
    tensor's own (a Maximum) see different masks; the scratch graph follows both."""
    inner_in = keras.Input((5, 4))
    inner = keras.Model(inner_in, L.Dense(4, name="inner_dense")(inner_in), name="inner")
    ids = keras.Input((5,), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=True)(ids)
    y = L.Maximum()([inner(x), x])
    out = L.Dense(2, activation="softmax")(L.GRU(3)(L.Concatenate()([y, x])))
    model = keras.Model(ids, out)
    randomise_weights(model, 3)
    assert_parity(model, post_padded(np.random.default_rng(3), 4, 5))
