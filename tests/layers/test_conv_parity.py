"""Random conv stacks built in Keras; the scratch side must match every layer's output."""
import keras
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.parity import assert_parity, randomise_weights

ACTIVATIONS = ["relu", "linear", "tanh", "sigmoid", "elu", "gelu", "softplus"]


@st.composite
def conv_stacks(draw):
    h, w = draw(st.integers(4, 11)), draw(st.integers(4, 11))
    channels = draw(st.integers(1, 4))
    stack = [keras.Input((h, w, channels))]
    if draw(st.booleans()):
        stack.append(keras.layers.Rescaling(draw(st.sampled_from([1 / 255.0, 0.5, 2.0])),
                                            offset=draw(st.sampled_from([0.0, -1.0]))))
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, min(4, h, w)))
        strides = draw(st.integers(1, 2))
        padding = draw(st.sampled_from(["valid", "same"]))
        stack.append(keras.layers.Conv2D(draw(st.integers(1, 6)), (k, draw(st.integers(1, min(4, w)))),
                                         strides=strides, padding=padding,
                                         activation=draw(st.sampled_from(ACTIVATIONS)),
                                         use_bias=draw(st.booleans())))
        _, h, w, _ = keras.Sequential(stack).output_shape
        if draw(st.booleans()):
            stack.append(keras.layers.BatchNormalization(epsilon=draw(st.sampled_from([1e-3, 1e-5]))))
        if draw(st.booleans()):
            pool = draw(st.sampled_from([keras.layers.MaxPooling2D, keras.layers.AveragePooling2D]))
            size = draw(st.integers(1, min(3, h, w)))
            stride = draw(st.sampled_from([None, 1, 2]))
            stack.append(pool(size, strides=stride, padding=draw(st.sampled_from(["valid", "same"]))))
            _, h, w, _ = keras.Sequential(stack).output_shape
    stack.append(draw(st.sampled_from([keras.layers.Flatten, keras.layers.GlobalAveragePooling2D,
                                       keras.layers.GlobalMaxPooling2D]))())
    if draw(st.booleans()):
        stack += [keras.layers.Dense(draw(st.integers(1, 8)), activation="relu"), keras.layers.Dropout(0.5)]
    stack.append(keras.layers.Dense(draw(st.integers(2, 5)), activation="softmax"))
    return keras.Sequential(stack)


@given(conv_stacks(), st.integers(0, 2**16), st.integers(1, 4))
def test_random_conv_stacks_match_keras_layer_by_layer(model, seed, batch):
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
    from models import load_scratch
    np.testing.assert_array_equal(load_scratch(model).forward(x), x)


def test_average_pooling_same_divides_by_real_cells():
    model = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.AveragePooling2D(2, padding="same"),
                              keras.layers.Flatten()])
    x = np.ones((1, 3, 3, 1), np.float32)
    from models import load_scratch
    np.testing.assert_allclose(load_scratch(model).forward(x), np.ones((1, 4)), rtol=0, atol=0)
    assert_parity(model, x)
