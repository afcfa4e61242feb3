"""Backward trace events recombine to the vectorised gradients of the layer that emitted them:
the loss gradient is p − onehot, a dense unit's weight gradients are x·δ, a conv weight's gradient
is the sum of its products over output cells, an input cell's gradient the sum of weight · δ,
pooling routes each window's gradient into the input gradient, and backpropagation through time
chains step to step."""
import numpy as np
import pytest

from nntrace.layers import (LSTM, AveragePooling2D, Bidirectional, Conv2D, Dense, Embedding, Flatten, MaxPooling2D,
                            SimpleRNN)
from nntrace.models import load_scratch
from nntrace.models.backward_trace import trace_backward
from nntrace.models.scratch import ScratchModel

rng = np.random.default_rng(7)
PRETRAINED = "models/pretrained"


def image_model(padding: str, strides, pool) -> ScratchModel:
    conv = Conv2D("conv", filters=3, kernel_size=(3, 2), strides=strides, padding=padding, activation="tanh")
    conv.set_weights([rng.normal(size=(3, 2, 2, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)])
    pooling = pool("pool", pool_size=2, strides=1, padding="same")
    dense = Dense("head", units=4, activation="softmax")
    model = ScratchModel([conv, pooling, Flatten("flat"), dense], name="small")
    shape = model.layers[1].forward(conv.forward(np.zeros((1, 7, 6, 2), np.float32))).shape
    dense.set_weights([rng.normal(size=(int(np.prod(shape[1:])), 4)).astype(np.float32),
                       rng.normal(size=4).astype(np.float32)])
    return model


def grads_of(model, x, label):
    return model.gradients(x, np.array([label]))


@pytest.mark.parametrize("padding,strides,pool", [("same", 1, MaxPooling2D), ("same", 2, AveragePooling2D),
                                                  ("valid", (2, 1), MaxPooling2D)])
def test_image_backward_steps_recombine(padding, strides, pool):
    model = image_model(padding, strides, pool)
    x = rng.normal(size=(1, 7, 6, 2)).astype(np.float32)
    label = 2
    g = grads_of(model, x, label)
    t = trace_backward(model, x, label=label)
    assert [n for n, _ in t.layers] == ["loss", "head", "flat", "pool", "conv", "input"]

    loss = next(t.steps("loss"))
    np.testing.assert_array_equal(loss.gradient, loss.probabilities - loss.onehot)
    assert loss.onehot[label] == 1 and loss.loss == pytest.approx(g.loss, rel=1e-6)
    assert loss.loss == pytest.approx(-np.log(loss.probabilities[label]), rel=1e-5)

    units = list(t.steps("head"))
    assert len(units) == 4
    kernel_grad = g.layer_weights["head"]["kernel"]
    for e in units:
        assert e.from_loss and e.delta == pytest.approx(loss.gradient[e.unit], abs=1e-7)
        assert e.bias_gradient == pytest.approx(g.layer_weights["head"]["bias"][e.unit], abs=1e-7)
        np.testing.assert_allclose(e.weight_gradients, e.x * np.float32(e.delta), rtol=1e-6)
        np.testing.assert_allclose(e.weight_gradients, kernel_grad[e.inputs, e.unit], rtol=1e-5, atol=1e-8)
        assert np.all(np.diff(np.abs(e.weight_gradients)) <= 1e-12)  # largest first

    x_pool = t.inputs["pool"][0][0]
    routed = np.zeros_like(x_pool)
    for e in t.steps("pool"):
        ph, pw = e.routed.shape
        for i in range(ph):
            for j in range(pw):
                r, c = e.origin[0] + i, e.origin[1] + j
                if e.real[i, j]:
                    routed[r, c, e.channel] += e.routed[i, j]
        assert e.routed.sum() == pytest.approx(e.output_gradient, rel=1e-5, abs=1e-9)
    pool_event = next(ev for ev in t.events if ev.layer == "pool")
    np.testing.assert_allclose(routed, pool_event.input_gradient, rtol=1e-5, atol=1e-7)

    steps = list(t.steps("conv"))
    kernels = [e for e in steps if e.kind == "conv_kernel_gradient"]
    cells = [e for e in steps if e.kind == "conv_input_gradient"]
    assert len(kernels) == 3 * 2 * 2 * 3 and len(cells) == 7 * 6 * 2
    d_kernel = g.layer_weights["conv"]["kernel"]
    for e in kernels:
        np.testing.assert_allclose(e.products, e.inputs * e.deltas, rtol=1e-6)
        assert e.total == pytest.approx(d_kernel[e.tap + (e.filter,)], rel=1e-4, abs=1e-6)
    conv_event = next(ev for ev in t.events if ev.layer == "conv")
    for e in cells:
        np.testing.assert_allclose(e.cell_sums, (e.weights * e.deltas).sum(axis=1), rtol=1e-5, atol=1e-7)
        assert e.total == pytest.approx(conv_event.input_gradient[e.row, e.col, e.channel], rel=1e-4, abs=1e-6)
    saliency = next(t.steps("input"))
    np.testing.assert_allclose(saliency.gradient, g.inputs[0], rtol=1e-6)
    np.testing.assert_array_equal(saliency.saliency, np.abs(g.inputs[0]).max(axis=-1))


def test_a_conv_input_cell_lists_every_patch_that_read_it():
    model = image_model("same", 2, MaxPooling2D)
    x = rng.normal(size=(1, 7, 6, 2)).astype(np.float32)
    t = trace_backward(model, x, label=0)
    conv = model.layer("conv")
    cells = [ev for ev in t.steps("conv") if ev.kind == "conv_input_gradient"]
    assert len(cells) == 7 * 6 * 2
    for e in cells:
        # every listed cell's patch holds the input cell at the listed tap, and no other cell's does
        for (orow, ocol), (i, j) in zip(e.cells, e.taps):
            patch = next(conv.steps(t.inputs["conv"][0], rows=[orow], cols=[ocol], filters=[0]))
            assert (patch.origin[0] + i, patch.origin[1] + j) == (e.row, e.col)
        assert len(e.cells) <= 3 * 2


def test_dense_hidden_unit_delta_is_the_output_gradient_times_the_slope():
    dense = Dense("hidden", units=5, activation="tanh")
    dense.set_weights([rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)])
    head = Dense("head", units=3)
    head.set_weights([rng.normal(size=(5, 3)).astype(np.float32), np.zeros(3, np.float32)])
    model = ScratchModel([dense, head], name="mlp")
    x = rng.normal(size=(1, 4)).astype(np.float32)
    t = trace_backward(model, x, label=1)
    assert next(t.steps("loss")).from_logits
    g = grads_of(model, x, 1)
    for e in t.steps("hidden"):
        assert not e.from_loss
        assert e.delta == pytest.approx(e.output_gradient * e.slope, rel=1e-5, abs=1e-9)
        assert e.output_gradient == pytest.approx(g.outputs["hidden"][0, e.unit], rel=1e-6)
        np.testing.assert_allclose(e.weight_gradients, g.layer_weights["hidden"]["kernel"][e.inputs, e.unit],
                                   rtol=1e-5, atol=1e-9)


