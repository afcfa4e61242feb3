"""BatchNormalization at inference: moving statistics, channels last."""
from __future__ import annotations

import numpy as np

from nntrace.layers.base import Layer, as_float32


class BatchNormalization(Layer):
    """`(x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta` over the last axis.

    Input and output shape: `(batch, ..., channels)`.
    Weights (Keras order): gamma, beta, moving_mean, moving_variance (gamma/beta only when
    `scale`/`center`).
    """

    config_keys = ("axis", "epsilon", "center", "scale")
    defaults = {"axis": -1, "epsilon": 1e-3, "center": True, "scale": True}
    supports_masking = True

    def check_config(self, config):
        super().check_config(config)
        axis = config.get("axis", -1)
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                self.unsupported(f"axis {axis} is not supported (only the last axis)")
            self.config["axis"] = int(axis[0])

    def weight_shapes(self):
        names = (["gamma"] if self.config.get("scale", True) else []) + \
                (["beta"] if self.config.get("center", True) else []) + ["moving_mean", "moving_variance"]
        return {n: (None,) for n in names}

    def built(self):
        w = self.weights
        inv = 1.0 / np.sqrt(w["moving_variance"] + np.float32(self.config.get("epsilon", 1e-3)))
        if "gamma" in w:
            inv = inv * w["gamma"]
        self.multiplier = inv.astype(np.float32)
        shift = -w["moving_mean"] * self.multiplier
        if "beta" in w:
            shift = shift + w["beta"]
        self.shift = shift.astype(np.float32)

    def call(self, x, mask, training):
        c = self.weights["moving_mean"].shape[0]
        self.expect(x, None, c, f"(batch, ..., {c})")
        if self.config.get("axis", -1) not in (-1, x.ndim - 1):
            self.unsupported(f"axis {self.config['axis']} is not supported (only the last axis)")
        return as_float32(x) * self.multiplier + self.shift
