"""The backward pass against tf.GradientTape: random conv stacks, random masked recurrent stacks,
every activation, pooling ties, BatchNormalization at inference, Bidirectional merge modes and
Embedding with repeated ids. Per gradient: max |g − g_tf| / max |g_tf| ≤ 1e-4; the loss to 1e-6."""
from dataclasses import replace

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from nntrace.layers import Bidirectional, activations
from nntrace.models import load_scratch
from tests.gradient_parity import assert_close, assert_gradient_parity
from tests.layers.test_conv_parity import conv_stacks
from tests.layers.test_recurrent_parity import VOCAB, post_padded, recurrent_stacks
from tests.parity import randomise_weights

L = keras.layers


# -- random conv stacks -----------------------------------------------------------------------
@st.composite
def conv_models(draw):
    """A conv stack whose head is a softmax (probabilities) or linear (logits)."""
    stack = draw(conv_stacks())
    name, kwargs = stack.layers[-1]
    stack.layers[-1] = (name, {**kwargs, "activation": draw(st.sampled_from(["softmax", "linear"]))})
    return stack


@given(conv_models(), st.integers(0, 2**16), st.integers(1, 4))
def test_random_conv_stacks_gradients_match_tensorflow(stack, seed, batch):
    keras.utils.set_random_seed(seed)  # the kernels' initial values too
    model = stack.build()
    randomise_weights(model, seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (batch,) + model.input_shape[1:]).astype(np.float32)
    y = rng.integers(0, model.output_shape[-1], batch)
    assert_gradient_parity(model, x, y)


# -- random masked recurrent stacks -----------------------------------------------------------
def build_recurrent(stack, head: str) -> keras.Model:
    """The stack of `tests.layers.test_recurrent_parity`, with a softmax or linear head."""
    inputs = keras.Input((stack.seq_len,), dtype="int32")
    x = L.Embedding(VOCAB, stack.embedding_dim, mask_zero=True)(inputs)
    for name, kwargs, merge_mode, dropout in stack.layers:
        layer = getattr(L, name)(**kwargs)
        x = (L.Bidirectional(layer, merge_mode=merge_mode) if merge_mode else layer)(x)
        if dropout:
            x = L.Dropout(0.3)(x)
    return keras.Model(inputs, L.Dense(3, activation=head)(x))


@st.composite
def masked_recurrent_models(draw):
    """A recurrent stack (some single-direction layers zeroing masked outputs), a head, a padding."""
    stack = draw(recurrent_stacks())
    layers = []
    for name, kwargs, merge_mode, dropout in stack.layers:
        if merge_mode is None and draw(st.booleans()):
            kwargs = {**kwargs, "zero_output_for_mask": True}
        layers.append((name, kwargs, merge_mode, dropout))
    return replace(stack, layers=layers), draw(st.sampled_from(["softmax", "linear"])), \
        draw(st.sampled_from(["post", "holes"]))


def padded_ids(rng, batch: int, seq_len: int, padding: str) -> np.ndarray:
    """Token ids with zeros (masked steps) at the end (`post`) or anywhere (`holes`)."""
    if padding == "post":
        return post_padded(rng, batch, seq_len)
    ids = rng.integers(1, VOCAB, (batch, seq_len))
    ids[rng.random((batch, seq_len)) < 0.4] = 0
    return ids.astype(np.int32)


@given(masked_recurrent_models(), st.integers(0, 2**16), st.integers(1, 5))
def test_random_masked_recurrent_stacks_gradients_match_tensorflow(drawn, seed, batch):
    stack, head, padding = drawn
    keras.utils.set_random_seed(seed)
    model = build_recurrent(stack, head)
    randomise_weights(model, seed)
    rng = np.random.default_rng(seed)
    x = padded_ids(rng, batch, stack.seq_len, padding)
    labels = rng.integers(0, 3, (batch,) + tuple(model.output_shape[1:-1]))  # per step for a sequence output
    assert_gradient_parity(model, x, labels)


