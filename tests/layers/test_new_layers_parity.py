"""Each layer family beyond the seed's, over random settings: every layer's output within rtol 1e-4 /
atol 1e-5 of Keras, probabilities within 1e-5."""
from dataclasses import dataclass, field

import keras
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from keras.src.activations import ALL_OBJECTS_DICT

from tests.parity import assert_parity, randomise_weights

L = keras.layers
VOCAB = 16
#: Every activation Keras accepts by name (`threshold` needs arguments a name cannot give).
ACTIVATION_NAMES = sorted(n for n in ALL_OBJECTS_DICT if n != "threshold")
#: Those a layer can apply: `glu` halves the last axis, which Keras's shape inference does not expect.
LAYER_ACTIVATIONS = [n for n in ACTIVATION_NAMES if n != "glu"]


@dataclass
class Stack:
    """A Sequential model as data, built in the test; `text` models start from token ids."""

    input_shape: tuple
    layers: list = field(default_factory=list)  # (class name, kwargs)
    text: bool = False

    def build(self) -> keras.Sequential:
        start = [keras.Input(self.input_shape, dtype="int32" if self.text else "float32")]
        return keras.Sequential(start + [getattr(L, name)(**kwargs) for name, kwargs in self.layers])


def randomise_all(model, seed: int) -> None:
    """Random weights everywhere (kernels too, for layers Keras starts at ones or zeros)."""
    randomise_weights(model, seed)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        if type(layer).__name__ in ("LayerNormalization", "PReLU", "Attention"):
            layer.set_weights([rng.uniform(0.5, 1.5, np.shape(w)).astype(np.float32) for w in layer.get_weights()])


def data(model, seed: int, batch: int, text: bool):
    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(model.input_shape[1:])
    if not text:
        return rng.uniform(-2, 2, shape).astype(np.float32)
    ids = rng.integers(1, VOCAB, shape)
    lengths = rng.integers(1, shape[1] + 1, batch)
    ids[np.arange(shape[1])[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.int32)


def check(stack: Stack, seed: int, batch: int) -> None:
    model = stack.build()
    randomise_all(model, seed)
    assert_parity(model, data(model, seed, batch, stack.text))


@st.composite
def gru_stacks(draw):
    stack = Stack((draw(st.integers(1, 7)),), text=True)
    stack.layers.append(("Embedding", {"input_dim": VOCAB, "output_dim": draw(st.integers(1, 4)), "mask_zero": True}))
    depth = draw(st.integers(1, 2))
    for i in range(depth):
        kwargs = {"units": draw(st.integers(1, 5)), "reset_after": draw(st.booleans()),
                  "return_sequences": i < depth - 1 or draw(st.booleans()), "use_bias": draw(st.booleans()),
                  "activation": draw(st.sampled_from(["tanh", "relu"])),
                  "recurrent_activation": draw(st.sampled_from(["sigmoid", "hard_sigmoid"]))}
        if draw(st.booleans()):
            stack.layers.append(("Bidirectional", {"layer": L.GRU(**kwargs),
                                                   "merge_mode": draw(st.sampled_from(["concat", "sum", "ave"]))}))
        else:
            stack.layers.append(("GRU", {**kwargs, "go_backwards": draw(st.booleans())}))
    if stack.layers[-1][1].get("return_sequences") or getattr(stack.layers[-1][1].get("layer"), "return_sequences",
                                                              False):
        stack.layers.append(("GlobalAveragePooling1D", {}))
    stack.layers.append(("Dense", {"units": 3, "activation": "softmax"}))
    return stack


@given(gru_stacks(), st.integers(0, 2**16), st.integers(1, 4))
def test_gru_over_masked_sequences(stack, seed, batch):
    check(stack, seed, batch)


def out_len(n: int, k: int, s: int, d: int, padding: str) -> int:
    span = (k - 1) * d + 1
    return (n - 1) // s + 1 if padding in ("same", "causal") else (n - span) // s + 1


@st.composite
def conv1d_stacks(draw):
    steps, cin = draw(st.integers(6, 14)), draw(st.sampled_from([2, 4]))
    stack = Stack((steps, cin))
    for _ in range(draw(st.integers(1, 2))):
        k, s, d = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
        if d > 1:
            s = 1
        padding = draw(st.sampled_from(["valid", "same", "causal"]))
        if out_len(steps, k, s, d, padding) < 2:
            padding = "same"
        groups = draw(st.sampled_from([1, 2]))
        filters = 2 * draw(st.integers(1, 3))
        stack.layers.append(("Conv1D", {"filters": filters, "kernel_size": k, "strides": s, "dilation_rate": d,
                                        "padding": padding, "groups": groups,
                                        "activation": draw(st.sampled_from(["relu", "linear", "gelu"]))}))
        steps, cin = out_len(steps, k, s, d, padding), filters
        if draw(st.booleans()) and steps >= 2:
            size, pad = draw(st.integers(1, 2)), draw(st.sampled_from(["valid", "same"]))
            stride = draw(st.sampled_from([None, 1, 2]))
            stack.layers.append((draw(st.sampled_from(["MaxPooling1D", "AveragePooling1D"])),
                                 {"pool_size": size, "strides": stride, "padding": pad}))
            steps = out_len(steps, size, stride or size, 1, pad)
        if draw(st.booleans()):
            stack.layers.append(("SpatialDropout1D", {"rate": 0.3}))
    stack.layers.append((draw(st.sampled_from(["GlobalMaxPooling1D", "GlobalAveragePooling1D", "Flatten"])), {}))
    stack.layers.append(("Dense", {"units": 3, "activation": "softmax"}))
    return stack


@given(conv1d_stacks(), st.integers(0, 2**16), st.integers(1, 3))
def test_conv1d_and_pooling1d(stack, seed, batch):
    check(stack, seed, batch)


@st.composite
def conv2d_stacks(draw):
    size, cin = draw(st.integers(6, 10)), draw(st.sampled_from([2, 4]))
    stack = Stack((size, size, cin))
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["Conv2D", "DepthwiseConv2D", "SeparableConv2D"]))
        k, d = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        s = 1 if d > 1 else draw(st.integers(1, 2))
        padding = draw(st.sampled_from(["valid", "same"]))
        if out_len(size, k, s, d, padding) < 2:
            padding = "same"
        common = {"kernel_size": k, "strides": s, "dilation_rate": d, "padding": padding,
                  "activation": draw(st.sampled_from(["relu", "linear", "swish"])), "use_bias": draw(st.booleans())}
        if kind == "Conv2D":
            groups = draw(st.sampled_from([1, 2]))
            filters = 2 * draw(st.integers(1, 3))
            stack.layers.append((kind, {**common, "filters": filters, "groups": groups}))
            cin = filters
        elif kind == "DepthwiseConv2D":
            multiplier = draw(st.integers(1, 2))
            stack.layers.append((kind, {**common, "depth_multiplier": multiplier}))
            cin *= multiplier
        else:
            filters = 2 * draw(st.integers(1, 2))
            stack.layers.append((kind, {**common, "filters": filters, "depth_multiplier": draw(st.integers(1, 2))}))
            cin = filters
        size = out_len(size, k, s, d, padding)
        if draw(st.booleans()):
            stack.layers.append(("LayerNormalization", {"axis": draw(st.sampled_from([-1, [1, 2], [1, 2, 3]]))}))
        if draw(st.booleans()):
            stack.layers.append(("SpatialDropout2D", {"rate": 0.5}))
    stack.layers.append((draw(st.sampled_from(["GlobalAveragePooling2D", "Flatten"])), {}))
    stack.layers.append(("Dense", {"units": 3, "activation": "softmax"}))
    return stack


