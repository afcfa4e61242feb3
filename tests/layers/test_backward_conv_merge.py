"""The backward pass of the merges, the conv family, 1-D global pooling and the activation layers
against tf.GradientTape: random residual / branching DAGs (every merge over conv branches, strided
1×1 projection shortcuts, inception blocks), random Conv1D / DepthwiseConv2D / SeparableConv2D /
dilated / grouped settings, then one explicit case per setting (masked merges, Maximum/Minimum
ties, Concatenate axes, Dot axes and normalize, causal padding, depth multipliers, ReLU's kinks,
PReLU's shared axes). Per gradient: max |g − g_tf| / max |g_tf| ≤ 1e-4; the loss to 1e-6."""
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from nntrace.layers import LAYER_CLASSES, Layer
from nntrace.models import load_scratch
from tests.gradient_parity import assert_close, assert_gradient_parity
from tests.parity import randomise_weights

L = keras.layers
MERGES = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"]
VOCAB = 16


def activation_layer(spec: tuple) -> keras.layers.Layer:
    """An activation layer from `(class name, kwargs)`."""
    name, kwargs = spec
    return getattr(L, name)(**kwargs)


ACTIVATION_LAYERS = [("ReLU", {}), ("ReLU", {"max_value": 1.0}), ("ReLU", {"negative_slope": 0.1}),
                     ("ReLU", {"threshold": 0.2, "negative_slope": 0.05, "max_value": 2.0}),
                     ("LeakyReLU", {"negative_slope": 0.2}), ("ELU", {"alpha": 0.7}),
                     ("PReLU", {"shared_axes": [1, 2]}), ("PReLU", {})]


def give_numbers(model: keras.Model, seed: int) -> None:
    """Random biases (as `randomise_weights`), and PReLU slopes, which Keras starts at 0."""
    randomise_weights(model, seed)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        if isinstance(layer, L.PReLU):
            layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])


def labels_for(model: keras.Model, rng, batch: int) -> np.ndarray:
    return rng.integers(0, model.output_shape[-1], (batch,) + tuple(model.output_shape[1:-1]))


def check(model: keras.Model, x, seed: int = 0):
    """assert_gradient_parity on random class ids."""
    return assert_gradient_parity(model, x, labels_for(model, np.random.default_rng(seed), len(x)))


def images(seed: int, batch: int, shape: tuple) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch,) + tuple(shape)).astype(np.float32)


def test_these_layers_have_a_backward_pass():
    for name in MERGES + ["Dot", "Conv1D", "DepthwiseConv2D", "SeparableConv2D", "GlobalMaxPooling1D",
                         "GlobalAveragePooling1D", "ReLU", "LeakyReLU", "ELU", "PReLU"]:
        assert LAYER_CLASSES[name].backward is not Layer.backward, name


# -- random residual and branching DAGs ----------------------------------------------------------
@dataclass
class BranchGraph:
    """A convolutional DAG as data (so a failing example reads as blocks), built in the test."""

    size: int
    channels: int
    stem: tuple
    blocks: list = field(default_factory=list)  # (kind, settings)
    head: str = "GlobalAveragePooling2D"
    logits: bool = False

    def build(self) -> keras.Model:
        inputs = keras.Input((self.size, self.size, self.channels))
        x = activation_layer(self.stem)(L.Conv2D(4, 3, padding="same")(inputs))
        width = 4
        for kind, s in self.blocks:
            if kind == "residual":  # a conv branch (dilated / grouped) merged with its input
                y = L.Conv2D(width, s["kernel"], padding="same", dilation_rate=s["dilation"], groups=s["groups"],
                             activation=s["activation"])(x)
                # relu here gives zeros in both operands: Maximum / Minimum ties
                y = L.Conv2D(width, 3, padding="same", activation="relu" if s["ties"] else None)(y)
                operands = [x, y] if s["order"] else [y, x]
                if s["third"] and s["merge"] not in ("Subtract",):
                    operands.append(L.Conv2D(width, 1)(x))
                x = getattr(L, s["merge"])()(operands)
                if s["merge"] == "Concatenate":
                    width *= len(operands)
                if s["after"] is not None:
                    x = activation_layer(s["after"])(x)
            elif kind == "projection":  # a strided 1×1 shortcut beside a strided 3×3
                short = L.Conv2D(s["filters"], 1, strides=2)(x)
                main = L.Conv2D(s["filters"], 3, strides=2, padding="same", activation="relu")(x)
                x = activation_layer(s["after"])(getattr(L, s["merge"])()([short, main]))
                width = s["filters"]
            elif kind == "inception":
                pool = getattr(L, s["pool"])(3, strides=1, padding="same")(x)
                branches = [L.Conv2D(2, 1, activation="relu")(x),
                            L.SeparableConv2D(2, 3, padding="same", depth_multiplier=s["multiplier"],
                                              dilation_rate=s["dilation"], activation=s["activation"])(x),
                            L.Conv2D(2, 1)(L.DepthwiseConv2D(3, padding="same", depth_multiplier=s["multiplier"])(x)),
                            pool if s["axis"] == -1 else L.Conv2D(2, 1)(pool)]
                x = L.Concatenate(axis=s["axis"])(branches)
                width = 6 + width
                if s["axis"] != -1:  # four maps stacked along rows or columns: back to one
                    window = (4, 1) if s["axis"] == 1 else (1, 4)
                    x = L.Conv2D(4, window, strides=window)(x)
                    width = 4
        pooled = getattr(L, self.head)()(x)
        return keras.Model(inputs, L.Dense(3, activation="linear" if self.logits else "softmax")(pooled))


