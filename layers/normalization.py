"""BatchNormalization at inference (moving statistics) and LayerNormalization (each sample's own)."""
from __future__ import annotations

import numpy as np

from nntrace.layers import vector_ops
from nntrace.layers.base import Layer, as_float32
from nntrace.layers.errors import InputShapeError


class BatchNormalization(Layer):
    """`(x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta` along the channel `axis`
    (default the last).

    Input and output shape: `(batch, ..., channels, ...)`, channels on `axis`.
    Weights (Keras order): gamma, beta, moving_mean, moving_variance (gamma/beta only when
    `scale`/`center`); with `renorm`, also moving_stddev, renorm_mean and renorm_stddev, which only
    training reads (inference is the same maths).
    """

    config_keys = ("axis", "epsilon", "center", "scale", "renorm")
    defaults = {"axis": -1, "epsilon": 1e-3, "center": True, "scale": True, "renorm": False}
    supports_masking = True

    def check_config(self, config):
        super().check_config(config)
        axis = config.get("axis", -1)
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                self.unsupported(f"axis {list(axis)} is not supported (one channel axis)")
            axis = axis[0]
        self.config["axis"] = int(axis)
        if self.config["axis"] == 0:
            self.unsupported("axis 0 (the batch axis) is not supported")

    def weight_shapes(self):
        names = (["gamma"] if self.config.get("scale", True) else []) + \
                (["beta"] if self.config.get("center", True) else []) + ["moving_mean", "moving_variance"]
        if self.config.get("renorm", False):
            names += ["moving_stddev", "renorm_mean", "renorm_stddev"]
        return {n: (None,) for n in names}

    def channel_axis(self, ndim: int) -> int:
        """The channel axis of a rank-`ndim` input, counted from 0."""
        return int(self.config.get("axis", -1)) % ndim

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
        c, axis = self.weights["moving_mean"].shape[0], int(self.config.get("axis", -1))
        self.expect(x, None, None, f"(batch, ...) with {c} channels on axis {axis}")
        if not -x.ndim < axis < x.ndim or x.shape[axis] != c:
            raise InputShapeError(self.name, "BatchNormalization", f"with {c} channels on axis {axis}",
                                  f"shape {x.shape}")
        a = self.channel_axis(x.ndim)
        if a == x.ndim - 1:
            return vector_ops.scale_shift(as_float32(x), self.multiplier, self.shift)
        along = (c,) + (1,) * (x.ndim - 1 - a)  # broadcast over the axes after the channels
        return as_float32(x) * self.multiplier.reshape(along) + self.shift.reshape(along)

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """Inference BatchNormalization is affine: dL/dx = dy·γ/√(var+ε); γ gets
        Σ dy·(x − mean)/√(var+ε) and β gets Σ dy over every axis but the last; the moving
        statistics get nothing."""
        if self.channel_axis(np.ndim(dy)) != np.ndim(dy) - 1:
            self.unsupported("the backward pass with the channels on another axis than the last is not supported")
        w = self.weights
        dy = as_float32(dy)
        rows = dy.reshape(-1, dy.shape[-1])
        grads = {}
        d_beta = vector_ops.channel_sums(rows)
        if "gamma" in w:
            inv_std = (1.0 / np.sqrt(w["moving_variance"] + np.float32(self.config.get("epsilon", 1e-3)))).astype(
                np.float32)
            # Σ dy·(x − mean) per channel. Where a mean lies many standard deviations from 0,
            # Σ dy·x − mean·Σ dy would cancel the digits away: the mean is taken off block by block
            # first (as Keras computes x − mean); elsewhere the cheaper form loses nothing.
            mean = w["moving_mean"]
            far = bool(np.any(np.abs(mean) * inv_std > 4))
            x_rows = as_float32(x).reshape(rows.shape)
            centred = (vector_ops.channel_dot_sums(rows, x_rows, mean) if far
                       else vector_ops.channel_dot_sums(rows, x_rows) - mean * d_beta)
            grads["gamma"] = centred * inv_std
        if "beta" in w:
            grads["beta"] = d_beta
        return vector_ops.scale_shift(dy, self.multiplier), grads