@pytest.mark.parametrize("cell", ["SimpleRNN", "LSTM"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
def test_bidirectional_merge_modes_stacked(cell, merge_mode):
    """A return_sequences Bidirectional under another, every merge mode, masked sequences."""
    inputs = keras.Input((7,), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    x = L.Bidirectional(getattr(L, cell)(5, return_sequences=True), merge_mode=merge_mode)(x)
    x = L.Bidirectional(getattr(L, cell)(3), merge_mode=merge_mode)(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(x))
    randomise_weights(model, 11)
    rng = np.random.default_rng(11)
    assert_gradient_parity(model, padded_ids(rng, 4, 7, "holes"), rng.integers(0, 3, 4))


@pytest.mark.filterwarnings("ignore:Layer 'flatten")  # Flatten drops the mask, as intended here
@pytest.mark.parametrize("cell", [L.SimpleRNN, L.LSTM])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_go_backwards_on_masked_sequences(cell, return_sequences):
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(VOCAB, 3, mask_zero=True)(inputs)
    x = cell(4, go_backwards=True, return_sequences=return_sequences)(x)
    if return_sequences:
        x = L.Flatten()(x)
    model = keras.Model(inputs, L.Dense(3)(x))
    randomise_weights(model, 5)
    rng = np.random.default_rng(5)
    assert_gradient_parity(model, post_padded(rng, 5, 6), rng.integers(0, 3, 5))


@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_merge_mode_none_backward(return_sequences):
    """With merge_mode=None the layer gives a pair; its backward takes a pair of gradients."""
    inputs = keras.Input((6,), dtype="int32")
    emb = L.Embedding(VOCAB, 3, mask_zero=True)
    bi = L.Bidirectional(L.LSTM(4, return_sequences=return_sequences), merge_mode=None)
    model = keras.Model(inputs, bi(emb(inputs)))  # two outputs: only the layer itself is converted
    randomise_weights(model, 6)
    rng = np.random.default_rng(6)
    ids = post_padded(rng, 3, 6)
    weights = [rng.normal(size=o.shape).astype(np.float32) for o in model(ids)]
    with tf.GradientTape() as tape:
        e = emb(ids)
        tape.watch(e)
        pair = bi(e, mask=emb.compute_mask(ids))
        loss = tf.reduce_sum(pair[0] * weights[0]) + tf.reduce_sum(pair[1] * weights[1])
    want = tape.gradient(loss, [e] + bi.trainable_variables)
    layer = Bidirectional.from_config(bi.get_config())
    layer.set_weights(bi.get_weights())
    dx, grads = layer.backward(tuple(weights), np.asarray(e), np.asarray(emb.compute_mask(ids)))
    assert_close(dx, np.asarray(want[0]), "input")
    for name, g_tf in zip(layer.weight_shapes(), want[1:]):
        assert_close(grads[name], np.asarray(g_tf), name)


# -- activations ------------------------------------------------------------------------------
#: Kinks and ends where a gradient rule has to pick a side, as TensorFlow's ops do.
BOUNDARIES = [-6.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 6.0]


@pytest.mark.parametrize("name", sorted(activations.ACTIVATIONS))
def test_every_activation_gradient_matches_tensorflow_at_its_kinks(name):
    """Each activation's gradient rule against TensorFlow's gradient of Keras's own activation,
    on random values and exactly on the kinks and ends (0, ±0.5, ±1, ±3, ±6)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.array(BOUNDARIES * 2, np.float32), rng.normal(0, 3, 46).astype(np.float32)])
    x = x.reshape(4, 16)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = keras.activations.get(name)(xt)
    dy = rng.normal(size=y.shape).astype(np.float32)
    want = tape.gradient(y, xt, output_gradients=tf.constant(dy)).numpy()
    got = activations.gradient(name)(dy, x, activations.get(name)(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(set(activations.ACTIVATIONS) - {"glu"}))  # glu halves the units
@pytest.mark.parametrize("as_layer", [False, True])
def test_every_activation_gradient_matches_tensorflow(name, as_layer):
    """Each activation inside a Dense layer and as its own Activation layer."""
    keras.utils.set_random_seed(3)
    stack = [keras.Input((6,))]
    stack += [L.Dense(8), L.Activation(name)] if as_layer else [L.Dense(8, activation=name)]
    model = keras.Sequential(stack + [L.Dense(3)])
    randomise_weights(model, 3)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (5, 6)).astype(np.float32)
    assert_gradient_parity(model, x, rng.integers(0, 3, 5))


def test_softmax_layer_head_and_probabilities_gradient():
    """A final Softmax layer: the loss comes from its logits; dL/dp = −onehot / (n·p)."""
    model = keras.Sequential([keras.Input((5,)), L.Dense(4), L.Softmax()])
    randomise_weights(model, 8)
    rng = np.random.default_rng(8)
    g = assert_gradient_parity(model, rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 4, 6))
    assert not g.from_logits


# -- pooling ----------------------------------------------------------------------------------
@st.composite
def pooling_cases(draw):
    size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(size[0], 7)), draw(st.integers(size[1], 7))
    strides = draw(st.sampled_from([None, 1, 2, (1, 2)]))
    return (h, w, draw(st.integers(1, 3))), {"pool_size": size, "strides": strides,
                                             "padding": draw(st.sampled_from(["valid", "same"]))}


@given(pooling_cases(), st.sampled_from(["MaxPooling2D", "AveragePooling2D"]), st.integers(0, 2**16))
def test_pooling_backward_with_ties_matches_tensorflow(case, cls, seed):
    """Inputs of a few distinct values, so most windows tie: max routes to TensorFlow's winner."""
    shape, kwargs = case
    layer = getattr(L, cls)(**kwargs)
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.integers(0, 3, (2,) + shape).astype(np.float32))
    dy = rng.normal(size=tuple(layer.compute_output_shape(x.shape))).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * dy)
    scratch = load_scratch(keras.Sequential([keras.Input(shape), layer])).layers[0]
    dx, grads = scratch.backward(dy, np.asarray(x))
    np.testing.assert_allclose(dx, np.asarray(tape.gradient(loss, x)), rtol=1e-6, atol=1e-6)
    assert grads == {}


@pytest.mark.parametrize("size", [(2, 2), (3, 3), (1, 2), (2, 1), (1, 1)])
def test_max_pooling_windows_tiling_the_input_route_ties_like_tensorflow(size):
    """Windows that tile the input exactly (the layout of every CNN here) take a one-pass route."""
    layer = L.MaxPooling2D(size)
    rng = np.random.default_rng(sum(size))
    x = tf.constant(rng.integers(0, 2, (3, 6 * size[0], 4 * size[1], 5)).astype(np.float32))  # ties in most windows
    dy = rng.normal(size=tuple(layer.compute_output_shape(x.shape))).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * dy)
    scratch = load_scratch(keras.Sequential([keras.Input(x.shape[1:]), layer])).layers[0]
    dx, _ = scratch.backward(dy, np.asarray(x))
    np.testing.assert_array_equal(dx, np.asarray(tape.gradient(loss, x)))