@st.composite
def branch_graphs(draw):
    activation = st.sampled_from(ACTIVATION_LAYERS)
    graph = BranchGraph(draw(st.integers(4, 8)), draw(st.integers(1, 3)), draw(activation),
                        head=draw(st.sampled_from(["GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten"])),
                        logits=draw(st.booleans()))
    width = 4
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["residual", "residual", "projection", "inception"]))
        if kind == "residual":
            merge = draw(st.sampled_from(MERGES))
            s = {"kernel": draw(st.sampled_from([1, 2, 3])), "dilation": draw(st.sampled_from([1, 2])),
                 "groups": draw(st.sampled_from([g for g in (1, 2, 4) if width % g == 0])), "merge": merge,
                 "activation": draw(st.sampled_from(["relu", "gelu", "swish", "elu", "tanh"])),
                 "ties": draw(st.booleans()), "order": draw(st.booleans()), "third": draw(st.booleans()),
                 "after": draw(st.one_of(st.none(), activation))}
            if merge == "Concatenate":
                width *= 3 if s["third"] else 2
        elif kind == "projection":
            s = {"filters": draw(st.sampled_from([2, 4])), "merge": draw(st.sampled_from(["Add", "Subtract", "Average"])),
                 "after": draw(activation)}
            width = s["filters"]
        else:
            s = {"multiplier": draw(st.integers(1, 2)), "axis": draw(st.sampled_from([-1, -1, 1, 2])),
                 "pool": draw(st.sampled_from(["MaxPooling2D", "AveragePooling2D"])),
                 "dilation": draw(st.sampled_from([1, 2])), "activation": draw(st.sampled_from(["relu", "linear"]))}
            width = 6 + width if s["axis"] == -1 else 4
        graph.blocks.append((kind, s))
    return graph


@given(branch_graphs(), st.integers(0, 2**16), st.integers(1, 3))
def test_random_branching_graphs_gradients_match_tensorflow(graph, seed, batch):
    keras.utils.set_random_seed(seed)
    model = graph.build()
    give_numbers(model, seed)
    check(model, images(seed, batch, model.input_shape[1:]), seed)


# -- random Conv1D stacks ------------------------------------------------------------------------
@dataclass
class Conv1DStack:
    steps: int
    channels: int
    layers: list = field(default_factory=list)  # Conv1D kwargs
    head: str = "GlobalMaxPooling1D"
    logits: bool = False

    def build(self) -> keras.Sequential:
        return keras.Sequential([keras.Input((self.steps, self.channels))] + [L.Conv1D(**kw) for kw in self.layers] +
                                [getattr(L, self.head)(),
                                 L.Dense(3, activation="linear" if self.logits else "softmax")])