class LayerNormalization(Layer):
    """Each sample normalised over `axis` (default the last; several axes together) with its own
    mean and variance: `(x − mean) / sqrt(variance + epsilon) · gamma + beta`.

    Input and output shape: `(batch, ...)`. Weights: gamma (`scale`), beta (`center`), each the
    input's sizes on `axis`. With the deprecated `rms_scaling`: `x / sqrt(variance + epsilon) · gamma`.
    """

    config_keys = ("axis", "epsilon", "center", "scale", "rms_scaling")
    defaults = {"axis": -1, "epsilon": 1e-3, "center": True, "scale": True, "rms_scaling": False}
    supports_masking = True

    def __init__(self, name, **config):
        super().__init__(name, **config)
        axis = self.config.get("axis", -1)
        self.config["axis"] = sorted(int(a) for a in axis) if isinstance(axis, (list, tuple)) else [int(axis)]

    def weight_shapes(self):
        rms = self.config.get("rms_scaling", False)
        names = (["gamma"] if self.config.get("scale", True) or rms else []) + \
                (["beta"] if self.config.get("center", True) and not rms else [])
        return {n: (None,) * len(self.config["axis"]) for n in names}

    def axes(self, ndim: int) -> tuple[int, ...]:
        return tuple(sorted(a % ndim for a in self.config["axis"]))

    def statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(mean, variance) over the normalised axes (kept as size 1), and gamma, beta shaped to
        broadcast against `x`."""
        axes = self.axes(x.ndim)
        if 0 in axes or any(a >= x.ndim for a in axes):
            raise InputShapeError(self.name, "LayerNormalization", f"axes {self.config['axis']} after the batch axis",
                                  f"shape {x.shape}")
        mean = x.mean(axis=axes, keepdims=True)
        variance = np.square(x - mean).mean(axis=axes, keepdims=True)
        shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        gamma, beta = (self.weights[n].reshape(shape) if n in self.weights else None for n in ("gamma", "beta"))
        if gamma is not None and tuple(self.weights["gamma"].shape) != tuple(x.shape[a] for a in axes):
            raise InputShapeError(self.name, "LayerNormalization",
                                  f"sizes {self.weights['gamma'].shape} on axes {self.config['axis']}",
                                  f"shape {x.shape}")
        return mean, variance, gamma, beta

    def call(self, x, mask, training):
        self.expect(x, None, None, "(batch, ...)")
        x = as_float32(x)
        mean, variance, gamma, beta = self.statistics(x)
        inv = 1 / np.sqrt(variance + np.float32(self.config.get("epsilon", 1e-3)))
        if self.config.get("rms_scaling", False):
            return x * inv * gamma if gamma is not None else x * inv
        if gamma is not None:
            inv = inv * gamma
        shift = -mean * inv
        if beta is not None:
            shift = shift + beta
        return x * inv + shift

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx `(batch, ...)` and {gamma, beta} (each the input's sizes on `axis`) for dy shaped
        like x. With x̂ = (x − mean)·inv, inv = 1/√(variance + ε) over the N normalised values and
        g = dy·γ: dL/dx = inv·(g − mean(g) − x̂·mean(g·x̂)); γ gets Σ dy·x̂ and β Σ dy over the other
        axes. With `rms_scaling` (y = x·inv·γ): dL/dx = inv·g − inv³·mean(g·x)·(x − mean)."""
        self.expect(x, None, None, "(batch, ...)")
        x, dy = as_float32(x), as_float32(dy)
        mean, variance, gamma, _ = self.statistics(x)
        axes = self.axes(x.ndim)
        others = tuple(a for a in range(x.ndim) if a not in axes)
        inv = (1 / np.sqrt(variance + np.float32(self.config.get("epsilon", 1e-3)))).astype(np.float32)
        centred = x - mean
        g = dy if gamma is None else dy * gamma
        grads = {}
        if self.config.get("rms_scaling", False):
            dx = g * inv - inv ** 3 * (g * x).mean(axis=axes, keepdims=True) * centred
            if gamma is not None:
                grads["gamma"] = self.sum_over(dy * x * inv, others, "gamma")
            return dx.astype(np.float32), grads
        normed = centred * inv
        dx = inv * (g - g.mean(axis=axes, keepdims=True) - normed * (g * normed).mean(axis=axes, keepdims=True))
        if gamma is not None:
            grads["gamma"] = self.sum_over(dy * normed, others, "gamma")
        if "beta" in self.weights:
            grads["beta"] = self.sum_over(dy, others, "beta")
        return dx.astype(np.float32), grads

    def sum_over(self, v: np.ndarray, others: tuple[int, ...], weight: str) -> np.ndarray:
        """`v` summed over the axes `others` (those not normalised), shaped like `weight`: by
        `vector_ops.channel_sums` when they lead (the usual case), else accumulated in float64."""
        shape = self.weights[weight].shape
        if others == tuple(range(len(others))):
            return vector_ops.channel_sums(v.reshape(-1, int(np.prod(v.shape[len(others):])))).reshape(shape)
        return v.sum(axis=others, dtype=np.float64).astype(np.float32).reshape(shape)

    def steps(self, x, mask=None, context=None, positions=None):
        """One `NormalizeStep` per normalised group of sample `x` (a position of the other axes, in
        row-major order; `positions` keeps those indices)."""
        from nntrace.tracer.events import NormalizeStep

        x = as_float32(x)
        mean, variance, gamma, beta = self.statistics(x)
        eps = np.float32(self.config.get("epsilon", 1e-3))
        out = self.call(x, mask, False)
        axes = self.axes(x.ndim)
        others = [a for a in range(1, x.ndim) if a not in axes]
        order = [0] + others + list(axes)
        grid = [x.shape[a] for a in others]
        xs, outs = (np.transpose(v, order).reshape([-1] + [x.shape[a] for a in axes]) for v in (x, out))
        means, variances = (np.transpose(v, order).reshape(-1) for v in (mean, variance))
        g = None if gamma is None else self.weights["gamma"]
        b = None if beta is None else self.weights["beta"]
        for k in range(len(xs)) if positions is None else positions:
            inv_std = 1 / np.sqrt(variances[k] + eps)
            yield NormalizeStep(self.name, position=tuple(int(i) for i in np.unravel_index(k, grid)) if grid else (),
                                values=xs[k], mean=float(means[k]), variance=float(variances[k]), epsilon=float(eps),
                                normalized=(xs[k] - means[k]) * inv_std if not self.config.get("rms_scaling")
                                else xs[k] * inv_std, gamma=g, beta=b, output=outs[k])
