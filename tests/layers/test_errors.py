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


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16", "float16"])
def test_a_half_precision_policy_is_refused_at_load(policy):
    """nntrace computes in float32: a model computing in float16 or bfloat16 would differ from it
    by far more than round-off (0.03 for bfloat16), so it is refused, naming the policy."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        inputs = keras.Input((8, 8, 3))
        model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="c")(inputs))))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(UnsupportedLayerError, match=f"'c'.*'{policy}'.*float32"):
        load_scratch(model)


def test_a_float64_model_loads():
    keras.mixed_precision.set_global_policy("float64")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_allclose(load_scratch(model).forward(x), model.predict(x, verbose=0), atol=1e-6)


def test_attention_over_a_4d_input_is_refused_at_load():
    """Keras's `attention_axes=(1,)` on a (batch, 4, 5, 6) input attends along axis 1 for each of
    the 5 columns; nntrace's attention takes (batch, sequence, features) only and says so when the
    model loads, not when it first runs."""
    inputs = keras.Input((4, 5, 6))
    layer = keras.layers.MultiHeadAttention(2, key_dim=3, attention_axes=(1,), name="mha")
    model = keras.Model(inputs, layer(inputs, inputs))
    with pytest.raises(UnsupportedLayerError, match=r"'mha'.*query has shape \(None, 4, 5, 6\).*\(batch, sequence, features\)"):
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


def test_a_lambda_activation_is_named_as_a_lambda():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that a lambda is unsafe to serialise
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
                                  keras.layers.Activation(lambda x: x * 2, name="doubled")])
        with pytest.raises(UnsupportedLayerError, match="'doubled'.*unsupported activation '<lambda>'; supported: celu"):
            load_scratch(model)