@st.composite
def conv1d_stacks(draw):
    steps, channels = draw(st.integers(3, 12)), draw(st.sampled_from([1, 2, 4, 6]))
    stack = Conv1DStack(steps, channels, head=draw(st.sampled_from(["GlobalMaxPooling1D", "GlobalAveragePooling1D",
                                                                    "Flatten"])), logits=draw(st.booleans()))
    length, cin = steps, channels
    for _ in range(draw(st.integers(1, 3))):
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if cin % g == 0]))
        filters = groups * draw(st.integers(1, 3))
        padding = draw(st.sampled_from(["valid", "same", "causal"]))
        dilation = draw(st.sampled_from([1, 1, 2, 3]))
        strides = 1 if dilation > 1 else draw(st.integers(1, 3))  # TensorFlow refuses both > 1
        kernel = draw(st.integers(1, 4))
        span = (kernel - 1) * dilation + 1
        if padding == "valid" and span > length:
            padding = "causal"
        stack.layers.append({"filters": filters, "kernel_size": kernel, "strides": strides, "padding": padding,
                             "dilation_rate": dilation, "groups": groups, "use_bias": draw(st.booleans()),
                             "activation": draw(st.sampled_from(["relu", "linear", "tanh", "gelu", "elu"]))})
        length = (length - span) // strides + 1 if padding == "valid" else -(-length // strides)
        cin = filters
    return stack


@given(conv1d_stacks(), st.integers(0, 2**16), st.integers(1, 4))
def test_random_conv1d_stacks_gradients_match_tensorflow(stack, seed, batch):
    keras.utils.set_random_seed(seed)
    model = stack.build()
    randomise_weights(model, seed)
    check(model, images(seed, batch, model.input_shape[1:]), seed)


# -- random depthwise / separable / dilated / grouped 2-D convolutions ---------------------------
@dataclass
class Conv2DFamilyStack:
    input_shape: tuple
    layers: list = field(default_factory=list)  # (keras.layers class name, kwargs)
    head: str = "Flatten"
    logits: bool = False

    def build(self) -> keras.Sequential:
        return keras.Sequential([keras.Input(self.input_shape)] +
                                [getattr(L, cls)(**kw) for cls, kw in self.layers] +
                                [getattr(L, self.head)(), L.Dense(3, activation="linear" if self.logits else "softmax")])


