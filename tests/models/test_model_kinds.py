"""Seven kinds of model a learner may bring: each loads from `.keras` (safe mode) and from `.npz`,
matches Keras layer by layer, and traces (layer events, and fine steps that recombine)."""
import keras
import numpy as np
import pytest

from nntrace import trace
from nntrace.models import load_scratch
from nntrace.tracer.io import load_trace, save_trace
from tests.parity import assert_parity, randomise_weights

L = keras.layers
VOCAB = 30


def residual_cnn() -> keras.Model:
    """Residual blocks: an identity shortcut, then a strided 1×1 projection shortcut; ReLU and
    LeakyReLU as layers."""
    inputs = keras.Input((12, 12, 3))
    x = L.ReLU(name="stem_relu")(L.Conv2D(8, 3, padding="same", name="stem")(inputs))
    y = L.LeakyReLU(0.1, name="block1_leaky")(L.Conv2D(8, 3, padding="same", name="block1_conv1")(x))
    y = L.Conv2D(8, 3, padding="same", name="block1_conv2")(y)
    x = L.ReLU(name="block1_relu")(L.Add(name="block1_add")([x, y]))
    main = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="block2_conv1")(x)
    main = L.Conv2D(16, 3, padding="same", name="block2_conv2")(main)
    shortcut = L.Conv2D(16, 1, strides=2, name="block2_projection")(x)
    x = L.LeakyReLU(name="block2_leaky")(L.Add(name="block2_add")([main, shortcut]))
    return keras.Model(inputs, L.Dense(4, activation="softmax", name="out")(L.GlobalAveragePooling2D()(x)),
                       name="residual_cnn")


def inception() -> keras.Model:
    inputs = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    branches = [L.Conv2D(4, 1, activation="relu", name="b1x1")(x),
                L.SeparableConv2D(4, 3, padding="same", activation="relu", name="bsep")(x),
                L.Conv2D(4, 1, name="bdw_1x1")(L.DepthwiseConv2D(3, padding="same", name="bdw")(x)),
                L.MaxPooling2D(3, strides=1, padding="same", name="bpool")(x)]
    x = L.Concatenate(name="mixed")(branches)
    return keras.Model(inputs, L.Dense(4, activation="softmax", name="out")(L.GlobalAveragePooling2D()(x)),
                       name="inception")


def dilated_grouped() -> keras.Sequential:
    return keras.Sequential([keras.Input((12, 12, 4)),
                             L.Conv2D(8, 3, dilation_rate=2, padding="same", activation="gelu", name="dilated"),
                             L.LayerNormalization(name="ln1"),
                             L.Conv2D(8, 3, groups=4, activation="swish", name="grouped"),
                             L.LayerNormalization(axis=[1, 2, 3], name="ln2"),
                             L.Flatten(), L.Dense(4, activation="softmax", name="out")], name="dilated_grouped")


def bidirectional_gru() -> keras.Model:
    ids = keras.Input((9,), dtype="int32")
    x = L.Embedding(VOCAB, 6, mask_zero=True, name="emb")(ids)
    x = L.Bidirectional(L.GRU(5, return_sequences=True), name="bigru")(x)
    x = L.GRU(4, reset_after=False, name="gru_before")(x)
    return keras.Model(ids, L.Dense(3, activation="softmax", name="out")(x), name="bidirectional_gru")


def text_cnn() -> keras.Sequential:
    return keras.Sequential([keras.Input((12,), dtype="int32"), L.Embedding(VOCAB, 6, name="emb"),
                             L.SpatialDropout1D(0.2, name="sdrop"),
                             L.Conv1D(8, 3, activation="relu", name="conv1"), L.MaxPooling1D(2, name="pool1"),
                             L.Conv1D(8, 2, padding="causal", activation="relu", name="conv2"),
                             L.GlobalMaxPooling1D(name="gmax"), L.Dense(3, activation="softmax", name="out")],
                            name="text_cnn")


def tiny_transformer() -> keras.Model:
    ids = keras.Input((8,), dtype="int32")
    x = L.Embedding(VOCAB, 8, mask_zero=True, name="emb")(ids)
    a = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.LayerNormalization(name="ln1")(L.Add(name="res1")([x, a]))
    f = L.Dense(8, name="ff2")(L.Dense(16, activation="relu", name="ff1")(x))
    x = L.LayerNormalization(name="ln2")(L.Add(name="res2")([x, f]))
    return keras.Model(ids, L.Dense(3, activation="softmax", name="out")(L.GlobalAveragePooling1D(name="pool")(x)),
                       name="tiny_transformer")


