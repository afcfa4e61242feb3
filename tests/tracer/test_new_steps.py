"""Fine-grained events of the graph-era layers recombine to the layer's vectorised output, and every
equation a view prints can be checked from the event's own fields."""
import numpy as np
import pytest

from nntrace.layers import (GRU, Add, Attention, AveragePooling1D, Concatenate, Conv1D, Conv2D, DepthwiseConv2D,
                            Dot, LayerNormalization, Maximum, MaxPooling1D, Multiply, MultiHeadAttention,
                            SeparableConv2D, Softmax, Subtract)

rng = np.random.default_rng(0)


def weights(*shapes):
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def conv_grid(events, shape):
    grid = np.full(shape, np.nan, np.float32)
    for e in events:
        grid[e.row, e.col, e.filter] = e.value
        np.testing.assert_allclose(e.products, e.patch * e.kernel, rtol=1e-6)
        assert e.total == pytest.approx(float(e.products.sum()), abs=1e-5)
        assert np.all(e.patch[e.padding] == 0)
    return grid


@pytest.mark.parametrize("config", [{"dilation_rate": 2, "padding": "same"}, {"groups": 2, "strides": 2},
                                    {"dilation_rate": (2, 1), "groups": 4, "padding": "valid"}])
def test_dilated_and_grouped_conv2d_patches(config):
    layer = Conv2D("c", filters=4, kernel_size=3, activation="relu", **config)
    layer.set_weights(weights((3, 3, 4 // config.get("groups", 1), 4), (4,)))
    x = rng.normal(size=(1, 8, 7, 4)).astype(np.float32)
    out = layer.forward(x)[0]
    events = list(layer.steps(x))
    np.testing.assert_allclose(conv_grid(events, out.shape), out, rtol=1e-5, atol=1e-5)
    e = events[-1]
    d = config.get("dilation_rate", 1)
    assert e.dilation == ((d, d) if isinstance(d, int) else d) and e.patch.shape[-1] == 4 // config.get("groups", 1)
    assert e.group == e.filter // (4 // config.get("groups", 1))
    k = [(3 - 1) * s + 1 for s in e.dilation]  # the output size formula with the dilated span
    for axis in (0, 1):
        assert (e.input_size[axis] + e.pad[axis] - k[axis]) // e.strides[axis] + 1 == out.shape[axis]


def test_depthwise_and_separable_patches():
    dw = DepthwiseConv2D("dw", kernel_size=3, depth_multiplier=2, padding="same")
    dw.set_weights(weights((3, 3, 3, 2), (6,)))
    x = rng.normal(size=(1, 5, 5, 3)).astype(np.float32)
    out = dw.forward(x)[0]
    events = list(dw.steps(x))
    np.testing.assert_allclose(conv_grid(events, out.shape), out, rtol=1e-5, atol=1e-5)
    assert {(e.filter, e.group) for e in events} == {(f, f // 2) for f in range(6)}
    sep = SeparableConv2D("sep", filters=4, kernel_size=3, depth_multiplier=2, activation="relu")
    sep.set_weights(weights((3, 3, 3, 2), (1, 1, 6, 4), (4,)))
    out = sep.forward(x)[0]
    events = list(sep.steps(x))
    pointwise = [e for e in events if e.stage == "pointwise"]
    np.testing.assert_allclose(conv_grid(pointwise, out.shape), out, rtol=1e-5, atol=1e-5)
    depthwise = [e for e in events if e.stage == "depthwise"]
    assert len(depthwise) == 3 * 3 * 6 and all(e.bias == 0 for e in depthwise)
    first = pointwise[0]  # its 1×1 patch is the depthwise stage's output at that cell
    stage_out = {(e.row, e.col, e.filter): e.value for e in depthwise}
    np.testing.assert_allclose(first.patch[0, 0], [stage_out[(first.row, first.col, f)] for f in range(6)],
                               rtol=1e-5, atol=1e-6)


def test_conv1d_and_pooling1d_steps_are_one_row():
    conv = Conv1D("c1", filters=3, kernel_size=3, padding="causal", dilation_rate=2)
    conv.set_weights(weights((3, 2, 3), (3,)))
    x = rng.normal(size=(1, 9, 2)).astype(np.float32)
    out = conv.forward(x)[0]
    events = list(conv.steps(x))
    np.testing.assert_allclose(conv_grid(events, (1,) + out.shape)[0], out, rtol=1e-5, atol=1e-5)
    assert events[0].patch.shape == (1, 3, 2) and events[0].origin == (0, -4)
    for cls in (MaxPooling1D, AveragePooling1D):
        pool = cls("p", pool_size=3, strides=2, padding="same")
        out = pool.forward(x)[0]
        for e in pool.steps(x):
            assert e.row == 0 and e.value == pytest.approx(float(out[e.col, e.channel]), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_steps(reset_after):
    layer = GRU("g", units=3, return_sequences=True, reset_after=reset_after)
    layer.set_weights(weights((2, 9), (3, 9), (2, 9) if reset_after else (9,)))
    x = rng.normal(size=(1, 5, 2)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0]], bool)
    out = layer.forward(x, mask)[0]
    for e in layer.steps(x, mask):
        np.testing.assert_allclose(e.h, out[e.step], rtol=1e-6, atol=1e-6)
        if e.masked:
            assert e.z is None and e.r is None and e.h_tilde is None and e.x_part is None
            np.testing.assert_array_equal(e.h, e.h_prev)
            continue
        sig = 1 / (1 + np.exp(-e.pre_activation[:2]))
        np.testing.assert_allclose(np.stack([e.z, e.r]), sig, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(e.h_tilde, np.tanh(e.pre_activation[2]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(e.h, e.z * e.h_prev + (1 - e.z) * e.h_tilde, rtol=1e-5, atol=1e-6)
        rb = e.recurrent_bias if reset_after else np.zeros_like(e.bias)
        np.testing.assert_allclose(e.pre_activation[:2], (e.x_part + e.bias + e.h_part + rb)[:2], rtol=1e-5,
                                   atol=1e-5)
        third = e.x_part[2] + e.bias[2] + (e.r * (e.h_part[2] + rb[2]) if reset_after else e.h_part[2])
        np.testing.assert_allclose(e.pre_activation[2], third, rtol=1e-5, atol=1e-5)
        assert (e.recurrent_bias is None) == (not reset_after)


@pytest.mark.parametrize("layer,n", [(Add("m"), 3), (Subtract("m"), 2), (Multiply("m"), 2), (Maximum("m"), 3),
                                     (Concatenate("m", axis=1), 2), (Dot("m", axes=2), 2)])
def test_merge_step_holds_operands_and_result(layer, n):
    xs = tuple(rng.normal(size=(1, 4, 3)).astype(np.float32) for _ in range(n))
    masks = tuple(np.array([[1, 1, 0, 1]], bool) for _ in range(n))
    (e,) = layer.steps(xs, masks)
    np.testing.assert_array_equal(e.result, layer.forward(xs, masks)[0])
    assert len(e.operands) == n and e.mode == type(layer).__name__.lower()
    if e.mode == "concatenate":
        np.testing.assert_array_equal(np.concatenate(e.operands, axis=e.axis), e.result)
    elif e.mode == "dot":
        np.testing.assert_allclose(np.tensordot(e.operands[0], e.operands[1], axes=([e.axes[0]], [e.axes[1]])),
                                   e.result, rtol=1e-5, atol=1e-6)
    else:
        fold = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "maximum": np.maximum}[e.mode]
        total = e.operands[0]
        for o in e.operands[1:]:
            total = fold(total, o)
        keep = e.masks[0][:, None] if e.mode == "multiply" else True  # masked in every input: 0
        np.testing.assert_allclose(np.where(keep, total, 0), e.result, rtol=1e-6)


def test_layer_normalization_steps():
    layer = LayerNormalization("ln", axis=[2, 3])
    layer.set_weights(weights((3, 2), (3, 2)))
    x = rng.normal(size=(1, 4, 3, 2)).astype(np.float32)
    out = layer.forward(x)[0]
    events = list(layer.steps(x))
    assert [e.position for e in events] == [(0,), (1,), (2,), (3,)]
    for e in events:
        np.testing.assert_allclose(e.output, out[e.position], rtol=1e-5, atol=1e-6)
        assert e.mean == pytest.approx(float(e.values.mean()), abs=1e-6)
        assert e.variance == pytest.approx(float(e.values.var()), abs=1e-5)
        np.testing.assert_allclose(e.normalized, (e.values - e.mean) / np.sqrt(e.variance + e.epsilon), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(e.normalized * e.gamma + e.beta, e.output, rtol=1e-5, atol=1e-5)


def test_multi_head_attention_steps():
    layer = MultiHeadAttention("mha", num_heads=2, key_dim=3, value_dim=4)
    layer.set_weights(weights((5, 2, 3), (2, 3), (5, 2, 3), (2, 3), (5, 2, 4), (2, 4), (2, 4, 5), (5,)))
    x = rng.normal(size=(1, 4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0]], bool)
    events = list(layer.steps((x, x, None, None), (mask, mask, None, None), use_causal_mask=True))
    assert [(e.head, e.query) for e in events] == [(h, q) for h in range(2) for q in range(4)]
    parts = layer.parts((x, x, None, None), (mask, mask, None, None), use_causal_mask=True)
    for e in events:
        np.testing.assert_allclose(e.scores, e.keys @ e.q, rtol=1e-5, atol=1e-6)
        assert e.scale == pytest.approx(1 / np.sqrt(3))
        np.testing.assert_allclose(e.scaled, e.scores * e.scale, rtol=1e-6)
        expected_mask = (np.arange(4) <= e.query) & mask[0] & mask[0, e.query]
        np.testing.assert_array_equal(e.mask, expected_mask)
        np.testing.assert_allclose(e.output, e.weights @ e.values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(e.output, parts["heads"][0, e.query, e.head], rtol=1e-6)
        np.testing.assert_allclose(e.exps / e.total, e.weights, rtol=1e-5, atol=1e-7)  # the softmax written out
        if e.mask.any():
            assert (e.exps[~e.mask] == 0).all() and e.exps[e.mask].max() == pytest.approx(1.0)
            assert (e.weights[~e.mask] == 0).all()
        else:  # a query with nothing to read reads every key equally (TensorFlow's kernel)
            np.testing.assert_allclose(e.weights, 0.25, rtol=1e-6)


def test_attention_steps_with_a_masked_query():
    layer = Attention("att", use_scale=True)
    layer.set_weights([np.array(0.5, np.float32)])
    q, v = rng.normal(size=(1, 3, 2)).astype(np.float32), rng.normal(size=(1, 4, 2)).astype(np.float32)
    masks = (np.array([[1, 1, 0]], bool), np.array([[1, 0, 1, 1]], bool))
    out = layer.forward((q, v), masks)[0]
    for e in layer.steps((q, v), masks):
        np.testing.assert_allclose(e.scaled, e.scores * e.scale, rtol=1e-6)
        np.testing.assert_allclose(e.logits, np.where(e.mask, e.scaled, e.scaled - 1e9), rtol=1e-6)
        assert e.weights[1] == 0
        np.testing.assert_allclose(e.output, out[e.query], rtol=1e-5, atol=1e-6)
        assert e.query_masked == (e.query == 2) and (not e.query_masked or (e.output == 0).all())


def test_softmax_step_of_a_masked_vector():
    layer = Softmax("s")
    x = rng.normal(size=(1, 5)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1, 0]], bool)
    (e,) = layer.steps(x, mask)
    np.testing.assert_allclose(e.probabilities, layer.forward(x, mask)[0], rtol=1e-6, atol=1e-7)


def test_activation_layer_and_masking_steps():
    from nntrace.layers import ELU, LeakyReLU, Masking, PReLU, ReLU

    x = rng.normal(size=(1, 4, 3)).astype(np.float32)
    prelu = PReLU("p", shared_axes=[1])
    prelu.set_weights(weights((1, 3)))
    for layer in (ReLU("r", max_value=1.0, negative_slope=0.1, threshold=0.2), LeakyReLU("l"), ELU("e"), prelu):
        (e,) = layer.steps(x)
        np.testing.assert_array_equal(e.x, x[0])
        np.testing.assert_array_equal(e.y, layer.forward(x)[0])
        if e.function == "relu":
            expected = np.where(e.x > e.threshold, e.x, e.negative_slope * (e.x - e.threshold))
            np.testing.assert_allclose(e.y, np.minimum(expected, e.max_value), rtol=1e-6, atol=1e-7)
        elif e.function == "prelu":
            np.testing.assert_allclose(e.y, np.where(e.x > 0, e.x, e.alpha * e.x), rtol=1e-6)
    x[0, 2] = 0.0
    (m,) = Masking("m").steps(x)
    np.testing.assert_array_equal(m.keep, [True, True, False, True])
    assert (m.y[2] == 0).all()
