"""Clear errors: unsupported layers, wrong input shapes, bad weights — each names layer and shapes."""
import keras
import numpy as np
import pytest

from nntrace.layers import Conv2D, Dense, InputShapeError, LSTM, UnsupportedLayerError, WeightMismatchError
from nntrace.models import load_scratch


def test_unsupported_layer_names_layer_class_and_supported_list():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="c"),
                              keras.layers.GroupNormalization(2, name="gn"), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    with pytest.raises(UnsupportedLayerError) as info:
        load_scratch(model)
    msg = str(info.value)
    assert "'gn'" in msg and "GroupNormalization" in msg and "Conv2D" in msg and "LSTM" in msg and "GRU" in msg
    assert info.value.layer_name == "gn" and info.value.class_name == "GroupNormalization"


def test_unsupported_setting_is_named():
    model = keras.Sequential([keras.Input((3, 8, 8)), keras.layers.Conv2D(2, 3, data_format="channels_first",
                                                                          name="cf"),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(UnsupportedLayerError, match="'cf'.*channels_last"):
        load_scratch(model)


def test_wrong_image_shape_names_layer_and_both_shapes():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="first_conv"),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    scratch = load_scratch(model)
    with pytest.raises(InputShapeError) as info:
        scratch.forward(np.zeros((1, 8, 8, 4), np.float32))
    msg = str(info.value)
    assert "first_conv" in msg and "(batch, 8, 8, 3)" in msg and "(1, 8, 8, 4)" in msg


def test_layer_level_shape_and_dtype_errors():
    conv = Conv2D("c1", filters=2, kernel_size=3)
    conv.set_weights([np.zeros((3, 3, 3, 2)), np.zeros(2)])
    with pytest.raises(InputShapeError, match=r"'c1' \(Conv2D\).*\(batch, height, width, 3\).*\(2, 5, 5, 1\)"):
        conv.forward(np.zeros((2, 5, 5, 1), np.float32))
    dense = Dense("d1", units=4)
    dense.set_weights([np.zeros((6, 4)), np.zeros(4)])
    with pytest.raises(InputShapeError, match=r"'d1' \(Dense\).*6.*\(3, 5\)"):
        dense.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(InputShapeError, match="numeric"):
        dense.forward(np.array([["a"] * 6]))
    lstm = LSTM("l1", units=2)
    lstm.set_weights([np.zeros((3, 8)), np.zeros((2, 8)), np.zeros(8)])
    with pytest.raises(InputShapeError, match=r"'l1' \(LSTM\).*\(batch, timesteps, 3\)"):
        lstm.forward(np.zeros((2, 3), np.float32))


def test_weight_shapes_are_checked_on_set():
    dense = Dense("d1", units=4)
    with pytest.raises(WeightMismatchError, match=r"'d1'.*'bias'.*\(4\).*\(5,\)"):
        dense.set_weights([np.zeros((6, 4)), np.zeros(5)])
    with pytest.raises(WeightMismatchError, match="takes 2 weight arrays"):
        dense.set_weights([np.zeros((6, 4))])