def recurrent_model(cell, bidirectional: bool, return_sequences: bool, go_backwards: bool) -> ScratchModel:
    vocab, dim, units = 12, 4, 3
    emb = Embedding("emb", input_dim=vocab, output_dim=dim, mask_zero=True)
    emb.set_weights([rng.normal(size=(vocab, dim)).astype(np.float32)])
    gates = 4 if cell is LSTM else 1

    def make(name, backwards):
        layer = cell(name, units=units, return_sequences=return_sequences, go_backwards=backwards)
        layer.set_weights([rng.normal(size=(dim, gates * units)).astype(np.float32),
                           rng.normal(size=(units, gates * units)).astype(np.float32),
                           rng.normal(size=gates * units).astype(np.float32)])
        return layer

    if bidirectional:
        fwd, bwd = make("f", go_backwards), make("b", not go_backwards)
        for layer in (fwd, bwd):
            layer.config["zero_output_for_mask"] = return_sequences
        rnn = Bidirectional("rnn", fwd, bwd, merge_mode="concat")
        rnn.set_weights(fwd.get_weights() + bwd.get_weights())
    else:
        rnn = make("rnn", go_backwards)
    layers = [emb, rnn]
    if return_sequences:
        from nntrace.layers import GlobalAveragePooling1D
        layers.append(GlobalAveragePooling1D("avg"))
    head = Dense("head", units=3, activation="softmax")
    width = units * (2 if bidirectional else 1)
    head.set_weights([rng.normal(size=(width, 3)).astype(np.float32), np.zeros(3, np.float32)])
    return ScratchModel(layers + [head], name="rnn")