@pytest.mark.parametrize("cls", ["GlobalMaxPooling2D", "GlobalAveragePooling2D"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_backward_splits_ties_like_reduce_max(cls, keepdims):
    layer = getattr(L, cls)(keepdims=keepdims)
    x = np.zeros((2, 3, 3, 2), np.float32)
    x[0, 1, 1, 0] = x[0, 2, 0, 0] = 1.0  # a two-way tie; channel 1 and sample 1 tie everywhere
    dy = np.arange(1, 5, dtype=np.float32).reshape(layer.compute_output_shape(x.shape))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt) * dy)
    scratch = load_scratch(keras.Sequential([keras.Input((3, 3, 2)), layer])).layers[0]
    np.testing.assert_allclose(scratch.backward(dy, x)[0], np.asarray(tape.gradient(loss, xt)), rtol=1e-6)


def test_max_pooling_after_relu_routes_zero_windows_to_the_first_cell():
    """An all-zero window after ReLU: TensorFlow's MaxPoolGrad sends its gradient to the window's
    first cell in row-major order (top-left), and so does the scratch layer."""
    model = keras.Sequential([keras.Input((4, 4, 1)), L.Conv2D(1, 1, activation="relu", use_bias=False),
                              L.MaxPooling2D(), L.Flatten(), L.Dense(3, activation="softmax")])
    randomise_weights(model, 2)
    model.layers[0].set_weights([np.ones((1, 1, 1, 1), np.float32)])
    x = -np.ones((2, 4, 4, 1), np.float32)  # every conv output is relu(−1) = 0
    x[1, 3, 3, 0] = 2.0
    g = assert_gradient_parity(model, x, np.array([0, 2]))
    pool_in = g.outputs[model.layers[0].name][0, :, :, 0]
    assert np.all(pool_in[1::2, :] == 0) and np.all(pool_in[:, 1::2] == 0)  # only the top-left cells
    assert np.all(pool_in[::2, ::2] != 0)