@st.composite
def conv2d_family_stacks(draw):
    h, w, cin = draw(st.integers(3, 9)), draw(st.integers(3, 9)), draw(st.sampled_from([1, 2, 3, 4]))
    stack = Conv2DFamilyStack((h, w, cin), head=draw(st.sampled_from(["Flatten", "GlobalAveragePooling2D",
                                                                      "GlobalMaxPooling2D"])),
                              logits=draw(st.booleans()))
    for _ in range(draw(st.integers(1, 2))):
        cls = draw(st.sampled_from(["DepthwiseConv2D", "SeparableConv2D", "Conv2D"]))
        kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = draw(st.sampled_from([1, 1, 2, (1, 2)]))
        # TensorFlow's Conv2D refuses strides and dilation both > 1; Keras decomposes the depthwise ones
        strides = 1 if dilation != 1 and cls == "Conv2D" else draw(st.sampled_from([1, 2, (2, 1)]))
        padding = draw(st.sampled_from(["valid", "same"]))
        dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
        span = ((kernel[0] - 1) * dh + 1, (kernel[1] - 1) * dw + 1)
        if span[0] > h or span[1] > w:
            padding = "same"
        kw = {"kernel_size": kernel, "strides": strides, "padding": padding, "dilation_rate": dilation,
              "use_bias": draw(st.booleans()), "activation": draw(st.sampled_from(["relu", "linear", "tanh", "swish"]))}
        if cls == "Conv2D":
            groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if cin % g == 0]))
            kw.update(filters=groups * draw(st.integers(1, 2)), groups=groups)
            cout = kw["filters"]
        else:
            kw["depth_multiplier"] = draw(st.integers(1, 3))
            cout = cin * kw["depth_multiplier"]
            if cls == "SeparableConv2D":
                kw["filters"] = cout = draw(st.integers(1, 4))
        stack.layers.append((cls, kw))
        sh, sw = (strides, strides) if isinstance(strides, int) else strides
        h, w = ((h - span[0]) // sh + 1, (w - span[1]) // sw + 1) if padding == "valid" else (-(-h // sh), -(-w // sw))
        cin = cout
    return stack


@given(conv2d_family_stacks(), st.integers(0, 2**16), st.integers(1, 3))
def test_random_depthwise_separable_dilated_grouped_gradients_match_tensorflow(stack, seed, batch):
    keras.utils.set_random_seed(seed)
    model = stack.build()
    randomise_weights(model, seed)
    check(model, images(seed, batch, model.input_shape[1:]), seed)


# -- merges: masks, ties, axes ------------------------------------------------------------------
def padded_ids(seed: int, batch: int = 4, steps: int = 5) -> np.ndarray:
    """Token ids with zeros (masked steps) at the end and in holes; step 0 is always real."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (batch, steps))
    ids[rng.random((batch, steps)) < 0.35] = 0
    lengths = rng.integers(2, steps + 1, batch)
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    ids[:, 0] = rng.integers(1, VOCAB, batch)
    return ids.astype(np.int32)


def masked_operands(ids, kind: str, dim: int = 4) -> list:
    """Sequence operands with Keras masks: `same` (both masked alike), `one` (one masked, one not),
    `different` (masks [m, 1] and [1, m] along a doubled time axis) or `three` (those two and an
    unmasked third)."""
    masked = L.Embedding(VOCAB, dim, mask_zero=True)(ids)
    plain = L.Embedding(VOCAB, dim)(ids)
    if kind == "same":
        return [L.Dense(dim, activation="tanh")(masked), L.Dense(dim)(masked)]
    if kind == "one":
        return [L.Dense(dim, activation="tanh")(masked), L.Dense(dim)(plain)]
    first = L.Dense(dim, activation="tanh")(L.Concatenate(axis=1)([masked, plain]))
    second = L.Dense(dim)(L.Concatenate(axis=1)([plain, L.Dense(dim)(masked)]))
    if kind == "different":
        return [first, second]
    return [first, second, L.Dense(dim, activation="relu")(L.Concatenate(axis=1)([plain, plain]))]


@pytest.mark.parametrize("kind", ["same", "one", "different", "three"])
@pytest.mark.parametrize("merge", MERGES)
def test_merges_of_masked_sequences(merge, kind):
    """Every merge over masked operands, read by a masked GlobalAveragePooling1D: a masked position
    of a Multiply counts as 1, of a Maximum / Minimum takes the running result (ties)."""
    if merge == "Subtract" and kind == "three":
        pytest.skip("Subtract takes two inputs")
    keras.utils.set_random_seed(21)
    ids = keras.Input((5,), dtype="int32")
    merged = getattr(L, merge)()(masked_operands(ids, kind))
    model = keras.Model(ids, L.Dense(3, activation="softmax")(L.GlobalAveragePooling1D()(merged)))
    randomise_weights(model, 21)
    check(model, padded_ids(21), 21)


@pytest.mark.parametrize("merge", ["Maximum", "Minimum"])
@pytest.mark.parametrize("relu_first", [False, True])
def test_maximum_minimum_ties_go_to_the_first_operand(merge, relu_first):
    """`max(x, relu(x))` ties wherever x ≥ 0: at x = 0 the gradient reaches x only if the first
    operand (TensorFlow's winner on ties) is x itself, since relu stops it there."""
    inputs = keras.Input((6,))
    h = L.Dense(6)(inputs)
    pair = [L.ReLU()(h), h] if relu_first else [h, L.ReLU()(h)]
    model = keras.Model(inputs, L.Dense(3)(getattr(L, merge)()(pair)))
    randomise_weights(model, 4)
    model.layers[1].set_weights([np.eye(6, dtype=np.float32), np.zeros(6, np.float32)])  # h == x exactly
    x = np.random.default_rng(4).integers(-1, 2, (5, 6)).astype(np.float32)  # many exact zeros
    g = check(model, x, 4)
    assert np.any(x == 0)
    assert (g.inputs[x == 0] != 0).any() != relu_first  # x = 0: the first operand took the tie


@pytest.mark.parametrize("merge", ["Maximum", "Minimum"])
def test_maximum_minimum_of_relu_branches_tie_at_zero(merge):
    """Two ReLU'd conv branches are both 0 in many places: each tie goes to the first branch."""
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    b = L.Conv2D(3, 1, activation="relu")(inputs)
    c = L.Conv2D(3, 2, padding="same", activation="relu")(inputs)
    x = getattr(L, merge)()([a, b, c])
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(x)))
    randomise_weights(model, 5)
    check(model, images(5, 3, (6, 6, 2)), 5)