@pytest.mark.parametrize("cell", [LSTM, SimpleRNN])
@pytest.mark.parametrize("bidirectional,return_sequences,go_backwards",
                         [(False, False, False), (False, False, True), (True, False, False), (True, True, False)])
def test_backpropagation_through_time_steps_recombine(cell, bidirectional, return_sequences, go_backwards):
    model = recurrent_model(cell, bidirectional, return_sequences, go_backwards)
    if return_sequences and not hasattr(model.layer("avg"), "backward"):
        pytest.skip("no backward for GlobalAveragePooling1D")
    ids = np.array([[3, 5, 1, 7, 0, 0]], np.int32)  # post-padded: the last two steps are masked
    t = trace_backward(model, ids, label=1)
    g = grads_of(model, ids, 1)
    steps = list(t.steps("rnn"))
    # a lone layer that reads the sequence reversed names its sweep "backward", as the app titles it
    directions = ["forward", "backward"] if bidirectional else ["backward" if go_backwards else "forward"]
    assert len(steps) == 6 * len(directions)
    rnn = model.layer("rnn")
    for direction in directions:
        sweep = [e for e in steps if e.direction == direction]
        layer = rnn if not bidirectional else (rnn.forward_layer if direction == "forward" else rnn.backward_layer)
        prefix = "" if not bidirectional else f"{direction}_"
        assert [e.step for e in sweep] == list(range(5, -1, -1))  # the last processed step first
        bias_grad = sum(e.dz.reshape(-1) for e in sweep if not e.masked)
        np.testing.assert_allclose(bias_grad, g.layer_weights["rnn"][f"{prefix}bias"], rtol=1e-4, atol=1e-6)
        x = t.inputs["rnn"][0][0]
        kernel_grad = sum(np.outer(x[e.time], e.dz.reshape(-1)) for e in sweep if not e.masked)
        np.testing.assert_allclose(kernel_grad, g.layer_weights["rnn"][f"{prefix}kernel"], rtol=1e-4, atol=1e-6)
        for later, earlier in zip(sweep, sweep[1:]):  # what one step passes on, the next receives
            np.testing.assert_array_equal(earlier.dh_next, later.dh_prev)
            if cell is LSTM:
                np.testing.assert_array_equal(earlier.dc_next, later.dc_prev)
        for e in sweep:
            assert e.masked == (e.time >= 4)
            if e.masked:
                np.testing.assert_array_equal(e.dh_prev, e.dh_next)
                assert e.dz is None
                continue
            np.testing.assert_allclose(e.dh, e.dh_out + e.dh_next, rtol=1e-6)
            assert e.norm == pytest.approx(float(np.linalg.norm(e.dh)), rel=1e-6)
            if cell is LSTM:
                i, f, gg, o = e.gates
                np.testing.assert_allclose(e.dc, e.dc_next + e.dh * o * e.c_slope, rtol=1e-4, atol=1e-7)
                want = np.stack([e.dc * gg, e.dc * e.c_prev, e.dc * i, e.dh * e.c_act]) * e.slopes
                np.testing.assert_allclose(e.dz, want, rtol=1e-4, atol=1e-7)
                np.testing.assert_allclose(e.dc_prev, e.dc * f, rtol=1e-6)
            else:
                np.testing.assert_allclose(e.dz[0], e.dh * e.slopes[0], rtol=1e-5, atol=1e-8)
        earliest = [e for e in sweep if not e.masked][-1]  # the first real step processed
        np.testing.assert_allclose(earliest.dh_prev, earliest.dz.reshape(-1) @ layer.weights["recurrent_kernel"].T,
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,text", [("lstm", "Makanannya tidak enak dan pelayanannya lambat sekali"),
                                       ("simple_rnn", "tidak enak")])
