"""Configurations and expected arrays from Keras 3.15's own layer tests (keras/src/layers/*/…_test.py),
run through the scratch layers: the numbers there are facts about Keras."""
import numpy as np
import pytest

from nntrace.layers import (GRU, Add, Attention, Average, Concatenate, Dot, Masking, Maximum, MaxPooling1D,
                            Minimum, MultiHeadAttention, Multiply, PReLU, ReLU, Softmax, Subtract)


def constant_gru(units: int, features: int, **config) -> GRU:
    """rnn/gru_test.py's GRU: kernel 0.01, recurrent kernel 0.02, bias 0.03 everywhere."""
    layer = GRU("gru", units=units, **config)
    bias_shape = (2, 3 * units) if config.get("reset_after", True) else (3 * units,)
    layer.set_weights([np.full((features, 3 * units), 0.01), np.full((units, 3 * units), 0.02),
                       np.full(bias_shape, 0.03)])
    return layer


@pytest.mark.parametrize("config,expected", [
    ({}, [0.5217289, 0.6371659, 0.39384964]),
    ({"go_backwards": True}, [0.24406259, 0.611516, 0.3928808]),
    ({"reset_after": False}, [0.51447755, 0.6426879, 0.40208298]),
])
def test_gru_correctness(config, expected):
    """gru_test.py test_correctness."""
    sequence = np.arange(72).reshape((3, 6, 4)).astype("float32")
    out = constant_gru(3, 4, **config).forward(sequence)
    np.testing.assert_allclose(out, np.repeat(np.array(expected)[:, None], 3, axis=1), atol=1e-5, rtol=1e-5)


def test_gru_masking():
    """gru_test.py test_masking: masked steps carry the state."""
    sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
    mask = np.array([[True, True, False, True], [True, False, False, True]])
    np.testing.assert_allclose(constant_gru(2, 3).forward(sequence, mask),
                               [[0.19393763, 0.19393763], [0.30818558, 0.30818558]], atol=1e-5, rtol=1e-5)
    out = constant_gru(2, 3, return_sequences=True).forward(sequence, mask)
    np.testing.assert_allclose(out[0], [[0.03606692] * 2, [0.09497581] * 2, [0.09497581] * 2, [0.19393763] * 2],
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out[1, :3], [[0.16051409] * 2] * 3, atol=1e-5, rtol=1e-5)


def test_attention_correctness():
    """attention/attention_test.py test_attention_correctness: dot and concat scores."""
    query = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    key = np.array([[[0.0, 1.0], [1.0, 0.0]]], np.float32)
    value = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)
    dot = Attention("att", score_mode="dot")
    parts = dot.parts((query, value, key), None)
    np.testing.assert_allclose(parts["output"], [[[2.462, 3.462], [1.538, 2.538]]], atol=1e-3)
    np.testing.assert_allclose(parts["weights"], [[[0.269, 0.731], [0.731, 0.269]]], atol=1e-3)
    concat = Attention("att", score_mode="concat")
    concat.set_weights([np.array(1.0, np.float32)])  # concat_score_weight starts at one
    parts = concat.parts((query, value, key), None)
    np.testing.assert_allclose(parts["output"], [[[1.727, 2.727], [2.272, 3.272]]], atol=1e-3)
    np.testing.assert_allclose(parts["weights"], [[[0.636, 0.363], [0.363, 0.636]]], atol=1e-3)


def test_attention_with_mask():
    """attention_test.py test_attention_with_mask: a masked value gets no weight, a masked query
    gives 0."""
    layer = Attention("att")
    query = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    value = np.array([[[1.0, 1.0], [1.0, 1.0]]], np.float32)
    parts = layer.parts((query, value), (np.array([[True, False]]), np.array([[True, False]])))
    np.testing.assert_allclose(parts["output"], [[[1.0, 1.0], [0.0, 0.0]]])
    np.testing.assert_allclose(parts["weights"], [[[1.0, 0.0], [1.0, 0.0]]])