@pytest.mark.parametrize("axis", [1, 2, 3, -1, -2])
def test_concatenate_on_any_axis(axis):
    """Operands of different sizes along the axis; the gradient splits back at their boundaries."""
    inputs = keras.Input((5, 6, 2))
    kernel = {1: (2, 1), 2: (1, 2), 3: (1, 1)}[axis % 4]
    a = L.Conv2D(3, 1, activation="tanh")(inputs)
    b = L.Conv2D(3 if axis % 4 != 3 else 4, kernel)(inputs)
    c = L.DepthwiseConv2D(kernel, depth_multiplier=2 if axis % 4 != 3 else 1, activation="relu")(inputs)
    if axis % 4 != 3:
        c = L.Conv2D(3, 1)(c)
    x = L.Concatenate(axis=axis)([a, b, c])
    model = keras.Model(inputs, L.Dense(4, activation="softmax")(L.Flatten()(x)))
    randomise_weights(model, 6)
    check(model, images(6, 3, (5, 6, 2)), 6)


def test_the_same_tensor_twice_in_a_merge_and_merges_of_the_input():
    """Add([x, x]) and Concatenate([a, a, b]) hand both shares to one tensor; a merge reading the
    model input sends it its gradient."""
    inputs = keras.Input((5, 5, 3))
    a = L.Conv2D(3, 3, padding="same", activation="elu")(inputs)
    x = L.Add()([a, a])
    x = L.Subtract()([inputs, x])
    x = L.Concatenate()([x, x, L.Conv2D(2, 1)(x)])
    x = L.Multiply()([x, x])
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.GlobalMaxPooling2D()(x)))
    randomise_weights(model, 7)
    check(model, images(7, 2, (5, 5, 3)), 7)


def dot_operands(x, shapes: tuple) -> list:
    """Two operands of the given shapes, from one `(3, 4)` input."""
    flat = L.Flatten()(x)
    out = []
    for k, shape in enumerate(shapes):
        if shape == (3, 4):
            out.append(L.Dense(4, activation="tanh" if k else None)(x))
        else:
            out.append(L.Reshape(shape)(L.Dense(int(np.prod(shape)))(flat)))
    return out


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("axes,shapes", [((1, 2), ((3, 4), (5, 3))), ((2, 2), ((3, 4), (5, 4))),
                                         ((2, 1), ((3, 4), (4, 5))), (-1, ((3, 4), (5, 4))),
                                         (1, ((4,), (4,))), (1, ((3, 4), (3, 2))), ((1, 1), ((6,), (6,)))])
def test_dot_axes_and_normalize(axes, shapes, normalize):
    inputs = keras.Input((3, 4))
    x = L.Dot(axes=axes, normalize=normalize)(dot_operands(inputs, shapes))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(x)))
    randomise_weights(model, 8)
    check(model, np.random.default_rng(8).normal(size=(4, 3, 4)).astype(np.float32), 8)


def test_dot_of_masked_sequences_ignores_the_masks():
    ids = keras.Input((5,), dtype="int32")
    a, b = masked_operands(ids, "same")
    model = keras.Model(ids, L.Dense(3)(L.Flatten()(L.Dot(axes=2, normalize=True)([a, b]))))
    randomise_weights(model, 9)
    check(model, padded_ids(9), 9)


# -- the conv family, setting by setting --------------------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same", "causal"])
@pytest.mark.parametrize("dilation,strides,groups", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 3, 1), (1, 1, 2),
                                                     (3, 1, 2), (1, 2, 4)])
def test_conv1d_settings(padding, dilation, strides, groups):
    keras.utils.set_random_seed(10)
    model = keras.Sequential([keras.Input((11, 4)),
                              L.Conv1D(4, 3, strides=strides, padding=padding, dilation_rate=dilation, groups=groups,
                                       activation="gelu"),
                              L.Conv1D(2 * groups, 2, padding=padding, groups=groups, use_bias=False),
                              L.Flatten(), L.Dense(3, activation="softmax")])
    randomise_weights(model, 10)
    check(model, images(10, 3, (11, 4)), 10)


@pytest.mark.parametrize("kwargs", [{"dilation_rate": 2, "padding": "same"}, {"dilation_rate": (1, 3)},
                                    {"dilation_rate": (2, 1), "padding": "same", "activation": "swish"},
                                    {"groups": 2}, {"groups": 4, "padding": "same", "activation": "relu"},
                                    {"groups": 2, "strides": 2, "padding": "same"}, {"groups": 4, "strides": (1, 2)},
                                    {"groups": 2, "dilation_rate": 2, "use_bias": False}])