@given(conv2d_stacks(), st.integers(0, 2**16), st.integers(1, 3))
def test_dilated_grouped_depthwise_and_separable_convolutions(stack, seed, batch):
    check(stack, seed, batch)


@st.composite
def activation_stacks(draw):
    stack = Stack((draw(st.integers(2, 4)), 2 * draw(st.integers(1, 3))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["Dense", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax",
                                     "LayerNormalization"]))
        if kind == "Dense":
            stack.layers.append((kind, {"units": 2 * draw(st.integers(1, 3)),
                                        "activation": draw(st.sampled_from(LAYER_ACTIVATIONS))}))
        elif kind == "Activation":
            stack.layers.append((kind, {"activation": draw(st.sampled_from(LAYER_ACTIVATIONS))}))
        elif kind == "ReLU":
            stack.layers.append((kind, {"max_value": draw(st.sampled_from([None, 6.0, 0.5])),
                                        "negative_slope": draw(st.sampled_from([0.0, 0.1])),
                                        "threshold": draw(st.sampled_from([0.0, 0.3]))}))
        elif kind == "LeakyReLU":
            stack.layers.append((kind, {"negative_slope": draw(st.sampled_from([0.01, 0.3]))}))
        elif kind == "ELU":
            stack.layers.append((kind, {"alpha": draw(st.sampled_from([0.5, 1.0, 1.5]))}))
        elif kind == "PReLU":
            stack.layers.append((kind, {"shared_axes": draw(st.sampled_from([None, [1], [2]]))}))
        elif kind == "Softmax":
            stack.layers.append((kind, {"axis": draw(st.sampled_from([-1, 1, (1, 2)]))}))
        else:
            stack.layers.append((kind, {"axis": draw(st.sampled_from([-1, [1, 2]])), "center": draw(st.booleans()),
                                        "scale": draw(st.booleans()), "epsilon": draw(st.sampled_from([1e-3, 1e-5]))}))
    stack.layers += [("Flatten", {}), ("Dense", {"units": 3, "activation": "softmax"})]
    return stack