def test_multi_head_attention_correctness():
    """multi_head_attention_test.py test_correctness: identity projections, 8 heads."""
    heads = key_dim = 8
    query = key = np.identity(key_dim, dtype=np.float32)[None]
    value = (np.arange(key_dim * key_dim).reshape(1, key_dim, key_dim) / 100.0).astype(np.float32)
    layer = MultiHeadAttention("mha", num_heads=heads, key_dim=key_dim)
    kernel = np.repeat(np.identity(key_dim)[:, None, :], heads, axis=1)
    bias = np.zeros((heads, key_dim))
    layer.set_weights([kernel, bias] * 3 + [kernel, np.zeros(key_dim)])
    parts = layer.parts((query, value, key), None)
    expected = np.array([2.406, 2.440, 2.473, 2.504, 2.535, 2.568, 2.602, 2.633])
    np.testing.assert_allclose(parts["output"], np.tile(expected[None, :, None], (1, 1, key_dim)), atol=1e-2)
    scores = np.full((key_dim, key_dim), 0.1187) + np.identity(key_dim) * (0.1691 - 0.1187)
    np.testing.assert_allclose(parts["weights"], np.tile(scores[None, None], (1, heads, 1, 1)), atol=1e-2)


@pytest.mark.parametrize("causal", [True, False])
def test_multi_head_attention_masks_equal_the_manual_attention_mask(causal):
    """multi_head_attention_test.py test_masking: the query, value and causal masks are the
    attention mask written out by hand."""
    rng = np.random.default_rng(0)
    layer = MultiHeadAttention("mha", num_heads=2, key_dim=2)
    layer.set_weights([rng.normal(size=s).astype(np.float32) for s in
                       [(8, 2, 2), (2, 2), (8, 2, 2), (2, 2), (8, 2, 2), (2, 2), (2, 2, 8), (8,)]])
    query_ids = np.array([[1, 2, 3, 0, 0], [3, 3, 1, 1, 2], [1, 0, 0, 0, 0]])
    value_ids = np.array([[5, 4, 0], [3, 0, 0], [2, 1, 1]])
    query, value = rng.normal(size=(3, 5, 8)).astype(np.float32), rng.normal(size=(3, 3, 8)).astype(np.float32)
    manual = np.array([[[1, 1, 0]] * 3 + [[0, 0, 0]] * 2] + [[[1, 0, 0]] * 5] + [[[1, 1, 1]] + [[0, 0, 0]] * 4])
    if causal:
        manual = manual & np.array([[[1, 0, 0], [1, 1, 0]] + [[1, 1, 1]] * 3])
    auto = layer.forward((query, value, None, None), mask=(query_ids != 0, value_ids != 0, None, None),
                         use_causal_mask=causal)
    np.testing.assert_allclose(auto, layer.forward((query, value, None, manual)), rtol=1e-6, atol=1e-6)


def test_multi_head_attention_sliding_window():
    """multi_head_attention_test.py test_sliding_window: keys further than the window get no weight."""
    rng = np.random.default_rng(0)
    layer = MultiHeadAttention("mha", num_heads=2, key_dim=4, sliding_window=3)
    layer.set_weights([rng.normal(size=s).astype(np.float32) for s in
                       [(8, 2, 4), (2, 4), (8, 2, 4), (2, 4), (8, 2, 4), (2, 4), (2, 4, 8), (8,)]])
    x = np.random.RandomState(0).randn(1, 6, 8).astype("float32")
    for causal in (True, False):
        weights = layer.parts((x, x), None, use_causal_mask=causal)["weights"][0, 0]
        i, j = np.indices(weights.shape)
        inside = (abs(i - j) < 3) & ((j <= i) if causal else True)
        assert (weights[inside] > 0).all() and (weights[~inside] == 0).all()


def masked(x: list) -> tuple[np.ndarray, np.ndarray]:
    """merging_test.py's inputs through Masking(): (values, mask)."""
    x = np.array(x, np.float32)
    layer = Masking("m")
    return layer.forward(x), layer.compute_mask(x, None)


X1 = [[[0, 0], [1, 2], [0, 0], [3, 4]]]
X2 = [[[0, 0], [0, 0], [1, 2], [3, 4]]]