def test_conv2d_dilated_and_grouped(kwargs):
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((9, 8, 4)), L.Conv2D(8, 3, **kwargs), L.Conv2D(4, 1, groups=2),
                              L.GlobalAveragePooling2D(), L.Dense(3, activation="softmax")])
    randomise_weights(model, 11)
    check(model, images(11, 3, (9, 8, 4)), 11)


@pytest.mark.parametrize("cls", ["DepthwiseConv2D", "SeparableConv2D"])
@pytest.mark.parametrize("multiplier", [1, 2, 3])
@pytest.mark.parametrize("kwargs", [{}, {"padding": "same", "strides": 2}, {"dilation_rate": 2},
                                    {"kernel_size": (3, 1), "strides": (1, 2), "use_bias": False},
                                    {"padding": "same", "dilation_rate": (2, 1), "activation": "relu"},
                                    {"padding": "same", "strides": 2, "dilation_rate": 2},  # Keras decomposes
                                    {"kernel_size": 2, "strides": (2, 1), "dilation_rate": (1, 2)}])
def test_depthwise_and_separable_settings(cls, multiplier, kwargs):
    keras.utils.set_random_seed(12)
    settings = {"kernel_size": 3, "depth_multiplier": multiplier, "activation": "tanh", **kwargs}
    if cls == "SeparableConv2D":
        settings["filters"] = 5
    model = keras.Sequential([keras.Input((8, 7, 3)), getattr(L, cls)(**settings), L.Flatten(),
                              L.Dense(3, activation="softmax")])
    randomise_weights(model, 12)
    check(model, images(12, 3, (8, 7, 3)), 12)


@pytest.mark.parametrize("head", [lambda: L.Conv1D(3, 3, padding="causal", activation="softmax"),
                                  lambda: L.Conv1D(3, 2, padding="same", groups=3, activation="softmax")])
def test_conv1d_softmax_head_per_step(head):
    """A per-step softmax head: the loss reads the logits behind it (Keras's `_keras_logits`)."""
    model = keras.Sequential([keras.Input((7, 3)), L.Conv1D(3, 3, padding="same", activation="relu"), head()])
    randomise_weights(model, 13)
    g = check(model, images(13, 3, (7, 3)), 13)
    assert not g.from_logits


@pytest.mark.parametrize("head", [lambda: L.DepthwiseConv2D(3, padding="same", depth_multiplier=3,
                                                            activation="softmax"),
                                  lambda: L.SeparableConv2D(3, 3, padding="same", activation="softmax"),
                                  lambda: L.Conv2D(3, 3, padding="same", groups=3, activation="softmax")])
def test_conv2d_family_softmax_head_per_pixel(head):
    model = keras.Sequential([keras.Input((5, 5, 1)), L.Conv2D(3, 3, padding="same", activation="relu"), head()])
    randomise_weights(model, 14)
    g = check(model, images(14, 2, (5, 5, 1)), 14)
    assert not g.from_logits


# -- 1-D global pooling -------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ["GlobalMaxPooling1D", "GlobalAveragePooling1D"])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_global_pooling_1d_backward_matches_tensorflow(cls, keepdims, masked):
    """Ties in most channels (a few distinct values): the max splits its gradient equally between
    them; the masked mean shares it among the unmasked steps only."""
    layer = getattr(L, cls)(keepdims=keepdims)
    rng = np.random.default_rng(15)
    x = rng.integers(0, 3, (3, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], bool) if masked else None
    dy = rng.normal(size=tuple(layer.compute_output_shape(x.shape))).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = layer(xt, mask=None if mask is None else tf.constant(mask)) if cls != "GlobalMaxPooling1D" \
            else layer(xt)
        loss = tf.reduce_sum(out * dy)
    scratch = load_scratch(keras.Sequential([keras.Input((6, 4)), layer])).layers[0]
    dx, grads = scratch.backward(dy, x, mask)
    np.testing.assert_allclose(dx, np.asarray(tape.gradient(loss, xt)), rtol=1e-6, atol=1e-7)
    assert grads == {}