@given(activation_stacks(), st.integers(0, 2**16), st.integers(1, 3))
def test_activations_activation_layers_and_layer_normalization(stack, seed, batch):
    check(stack, seed, batch)


@dataclass
class AttentionModel:
    """Self- or cross-attention over masked sequences, as data."""

    kind: str
    q_len: int
    v_len: int
    settings: dict
    call: dict
    cross: bool

    def build(self) -> keras.Model:
        q_ids = keras.Input((self.q_len,), dtype="int32", name="q_ids")
        q = L.Embedding(VOCAB, 4, mask_zero=True)(q_ids)
        inputs, v = [q_ids], q
        if self.cross:
            v_ids = keras.Input((self.v_len,), dtype="int32", name="v_ids")
            v = L.Embedding(VOCAB, 3 if self.kind == "MultiHeadAttention" else 4, mask_zero=True)(v_ids)
            inputs.append(v_ids)
        if self.kind == "Attention":
            out = L.Attention(**self.settings)([q, v], **self.call)
        else:
            out = L.MultiHeadAttention(**self.settings)(q, v, **self.call)
        pooled = L.GlobalAveragePooling1D()(L.Add()([q, out]) if out.shape[-1] == 4 else out)
        return keras.Model(inputs, L.Dense(3, activation="softmax")(pooled))


@st.composite
def attention_models(draw):
    kind = draw(st.sampled_from(["Attention", "MultiHeadAttention"]))
    cross = draw(st.booleans())
    q_len = draw(st.integers(1, 5))
    v_len = draw(st.integers(1, 5)) if cross else q_len
    causal = draw(st.booleans()) and q_len == v_len
    if kind == "Attention":
        settings = {"use_scale": draw(st.booleans()), "score_mode": draw(st.sampled_from(["dot", "concat"]))}
    else:
        settings = {"num_heads": draw(st.integers(1, 3)), "key_dim": draw(st.integers(1, 4)),
                    "value_dim": draw(st.sampled_from([None, 2, 5])), "use_bias": draw(st.booleans()),
                    "dropout": draw(st.sampled_from([0.0, 0.0, 0.2])), "use_gate": draw(st.booleans()),
                    "output_shape": draw(st.sampled_from([None, 4, 6]))}
    return AttentionModel(kind, q_len, v_len, settings, {"use_causal_mask": causal}, cross)


@given(attention_models(), st.integers(0, 2**16), st.integers(1, 4))
def test_attention_and_multi_head_attention_with_padding_and_causal_masks(spec, seed, batch):
    model = spec.build()
    randomise_all(model, seed)
    rng = np.random.default_rng(seed)
    xs = []
    for t in model.inputs:
        ids = rng.integers(1, VOCAB, (batch, t.shape[1]))
        lengths = rng.integers(1, t.shape[1] + 1, batch)
        ids[np.arange(t.shape[1])[None, :] >= lengths[:, None]] = 0
        xs.append(ids.astype(np.int32))
    assert_parity(model, xs if len(xs) > 1 else xs[0])


@st.composite
def masking_stacks(draw):
    stack = Stack((draw(st.integers(2, 6)), 3))
    stack.layers.append(("Masking", {"mask_value": 0.0}))
    cell = draw(st.sampled_from(["GRU", "LSTM", "SimpleRNN"]))
    stack.layers.append((cell, {"units": 3, "return_sequences": True}))
    stack.layers.append((draw(st.sampled_from(["GlobalAveragePooling1D", "GlobalMaxPooling1D"])), {}))
    stack.layers.append(("Dense", {"units": 3, "activation": "softmax"}))
    return stack


@given(masking_stacks(), st.integers(0, 2**16), st.integers(1, 4))
def test_masking_layer_masks_zero_steps(stack, seed, batch):
    model = stack.build()
    randomise_all(model, seed)
    x = data(model, seed, batch, False)
    rng = np.random.default_rng(seed)
    x[rng.random(x.shape[:2]) < 0.4] = 0.0  # whole steps of zeros: padding
    assert_parity(model, x)


def test_every_activation_keras_names_matches_it():
    from nntrace.layers import activations

    x = np.concatenate([np.linspace(-6, 6, 120, dtype=np.float32),
                        np.array([-1, 1, -0.5, 0.5, 0, 3, -3, 6], np.float32)]).reshape(8, 16)
    for name in ACTIVATION_NAMES:
        expected = np.asarray(ALL_OBJECTS_DICT[name](keras.ops.convert_to_tensor(x)))
        np.testing.assert_allclose(activations.get(name)(x), expected, rtol=1e-5, atol=2e-6, err_msg=name)