@pytest.mark.parametrize("cls,one_mask,two_masks", [
    (Add, [[[0, 0], [1, 2], [1, 2], [6, 8]]], [[[0, 0], [1, 2], [1, 2], [6, 8]]]),
    (Subtract, [[[0, 0], [1, 2], [-1, -2], [0, 0]]], [[[0, 0], [1, 2], [-1, -2], [0, 0]]]),
    (Average, [[[0, 0], [0.5, 1], [0.5, 1], [3, 4]]], [[[0, 0], [0.5, 1], [0.5, 1], [3, 4]]]),
    (Multiply, [[[0, 0], [0, 0], [1, 2], [9, 16]]], [[[0, 0], [1, 2], [1, 2], [9, 16]]]),
    (Minimum, [[[0, 0], [0, 0], [1, 2], [3, 4]]], [[[0, 0], [1, 2], [1, 2], [3, 4]]]),
])
def test_merges_with_masks(cls, one_mask, two_masks):
    """merging_test.py test_{add,subtract,average,multiply,minimum}_with_mask."""
    (x1, m1), (x2, m2) = masked(X1), masked(X2)
    layer = cls("merge")
    np.testing.assert_allclose(layer.forward((x1, np.array(X2, np.float32)), (m1, None)), one_mask)
    assert layer.compute_mask((x1, x2), (m1, None)) is None
    np.testing.assert_allclose(layer.forward((x1, x2), (m1, m2)), two_masks)
    np.testing.assert_array_equal(layer.compute_mask((x1, x2), (m1, m2)), [[0, 1, 1, 1]])


def test_maximum_with_mask():
    """merging_test.py test_maximum_with_mask."""
    (x1, m1), (x2, m2) = masked([[[0, 0], [-1, -2], [0, 0], [-3, -4]]]), masked([[[0, 0], [0, 0], [-1, -2], [-3, -4]]])
    layer = Maximum("max")
    np.testing.assert_allclose(layer.forward((x1, x2), (m1, None)), [[[0, 0], [0, 0], [-1, -2], [-3, -4]]])
    np.testing.assert_allclose(layer.forward((x1, x2), (m1, m2)), [[[0, 0], [-1, -2], [-1, -2], [-3, -4]]])


def test_concatenate_with_mask():
    """merging_test.py test_concatenate_with_mask: along time the masks join, along features they OR."""
    (x1, m1), x2 = masked(X1), np.array(X2, np.float32)
    along_time = Concatenate("c", axis=1)
    np.testing.assert_allclose(along_time.forward((x1, x2), (m1, None)),
                               [[[0, 0], [1, 2], [0, 0], [3, 4], [0, 0], [0, 0], [1, 2], [3, 4]]])
    np.testing.assert_array_equal(along_time.compute_mask((x1, x2), (m1, None)), [[0, 1, 0, 1, 1, 1, 1, 1]])
    along_features = Concatenate("c", axis=2)
    np.testing.assert_allclose(along_features.forward((x1, x2), (m1, None)),
                               [[[0, 0, 0, 0], [1, 2, 0, 0], [0, 0, 1, 2], [3, 4, 3, 4]]])
    np.testing.assert_array_equal(along_features.compute_mask((x1, x2), (m1, None)), [[1, 1, 1, 1]])