@pytest.mark.filterwarnings("ignore:Layer 'global_max_pooling1d")  # it drops the mask, as Keras's does
@pytest.mark.parametrize("cls", ["GlobalMaxPooling1D", "GlobalAveragePooling1D"])
def test_global_pooling_1d_on_masked_embeddings(cls):
    ids = keras.Input((6,), dtype="int32")
    x = L.Dense(5, activation="relu")(L.Embedding(VOCAB, 4, mask_zero=True)(ids))
    model = keras.Model(ids, L.Dense(3, activation="softmax")(getattr(L, cls)()(x)))
    randomise_weights(model, 16)
    check(model, padded_ids(16, 5, 6), 16)


# -- activation layers --------------------------------------------------------------------------
#: Each setting's kinks: 0, the threshold, max_value, 6, and values either side.
KINKS = [-2.0, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 6.0, 7.0]


@pytest.mark.parametrize("cls,kwargs", [
    ("ReLU", {}), ("ReLU", {"max_value": 6.0}), ("ReLU", {"max_value": 2.5}), ("ReLU", {"max_value": 0.0}),
    ("ReLU", {"negative_slope": 0.1}), ("ReLU", {"negative_slope": 0.1, "max_value": 6.0}),
    ("ReLU", {"negative_slope": 0.2, "max_value": 1.5}), ("ReLU", {"threshold": 0.5}),
    ("ReLU", {"threshold": 1.0, "max_value": 1.0}), ("ReLU", {"threshold": 0.5, "negative_slope": 0.2}),
    ("ReLU", {"threshold": 0.5, "negative_slope": 0.1, "max_value": 2.0}), ("ReLU", {"threshold": 2.0, "max_value": 6.0}),
    ("LeakyReLU", {}), ("LeakyReLU", {"negative_slope": 0.01}), ("ELU", {}), ("ELU", {"alpha": 0.5}),
    ("ELU", {"alpha": 2.0})])
def test_activation_layer_gradients_at_their_kinks(cls, kwargs):
    """Exactly on every kink, where a gradient rule has to pick a side, as TensorFlow's ops do."""
    layer = getattr(L, cls)(**kwargs)
    rng = np.random.default_rng(17)
    x = np.concatenate([np.array(KINKS * 2, np.float32), rng.normal(0, 3, 36).astype(np.float32)]).reshape(4, 16)
    dy = rng.normal(size=x.shape).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt) * dy)
    scratch = load_scratch(keras.Sequential([keras.Input((16,)), layer])).layers[0]
    dx, grads = scratch.backward(dy, x)
    np.testing.assert_allclose(dx, np.asarray(tape.gradient(loss, xt)), rtol=1e-6, atol=1e-7)
    assert grads == {}


@pytest.mark.parametrize("spec", ACTIVATION_LAYERS + [("ReLU", {"max_value": 6.0}), ("ELU", {}),
                                                      ("LeakyReLU", {})])
def test_activation_layers_in_a_model(spec):
    keras.utils.set_random_seed(18)
    inputs = keras.Input((6, 6, 2))
    x = activation_layer(spec)(L.Conv2D(4, 3, padding="same")(inputs))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(L.Conv2D(2, 3)(x))))
    give_numbers(model, 18)
    check(model, images(18, 3, (6, 6, 2)), 18)


@pytest.mark.parametrize("shape,shared_axes", [((6, 5, 3), None), ((6, 5, 3), [1, 2]), ((6, 5, 3), [1]),
                                               ((6, 5, 3), [3]), ((6, 5, 3), [1, 2, 3]), ((7, 4), None),
                                               ((7, 4), [1]), ((7, 4), 2), ((9,), None)])
def test_prelu_alpha_and_shared_axes(shape, shared_axes):
    """alpha's gradient sums over the batch and the shared axes; inputs exactly 0 included."""
    keras.utils.set_random_seed(19)
    inputs = keras.Input(shape)
    x = L.Dense(shape[-1])(inputs)
    x = L.PReLU(shared_axes=shared_axes)(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(x)))
    give_numbers(model, 19)
    model.layers[1].set_weights([np.eye(shape[-1], dtype=np.float32), np.zeros(shape[-1], np.float32)])
    x_in = np.random.default_rng(19).normal(size=(3,) + shape).astype(np.float32)
    x_in.reshape(-1)[::5] = 0.0
    g = check(model, x_in, 19)
    prelu = model.layers[2]
    assert g.weights[prelu.alpha.path].shape == tuple(prelu.alpha.shape)