def lstm_attention() -> keras.Model:
    ids = keras.Input((8,), dtype="int32")
    x = L.Embedding(VOCAB, 6, mask_zero=True, name="emb")(ids)
    h = L.LSTM(6, return_sequences=True, name="lstm")(x)
    att = L.Attention(name="att")([h, h])
    x = L.Concatenate(name="join")([h, att])
    return keras.Model(ids, L.Dense(3, activation="softmax", name="out")(L.GlobalAveragePooling1D(name="pool")(x)),
                       name="lstm_attention")


def token_ids(rng, batch: int, seq_len: int, padded: bool = True) -> np.ndarray:
    ids = rng.integers(1, VOCAB, (batch, seq_len))
    if padded:
        lengths = rng.integers(2, seq_len + 1, batch)
        ids[np.arange(seq_len)[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.int32)


#: builder, input maker, a layer whose fine steps are checked
KINDS = {
    "residual_cnn": (residual_cnn, lambda rng: rng.uniform(-1, 1, (3, 12, 12, 3)).astype(np.float32), "block2_add"),
    "inception": (inception, lambda rng: rng.uniform(-1, 1, (3, 10, 10, 3)).astype(np.float32), "mixed"),
    "dilated_grouped": (dilated_grouped, lambda rng: rng.uniform(-1, 1, (3, 12, 12, 4)).astype(np.float32), "grouped"),
    "bidirectional_gru": (bidirectional_gru, lambda rng: token_ids(rng, 4, 9), "gru_before"),
    "text_cnn": (text_cnn, lambda rng: token_ids(rng, 4, 12, padded=False), "conv2"),
    "tiny_transformer": (tiny_transformer, lambda rng: token_ids(rng, 4, 8), "mha"),
    "lstm_attention": (lstm_attention, lambda rng: token_ids(rng, 4, 8), "att"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_model_kind_loads_matches_and_traces(kind, tmp_path):
    build, make_input, fine = KINDS[kind]
    model = build()
    randomise_weights(model, 7)
    for layer in model.layers:  # LayerNormalization starts at gamma 1, beta 0: give it numbers
        if type(layer).__name__ == "LayerNormalization":
            rng = np.random.default_rng(8)
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    x = make_input(np.random.default_rng(9))
    model.save(tmp_path / f"{kind}.keras")

    from_file = load_scratch(tmp_path / f"{kind}.keras")
    assert_parity(keras.models.load_model(tmp_path / f"{kind}.keras", safe_mode=True), x, from_file)
    again = load_scratch(from_file.save_weights(tmp_path / f"{kind}.npz"))
    assert again.order == from_file.order and again.inbound == from_file.inbound
    np.testing.assert_array_equal(again.forward(x), from_file.forward(x))

    t = trace(again, x, sample=1)
    assert [n for n, _ in t.layers] == again.order
    steps = list(t.steps(fine))
    assert steps, f"no steps from {fine}"
    output = t.output(fine)
    kinds = {s.kind for s in steps}
    if "merge" in kinds:
        np.testing.assert_allclose(steps[-1].result, output, rtol=1e-6)
    elif "conv_patch" in kinds:
        for s in steps[::7]:
            cell = output[s.row, s.col, s.filter] if output.ndim == 3 else output[s.col, s.filter]
            assert s.value == pytest.approx(float(cell), rel=1e-4, abs=1e-5)
    elif "gru_step" in kinds:
        last = [s for s in steps if not s.masked][-1]
        np.testing.assert_allclose(last.h, output, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(last.h, last.z * last.h_prev + (1 - last.z) * last.h_tilde, rtol=1e-5, atol=1e-6)
    elif "attention" in kinds:
        for s in steps:
            np.testing.assert_allclose(s.output, s.weights @ s.values if not s.query_masked else 0, atol=1e-5)
            np.testing.assert_allclose(s.weights.sum(), 1.0, rtol=1e-5)
    path = save_trace(t, tmp_path / f"{kind}.nntrace")
    replayed = load_trace(path)
    assert replayed.layers == t.layers
    np.testing.assert_allclose(replayed.probabilities, t.probabilities, rtol=0, atol=0)
