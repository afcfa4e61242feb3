"""Winograd's F(2×2, 3×3) path of Conv2D equals Keras's Conv2D (and the direct im2col path) on the
layers that take it: 3×3, stride 1, 'same' and 'valid', even and odd output sizes, with the batch
large enough to take it and split over the cores."""
import keras
import numpy as np
import pytest

from nntrace.layers import Conv2D
from nntrace.layers import conv as conv_module
from nntrace.models import load_scratch

rng = np.random.default_rng(4)


@pytest.mark.parametrize("padding,size,cin,filters,shipped", [("same", 24, 32, 64, False), ("valid", 23, 64, 32, False),
                                                              ("same", 13, 16, 128, False), ("valid", 12, 48, 48, False),
                                                              ("same", 10, 128, 128, True), ("valid", 12, 96, 192, True)])
def test_winograd_conv_matches_keras(padding, size, cin, filters, shipped, monkeypatch):
    if not shipped:  # smaller layers than the shipped thresholds send to Winograd, sent there anyway
        monkeypatch.setattr(conv_module, "WINOGRAD_MIN_CHANNELS", 16)
        monkeypatch.setattr(conv_module, "WINOGRAD_MIN_PRODUCTS", 2048)
    model = keras.Sequential([keras.Input((size, size, cin)),
                              keras.layers.Conv2D(filters, 3, padding=padding, activation="relu")])
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([rng.normal(0, np.sqrt(2 / (9 * cin)), kernel.shape),  # He's scale: outputs ~1
                                  rng.normal(0, 0.5, bias.shape)])
    x = rng.normal(size=(24, size, size, cin)).astype(np.float32)
    scratch = load_scratch(model)
    layer = scratch.layers[-1]
    assert isinstance(layer, Conv2D) and layer.winograd
    assert x.shape[0] * (size - (padding == "valid") * 2) ** 2 >= layer.chunk_rows  # the batch takes the path
    ours = scratch.forward(x)
    np.testing.assert_allclose(ours, model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    direct = Conv2D("d", **{k: v for k, v in layer.config.items() if k != "name"})
    direct.set_weights(layer.get_weights())
    saved = conv_module.WINOGRAD_MIN_CHANNELS
    conv_module.WINOGRAD_MIN_CHANNELS = 10**9
    try:
        assert not direct.winograd
        np.testing.assert_allclose(ours, direct.forward(x), rtol=1e-5, atol=1e-5)
    finally:
        conv_module.WINOGRAD_MIN_CHANNELS = saved


def test_small_layers_and_strided_ones_stay_direct():
    for kwargs, cin in (({"kernel_size": 3, "strides": 2}, 64), ({"kernel_size": 5}, 64), ({"kernel_size": 3}, 8),
                        ({"kernel_size": 3, "dilation_rate": 2}, 64)):
        layer = Conv2D("c", filters=64, padding="same", **kwargs)
        k = kwargs["kernel_size"]
        layer.set_weights([np.zeros((k, k, cin, 64), np.float32), np.zeros(64, np.float32)])
        assert not layer.winograd, kwargs
