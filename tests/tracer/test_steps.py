"""Fine-grained events recombine exactly to the vectorised outputs of the layer that emitted them."""
import numpy as np
import pytest

from nntrace.layers import (LSTM, AveragePooling2D, Bidirectional, Conv2D, Dense, Embedding, Flatten, MaxPooling2D,
                    SimpleRNN)

rng = np.random.default_rng(0)


def conv(padding, strides, activation="relu", kernel=(3, 2)):
    layer = Conv2D("c", filters=4, kernel_size=kernel, strides=strides, padding=padding, activation=activation)
    layer.set_weights([rng.normal(size=kernel + (3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)])
    return layer


@pytest.mark.parametrize("padding,strides,activation", [("same", 1, "relu"), ("same", 2, "tanh"),
                                                        ("valid", (2, 1), "linear")])
def test_every_conv_cell_equals_its_patch_event(padding, strides, activation):
    layer = conv(padding, strides, activation)
    x = rng.normal(size=(1, 7, 6, 3)).astype(np.float32)
    out = layer.forward(x)[0]
    events = list(layer.steps(x))
    assert len(events) == out.size
    seen = np.full(out.shape, np.nan, np.float32)
    for e in events:
        seen[e.row, e.col, e.filter] = e.value
        np.testing.assert_allclose(e.products, e.patch * e.kernel)
        np.testing.assert_allclose(e.total, e.products.sum(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(e.channel_totals, e.products.sum(axis=(0, 1)), rtol=1e-6, atol=1e-6)
        assert e.channel_totals.shape == (3,) and e.channel_totals.sum() == pytest.approx(e.total, abs=1e-5)
        assert e.activation == activation
        assert e.pre_activation == pytest.approx(e.total + e.bias, abs=1e-5)
        assert np.all(e.patch[e.padding] == 0)
    np.testing.assert_allclose(seen, out, rtol=1e-5, atol=1e-5)


def test_conv_padding_cells_are_marked():
    layer = conv("same", 1, kernel=(3, 3))
    e = next(layer.steps(rng.normal(size=(1, 5, 5, 3)).astype(np.float32), rows=[0], cols=[0], filters=[1]))
    assert e.origin == (-1, -1)
    np.testing.assert_array_equal(e.padding, [[1, 1, 1], [1, 0, 0], [1, 0, 0]])


@pytest.mark.parametrize("cls,padding", [(MaxPooling2D, "valid"), (MaxPooling2D, "same"),
                                         (AveragePooling2D, "same"), (AveragePooling2D, "valid")])
def test_pooling_windows_equal_the_output(cls, padding):
    layer = cls("p", pool_size=3, strides=2, padding=padding)
    x = rng.normal(size=(1, 7, 8, 2)).astype(np.float32)
    out = layer.forward(x)[0]
    events = list(layer.steps(x))
    assert len(events) == out.size
    for e in events:
        assert e.value == pytest.approx(out[e.row, e.col, e.channel], rel=1e-5, abs=1e-6)
        if e.winner is not None:
            assert e.window[e.winner] == e.value
        assert np.isnan(e.window[~e.real]).all()


def test_dense_neurons_and_softmax_recombine():
    layer = Dense("d", units=5, activation="softmax")
    layer.set_weights([rng.normal(size=(12, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)])
    x = rng.normal(size=(1, 12)).astype(np.float32)
    out = layer.forward(x)[0]
    events = list(layer.steps(x, top=12))
    neurons, softmax = events[:-1], events[-1]
    assert softmax.kind == "softmax"
    np.testing.assert_allclose(softmax.probabilities, out, rtol=1e-6)
    np.testing.assert_allclose(softmax.exps / softmax.total, softmax.probabilities)
    for n in neurons:
        assert n.value == pytest.approx(out[n.unit], rel=1e-5)
        assert n.pre_activation == pytest.approx(softmax.logits[n.unit], rel=1e-5, abs=1e-5)
        assert abs(n.contributions[0]) >= abs(n.contributions[-1])  # largest first
        assert n.total == pytest.approx(float(n.contributions.sum()), rel=1e-5, abs=1e-5)
        assert n.rest == pytest.approx(0.0, abs=1e-5) and n.n_inputs == 12


def test_dense_top_contributions_plus_the_rest_give_the_total():
    layer = Dense("d", units=3, activation="relu")
    layer.set_weights([rng.normal(size=(40, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)])
    x = rng.normal(size=(1, 40)).astype(np.float32)
    x1 = x[0]
    for n in layer.steps(x, top=5):
        full = x1 * layer.weights["kernel"][:, n.unit]
        others = np.delete(full, n.inputs)
        assert len(n.contributions) == 5 and n.n_inputs == 40
        assert n.rest == pytest.approx(float(others.sum()), abs=1e-5)
        assert float(n.contributions.sum()) + n.rest == pytest.approx(n.total, abs=1e-5)


def test_flatten_map_points_at_the_source_cell():
    x = rng.normal(size=(1, 3, 4, 5)).astype(np.float32)
    e = next(Flatten("f").steps(x))
    flat = Flatten("f").forward(x)[0]
    for k in (0, 7, 59):
        assert flat[k] == x[0][tuple(e.sources[k])]


def test_embedding_lookups_equal_rows():
    layer = Embedding("e", input_dim=10, output_dim=3, mask_zero=True)
    layer.set_weights([rng.normal(size=(10, 3)).astype(np.float32)])
    ids = np.array([[4, 1, 0]])
    events = list(layer.steps(ids, context={"tokens": ["enak", "zzz", ""], "oov_id": 1}))
    np.testing.assert_array_equal(np.stack([e.vector for e in events]), layer.forward(ids)[0])
    assert [e.oov for e in events] == [False, True, False] and [e.padding for e in events] == [False, False, True]
    assert events[0].token == "enak"


def recurrent(cls, **config):
    layer = cls("r", units=4, **config)
    g = 4 if cls is LSTM else 1
    layer.set_weights([rng.normal(size=(3, 4 * g)).astype(np.float32),
                       rng.normal(size=(4, 4 * g)).astype(np.float32), rng.normal(size=4 * g).astype(np.float32)])
    return layer


@pytest.mark.parametrize("cls", [SimpleRNN, LSTM])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_every_h_t_equals_the_layer_output(cls, go_backwards):
    layer = recurrent(cls, return_sequences=True, go_backwards=go_backwards)
    x = rng.normal(size=(1, 6, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0]], bool)
    out = layer.forward(x, mask)[0]
    events = list(layer.steps(x, mask))
    assert [e.step for e in events] == list(range(6))
    for e in events:
        np.testing.assert_allclose(e.h, out[e.step], rtol=1e-6, atol=1e-6)
        if e.masked:
            np.testing.assert_array_equal(e.h, e.h_prev)  # carried over
            # a step that did not happen carries no fresh values
            assert e.x_part is None and e.h_part is None and e.pre_activation is None and e.bias is None
            if cls is LSTM:
                np.testing.assert_array_equal(e.c, e.c_prev)
                assert e.i is None and e.f is None and e.g is None and e.o is None
        elif cls is LSTM:
            np.testing.assert_allclose(e.c, e.f * e.c_prev + e.i * e.g, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(e.h, e.o * np.tanh(e.c), rtol=1e-5, atol=1e-6)
            assert e.x_part.shape == e.h_part.shape == e.bias.shape == e.pre_activation.shape == (4, 4)
            np.testing.assert_allclose(e.pre_activation, e.x_part + e.h_part + e.bias, rtol=1e-5, atol=1e-6)
            sigmoid = 1 / (1 + np.exp(-e.pre_activation))
            for row, gate in enumerate((e.i, e.f, e.g, e.o)):
                expected = np.tanh(e.pre_activation[row]) if row == 2 else sigmoid[row]
                np.testing.assert_allclose(gate, expected, rtol=1e-5, atol=1e-6)
            assert (e.activation, e.recurrent_activation) == ("tanh", "sigmoid")
        else:
            np.testing.assert_allclose(e.h, np.tanh(e.x_part + e.h_part + e.bias), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(e.pre_activation, e.x_part + e.h_part + e.bias, rtol=1e-5, atol=1e-6)
            assert e.activation == "tanh"
    assert [e.masked for e in events] == [not m for m in mask[0][[e.time for e in events]]]


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
def test_bidirectional_sweeps_and_merge(merge_mode):
    spec = {"class_name": "LSTM", "config": {"name": "l", "units": 4, "return_sequences": False}}
    layer = Bidirectional.from_config({"name": "bi", "layer": spec, "merge_mode": merge_mode})
    layer.set_weights([rng.normal(size=s).astype(np.float32) for s in [(3, 16), (4, 16), (16,)] * 2])
    x = rng.normal(size=(1, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0]], bool)
    events = list(layer.steps(x, mask))
    fwd = [e for e in events if getattr(e, "direction", None) == "forward"]
    bwd = [e for e in events if getattr(e, "direction", None) == "backward"]
    merge = events[-1]
    assert [e.time for e in fwd] == [0, 1, 2, 3, 4] and [e.time for e in bwd] == [4, 3, 2, 1, 0]
    np.testing.assert_allclose(merge.merged, layer.forward(x, mask)[0], rtol=1e-6)
    np.testing.assert_allclose(merge.forward, fwd[2].h, rtol=1e-6)   # last real step, carried to the end
    np.testing.assert_allclose(merge.backward, bwd[-1].h, rtol=1e-6)  # after reading step 0


@pytest.mark.parametrize("padding,strides,size", [("same", 2, (7, 6)), ("valid", (2, 1), (7, 6)), ("same", 1, (5, 5))])
def test_conv_and_pooling_steps_carry_the_output_size_formula(padding, strides, size):
    x = rng.normal(size=(1, *size, 3)).astype(np.float32)
    for layer in (conv(padding, strides), MaxPooling2D("p", pool_size=(3, 2), strides=strides, padding=padding)):
        out = layer.forward(x)[0]
        e = next(layer.steps(x))
        k = e.patch.shape[:2] if e.kind == "conv_patch" else e.window.shape
        assert e.input_size == size and e.output_size == out.shape[:2]
        for axis in (0, 1):  # ⌊(n + pad − k)/s⌋ + 1, from the event's own fields
            assert (e.input_size[axis] + e.pad[axis] - k[axis]) // e.strides[axis] + 1 == out.shape[axis]