# -- BatchNormalization, Embedding, Dropout ---------------------------------------------------
def test_batch_normalization_at_inference():
    """Affine in inference: γ and β get gradients, the moving statistics get no entry."""
    model = keras.Sequential([keras.Input((5,)), L.Dense(4), L.BatchNormalization(epsilon=1e-5),
                              L.Dropout(0.5), L.Dense(3, activation="softmax")])
    randomise_weights(model, 4)
    rng = np.random.default_rng(4)
    g = assert_gradient_parity(model, rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 3, 6))
    bn = model.layers[1]
    assert {bn.gamma.path, bn.beta.path} <= set(g.weights)
    assert bn.moving_mean.path not in g.weights and bn.moving_variance.path not in g.weights


@pytest.mark.parametrize("trainable", [True, False])
def test_embedding_repeated_ids_accumulate(trainable):
    """Ids read several times sum their gradients; a frozen Embedding gets no entry."""
    model = keras.Sequential([keras.Input((5,), dtype="int32"), L.Embedding(6, 3), L.Flatten(),
                              L.Dense(3, activation="softmax")])
    randomise_weights(model, 9)
    model.layers[0].set_weights([np.random.default_rng(9).normal(size=(6, 3)).astype(np.float32)])
    model.layers[0].trainable = trainable
    ids = np.array([[1, 1, 1, 4, 0], [4, 4, 2, 1, 1]], np.int32)
    g = assert_gradient_parity(model, ids, np.array([2, 0]))
    path = model.layers[0].embeddings.path
    assert (path in g.weights) == trainable
    assert g.inputs is None
    if trainable:
        rows = g.weights[path]
        d_out = g.outputs[model.layers[0].name]
        np.testing.assert_allclose(rows[1], d_out[0, :3].sum(0) + d_out[1, 3:].sum(0), rtol=1e-6)
        assert not rows[3].any() and not rows[5].any()  # ids never read


def test_reshape_and_inference_identities():
    """Reshape, and the layers that are the identity at inference (augmentation, noise, spatial
    dropout), pass gradients through."""
    keras.utils.set_random_seed(10)
    model = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="tanh"), L.Reshape((4, 4, 1)),
                              L.RandomFlip(), L.GaussianNoise(0.3), L.SpatialDropout2D(0.5),
                              L.Conv2D(2, 2, activation="elu"), L.GlobalAveragePooling2D(),
                              L.Dense(3, activation="softmax")])
    randomise_weights(model, 10)
    rng = np.random.default_rng(10)
    assert_gradient_parity(model, rng.normal(size=(4, 12)).astype(np.float32), rng.integers(0, 3, 4))


@pytest.mark.parametrize("cls", ["MaxPooling1D", "AveragePooling1D"])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pooling_1d_backward_matches_tensorflow(cls, padding):
    layer = getattr(L, cls)(pool_size=3, strides=2, padding=padding)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.integers(0, 3, (2, 9, 4)).astype(np.float32))  # ties in most windows
    dy = rng.normal(size=tuple(layer.compute_output_shape(x.shape))).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * dy)
    scratch = load_scratch(keras.Sequential([keras.Input((9, 4)), layer])).layers[0]
    np.testing.assert_allclose(scratch.backward(dy, np.asarray(x))[0], np.asarray(tape.gradient(loss, x)),
                               rtol=1e-6, atol=1e-6)
