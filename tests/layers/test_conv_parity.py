"""Random conv stacks built in Keras; the scratch side must match every layer's output."""
from dataclasses import dataclass, field

import keras
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.parity import assert_parity, randomise_weights

ACTIVATIONS = ["relu", "linear", "tanh", "sigmoid", "elu", "gelu", "softplus"]


def conv_out(size: int, k: int, stride: int, padding: str) -> int:
    """Output length of a conv or pooling window along one axis."""
    return -(-size // stride) if padding == "same" else (size - k) // stride + 1


@dataclass
class ConvStack:
    """A Sequential model as data (so hypothesis reports a failing example readably), built in the test."""

    input_shape: tuple
    layers: list = field(default_factory=list)  # (keras.layers class name, kwargs)
    spatial: tuple = ()  # (height, width) before flattening, as the strategy worked it out

    def build(self) -> keras.Sequential:
        return keras.Sequential([keras.Input(self.input_shape)] +
                                [getattr(keras.layers, name)(**kwargs) for name, kwargs in self.layers])


@st.composite
def conv_stacks(draw):
    h, w = draw(st.integers(4, 11)), draw(st.integers(4, 11))
    stack = ConvStack((h, w, draw(st.integers(1, 4))))
    if draw(st.booleans()):
        stack.layers.append(("Rescaling", {"scale": draw(st.sampled_from([1 / 255.0, 0.5, 2.0])),
                                           "offset": draw(st.sampled_from([0.0, -1.0]))}))
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, min(4, h, w)))
        kw = draw(st.integers(1, min(4, w)))
        strides = draw(st.integers(1, 2))
        padding = draw(st.sampled_from(["valid", "same"]))
        stack.layers.append(("Conv2D", {"filters": draw(st.integers(1, 6)), "kernel_size": (k, kw),
                                        "strides": strides, "padding": padding,
                                        "activation": draw(st.sampled_from(ACTIVATIONS)),
                                        "use_bias": draw(st.booleans())}))
        h, w = conv_out(h, k, strides, padding), conv_out(w, kw, strides, padding)
        if draw(st.booleans()):
            stack.layers.append(("BatchNormalization", {"epsilon": draw(st.sampled_from([1e-3, 1e-5]))}))
        if draw(st.booleans()):
            size = draw(st.integers(1, min(3, h, w)))
            stride = draw(st.sampled_from([None, 1, 2]))
            padding = draw(st.sampled_from(["valid", "same"]))
            stack.layers.append((draw(st.sampled_from(["MaxPooling2D", "AveragePooling2D"])),
                                 {"pool_size": size, "strides": stride, "padding": padding}))
            h, w = (conv_out(n, size, stride or size, padding) for n in (h, w))
    stack.spatial = (h, w)
    stack.layers.append((draw(st.sampled_from(["Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D"])), {}))
    if draw(st.booleans()):
        stack.layers += [("Dense", {"units": draw(st.integers(1, 8)), "activation": "relu"}),
                         ("Dropout", {"rate": 0.5})]
    stack.layers.append(("Dense", {"units": draw(st.integers(2, 5)), "activation": "softmax"}))
    return stack


@given(conv_stacks(), st.integers(0, 2**16), st.integers(1, 4))
def test_random_conv_stacks_match_keras_layer_by_layer(stack, seed, batch):
    model = stack.build()
    assert [tuple(layer.output.shape[1:3]) for layer in model.layers if len(layer.output.shape) == 4][-1] == \
        stack.spatial  # the sizes the strategy drew kernels and windows for are Keras's
    randomise_weights(model, seed)
    x = np.random.default_rng(seed).uniform(-2, 2, (batch,) + model.input_shape[1:]).astype(np.float32)
    assert_parity(model, x)


def test_same_padding_is_asymmetric_like_tensorflow():
    """An even kernel with 'same' padding puts the extra zero row/column at the bottom/right."""
    model = keras.Sequential([keras.Input((5, 5, 1)), keras.layers.Conv2D(1, 2, padding="same", use_bias=False)])
    kernel = np.zeros((2, 2, 1, 1), np.float32)
    kernel[0, 0] = 1.0  # picks the top-left cell of each window: output == input when padding is after
    model.layers[0].set_weights([kernel])
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    assert_parity(model, x)
    from nntrace.models import load_scratch
    np.testing.assert_array_equal(load_scratch(model).forward(x), x)


def test_average_pooling_same_divides_by_real_cells():
    model = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.AveragePooling2D(2, padding="same"),
                              keras.layers.Flatten()])
    x = np.ones((1, 3, 3, 1), np.float32)
    from nntrace.models import load_scratch
    np.testing.assert_allclose(load_scratch(model).forward(x), np.ones((1, 4)), rtol=0, atol=0)
    assert_parity(model, x)
