"""Regressions: Softmax over several axes from a saved model, BatchNormalization on another axis and with
renorm, Flatten of one number per sample, Dropout's noise_shape."""
import keras
import numpy as np
import pytest

from nntrace.layers import BatchNormalization, Dropout, Flatten, InputShapeError, SpatialDropout1D, SpatialDropout2D
from nntrace.models import load_scratch
from tests.parity import assert_parity, randomise_weights

L = keras.layers


def test_softmax_over_several_axes_loads_from_a_saved_model(tmp_path):
    """A loaded model's config holds the axes as a Keras TrackedList, which NumPy takes for no axis."""
    model = keras.Sequential([keras.Input((3, 4)), L.Dense(4), L.Softmax(axis=(1, 2)), L.Flatten(),
                              L.Dense(2, activation="softmax")])
    randomise_weights(model, 0)
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    scratch = load_scratch(tmp_path / "m.keras")
    assert scratch.layers[1].config["axis"] == (1, 2)
    assert_parity(keras.models.load_model(tmp_path / "m.keras"), x, scratch)
    again = load_scratch(scratch.save_weights(tmp_path / "m.npz"))
    np.testing.assert_array_equal(again.forward(x), scratch.forward(x))


@pytest.mark.parametrize("axis", [1, 2, -2])
def test_batch_normalization_on_another_axis(axis):
    model = keras.Sequential([keras.Input((3, 5, 4)), L.BatchNormalization(axis=axis), L.Flatten(),
                              L.Dense(2, activation="softmax")])
    randomise_weights(model, 1)
    assert_parity(model, np.random.default_rng(1).normal(size=(4, 3, 5, 4)).astype(np.float32))


def test_batch_normalization_shape_error_names_the_axis():
    bn = BatchNormalization("bn", axis=1)
    bn.set_weights([np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)])
    with pytest.raises(InputShapeError, match=r"'bn'.*3 channels on axis 1.*\(2, 4, 3\)"):
        bn.forward(np.zeros((2, 4, 3), np.float32))


def test_batch_normalization_with_renorm_is_the_same_at_inference():
    model = keras.Sequential([keras.Input((6,)), L.BatchNormalization(renorm=True), L.Dense(2, activation="softmax")])
    randomise_weights(model, 2)
    assert len(model.layers[0].get_weights()) == 7
    assert_parity(model, np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32))


def test_flatten_of_one_number_per_sample():
    model = keras.Sequential([keras.Input(()), L.Flatten(), L.Dense(2, activation="softmax")])
    randomise_weights(model, 3)
    x = np.arange(4, dtype=np.float32)
    assert Flatten("f").forward(x).shape == (4, 1)
    assert_parity(model, x)


def test_dropout_noise_shape_shares_one_draw_along_axes_of_size_one():
    x = np.ones((200, 5, 6), np.float32)
    drop = Dropout("d", rate=0.5, noise_shape=(None, 1, 6))
    drop.rng = np.random.default_rng(0)
    y = drop.forward(x, training=True)
    kept = y != 0
    assert (kept == kept[:, :1]).all()  # the same steps of every feature, for all 5 time steps
    assert 0.4 < kept.mean() < 0.6 and set(np.unique(y)) == {0.0, 2.0}
    np.testing.assert_array_equal(drop.forward(x), x)  # inference: the identity
    with pytest.raises(InputShapeError, match="noise_shape"):
        Dropout("d", rate=0.5, noise_shape=(None, 1)).forward(x, training=True)


@pytest.mark.parametrize("cls,shape", [(SpatialDropout1D, (100, 4, 3)), (SpatialDropout2D, (100, 2, 4, 3))])
def test_spatial_dropout_drops_whole_channels(cls, shape):
    drop = cls("sd", rate=0.5)
    drop.rng = np.random.default_rng(1)
    x = np.ones(shape, np.float32)
    kept = drop.forward(x, training=True) != 0
    flat = kept.reshape(shape[0], -1, shape[-1])
    assert (flat == flat[:, :1]).all() and 0.35 < kept.mean() < 0.65
    np.testing.assert_array_equal(drop.forward(x), x)