def test_shipped_text_models_give_a_norm_per_token(name, text):
    model = load_scratch(f"{PRETRAINED}/{name}.npz")
    t = trace_backward(model, text)
    assert t.context["label"] == int(np.argmax(model.predict_proba([text])[0]))
    layer = next(n for n, cls in t.layers if cls == "Bidirectional")
    steps = list(t.steps(layer))
    tokens = len(t.context["tokens"])
    assert len(steps) == 2 * tokens
    real = [e for e in steps if not e.masked]
    assert len(real) == 2 * len(text.split()) and all(e.norm > 0 for e in real)


def test_the_shipped_cnn_backward_trace_matches_its_gradients():
    model = load_scratch(f"{PRETRAINED}/cnn.npz")
    image = np.load(f"{PRETRAINED}/default-image.npz", allow_pickle=False)["pixels"][None]
    t = trace_backward(model, image, label=3)
    g = grads_of(model, image, 3)
    for e in t.events[1:]:
        want = g.outputs[e.layer]
        if e.from_loss:
            continue
        np.testing.assert_array_equal(e.output_gradient, want[0])
        assert e.norm == pytest.approx(float(np.linalg.norm(want[0])), rel=1e-6)
    first = next(t.steps("conv2d_1", filters=[5], taps=[(1, 2, 0)]))
    assert first.total == pytest.approx(g.layer_weights["conv2d_1"]["kernel"][1, 2, 0, 5], rel=1e-4, abs=1e-7)
    with pytest.raises(Exception, match="label"):
        trace_backward(model, image, label=10)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_backward_steps_recombine_to_the_input_bias_and_kernel(reset_after):
    from nntrace.layers import GRU

    vocab, dim, units = 9, 4, 3
    emb = Embedding("emb", input_dim=vocab, output_dim=dim, mask_zero=True)
    emb.set_weights([rng.normal(size=(vocab, dim)).astype(np.float32)])
    gru = GRU("rnn", units=units, reset_after=reset_after)
    bias = rng.normal(size=(2, 3 * units) if reset_after else (3 * units,)).astype(np.float32)
    gru.set_weights([rng.normal(size=(dim, 3 * units)).astype(np.float32),
                     rng.normal(size=(units, 3 * units)).astype(np.float32), bias])
    head = Dense("head", units=3, activation="softmax")
    head.set_weights([rng.normal(size=(units, 3)).astype(np.float32), np.zeros(3, np.float32)])
    model = ScratchModel([emb, gru, head], name="gru")
    ids = np.array([[2, 4, 8, 1, 0]], np.int32)
    t = trace_backward(model, ids, label=0)
    g = grads_of(model, ids, 0)
    steps = list(t.steps("rnn"))
    assert [e.cell for e in steps] == ["gru"] * 5 and [e.masked for e in steps] == [True] + [False] * 4
    input_bias = g.layer_weights["rnn"]["bias"][0] if reset_after else g.layer_weights["rnn"]["bias"]
    np.testing.assert_allclose(sum(e.dz.reshape(-1) for e in steps if not e.masked), input_bias, rtol=1e-4, atol=1e-6)
    for later, earlier in zip(steps, steps[1:]):
        np.testing.assert_array_equal(earlier.dh_next, later.dh_prev)


def test_a_backward_conv_layer_counts_its_steps_without_producing_them():
    from nntrace.views.replay import JumpError, Replay

    model = image_model("same", 1, MaxPooling2D)
    x = rng.normal(size=(1, 7, 6, 2)).astype(np.float32)
    t = trace_backward(model, x, label=1)
    assert t.step_total("conv") == len(list(t.steps("conv"))) == 3 * 2 * 2 * 3 + 7 * 6 * 2
    replay = Replay(t)
    replay.go_layer([n for n, _ in t.layers].index("conv"))
    assert replay.known_step_count() == 120 and len(replay._events.get("conv", [])) <= 1
    with pytest.raises(JumpError, match="1–120"):
        replay.go_step(500)