@pytest.mark.parametrize("shape,axes,out_shape", [((2, 4), -1, (2, 1)), ((2, 4, 5), -1, (2, 4, 4))])
def test_dot_shapes_and_values(shape, axes, out_shape):
    """merging_test.py dot_2d / dot_3d: np_dot on random inputs."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)
    out = Dot("dot", axes=axes).forward((x1, x2))
    assert out.shape == out_shape
    expected = np.einsum("bi,bi->b", x1, x2)[:, None] if len(shape) == 2 else np.einsum("bik,bjk->bij", x1, x2)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_dot_higher_dim():
    """merging_test.py test_dot_higher_dim: (1, 3, 2)·(1, 1, 2, 3) on axes (-2, -1) → (1, 2, 1, 2)."""
    rng = np.random.default_rng(0)
    assert Dot("dot", axes=(-2, -1)).forward((rng.random((1, 3, 2)), rng.random((1, 1, 2, 3)))).shape == (1, 2, 1, 2)


def test_softmax_cases():
    """activations/softmax_test.py: plain, axis=1, axis=(1, 0) with a 0/1 mask, and a fully masked row."""
    x = np.array([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]], np.float32)
    expected = [[0.21194157, 0.5761169, 0.21194157]] * 2
    np.testing.assert_allclose(Softmax("s").forward(x), expected, rtol=1e-6)
    np.testing.assert_allclose(Softmax("s", axis=1).forward(x), expected, rtol=1e-6)
    mask = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(Softmax("s", axis=(1, 0)).forward(x, mask),
                               [[0.21194154, 0.0, 0.21194154], [0.0, 0.57611686, 0.0]], rtol=1e-6)
    x = np.array([[1.0, 2.0, 5.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 2.0, 4.0]], np.float32)
    mask = np.array([[True, True, False, False], [False] * 4, [True] * 4])
    out = Softmax("s").forward(x, mask)
    assert (out[~mask] == 0).all()
    np.testing.assert_allclose(out.sum(-1), [1, 0, 1], rtol=1e-6)


@pytest.mark.parametrize("config,x,expected", [
    ({"max_value": 10, "negative_slope": 0.0, "threshold": 0}, [-10, -5, 0.0, 5, 10], [0.0, 0.0, 0.0, 5.0, 10.0]),
    ({"max_value": 10, "negative_slope": 0.5, "threshold": 0}, [-10, -5, 0.0, 5, 10], [-5.0, -2.5, 0.0, 5.0, 10.0]),
    ({"max_value": 8, "negative_slope": 0.0, "threshold": 5}, [6.0, 7.0, 0.0, 5, 10], [6.0, 7.0, 0.0, 0.0, 8.0]),
])
def test_relu_layer_cases(config, x, expected):
    """activations/relu_test.py: plain, leaky and thresholded ReLU with a cap."""
    np.testing.assert_allclose(ReLU("r", **config).forward(np.array([x], np.float32))[0], expected)


def test_prelu_correctness():
    """activations/prelu_test.py: shared axes (1, 2)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 10, 5, 3)).astype(np.float32)
    alpha = rng.random((1, 1, 3)).astype(np.float32)
    layer = PReLU("p", shared_axes=(1, 2))
    layer.set_weights([alpha])
    np.testing.assert_allclose(layer.forward(x), (x > 0) * x + (x <= 0) * alpha * x, rtol=1e-6)


def test_masking_correctness():
    """core/masking_test.py test_masking_correctness."""
    x = np.array([[[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]], [[2.0, 2.0], [0.0, 0.0], [2.0, 1.0]]], np.float32)
    np.testing.assert_array_equal(Masking("m").compute_mask(x, None), [[False, True, False], [True, False, True]])


@pytest.mark.parametrize("pool_size,strides,padding", [(2, 1, "valid"), (2, 1, "same"), ((2,), (2,), "valid")])
def test_max_pooling1d(pool_size, strides, padding):
    """pooling/max_pooling_test.py test_max_pooling1d (channels last) against its windows."""
    x = np.arange(24, dtype="float32").reshape((2, 3, 4))
    out = MaxPooling1D("p", pool_size=pool_size, strides=strides, padding=padding).forward(x)
    size = pool_size[0] if isinstance(pool_size, tuple) else pool_size
    step = strides[0] if isinstance(strides, tuple) else strides
    padded = np.pad(x, ((0, 0), (0, 1), (0, 0)), constant_values=-np.inf) if padding == "same" else x
    n = out.shape[1]
    expected = np.stack([padded[:, i * step:i * step + size].max(axis=1) for i in range(n)], axis=1)
    np.testing.assert_array_equal(out, expected)
    assert n == (2 if padding == "valid" and step == 1 else 3 if padding == "same" else 1)
