"""Dense, Flatten, Activation, Softmax, Rescaling, Dropout, Reshape, InputLayer."""
from __future__ import annotations

import numpy as np

from nntrace.layers import activations
from nntrace.layers.base import Layer, as_float32
from nntrace.layers.errors import InputShapeError


class Dense(Layer):
    """`activation(x @ kernel + bias)` on the last axis.

    Input shape: `(batch, ..., in)`. Output shape: `(batch, ..., units)`.
    Weights: kernel `(in, units)`, bias `(units,)`.
    """

    config_keys = ("units", "activation", "use_bias")
    defaults = {"activation": "linear", "use_bias": True}
    supports_masking = True

    def weight_shapes(self):
        units = self.config["units"]
        shapes = {"kernel": (None, units)}
        if self.config.get("use_bias", True):
            shapes["bias"] = (units,)
        return shapes

    def built(self):
        self.act = self.activation_fn()

    def pre_activation(self, x: np.ndarray) -> np.ndarray:
        z = as_float32(x) @ self.weights["kernel"]
        if "bias" in self.weights:
            z += self.weights["bias"]
        return z

    def call(self, x, mask, training):
        n_in = self.weights["kernel"].shape[0]
        self.expect(x, None, n_in, f"(batch, ..., {n_in})")
        return self.act(self.pre_activation(x))

    def steps(self, x, mask=None, context=None, units=None, top: int = 10):
        """One `DenseNeuron` per unit of sample `x` `(1, in)` (its `top` largest contributions first);
        then, with a softmax activation, one `SoftmaxStep`."""
        from nntrace.tracer.events import DenseNeuron

        x1 = as_float32(x).reshape(-1)
        kernel, bias = self.weights["kernel"], self.weights.get("bias")
        name = activations.activation_name(self.config.get("activation"))
        softmax = softmax_step(self.name, self.pre_activation(x.reshape(1, -1))[0]) if name == "softmax" else None
        for u in range(kernel.shape[1]) if units is None else units:
            contributions = x1 * kernel[:, u]
            order = np.argsort(-np.abs(contributions), kind="stable")[:top]
            total = contributions.sum(dtype=np.float32)
            b = np.float32(0.0) if bias is None else bias[u]
            pre = np.float32(total + b)
            value = softmax.probabilities[u] if softmax else self.act(np.array([pre], np.float32))[0]
            top_sum = contributions[order].sum(dtype=np.float32)
            yield DenseNeuron(self.name, unit=u, inputs=order.astype(np.int32), contributions=contributions[order],
                              rest=float(total - top_sum), n_inputs=int(x1.size), total=float(total), bias=float(b), pre_activation=float(pre), activation=name,
                              value=float(value))
        if softmax is not None:
            yield softmax


class Flatten(Layer):
    """Row-major flatten of everything after the batch axis: `(batch, h, w, c)` → `(batch, h*w*c)`."""

    def call(self, x, mask, training):
        if not isinstance(x, np.ndarray) or x.ndim < 2:
            raise InputShapeError(self.name, "Flatten", "of shape (batch, ...)", getattr(x, "shape", type(x)))
        return x.reshape(x.shape[0], -1)

    def steps(self, x, mask=None, context=None):
        """One `FlattenMap`: flat index k comes from input cell `sources[k]` (row-major, channels last)."""
        from nntrace.tracer.events import FlattenMap

        shape = x.shape[1:]
        yield FlattenMap(self.name, input_shape=tuple(shape),
                         sources=np.indices(shape).reshape(len(shape), -1).T.astype(np.int32))


class Reshape(Layer):
    """Reshape everything after the batch axis to `target_shape`."""

    config_keys = ("target_shape",)

    def call(self, x, mask, training):
        target = tuple(self.config["target_shape"])
        if int(np.prod(x.shape[1:])) != int(np.prod([t for t in target if t != -1])) and -1 not in target:
            raise InputShapeError(self.name, "Reshape", f"with {int(np.prod(target))} values per sample", x.shape)
        return x.reshape((x.shape[0],) + target)


class Activation(Layer):
    """An activation on its own: `(batch, ...)` → same shape."""

    config_keys = ("activation",)
    supports_masking = True

    def built(self):
        self.act = self.activation_fn()

    def call(self, x, mask, training):
        return self.act(as_float32(x))

    def check_config(self, config):
        super().check_config(config)
        self.act = self.activation_fn()


class Softmax(Layer):
    """Softmax over `axis` (default the last)."""

    config_keys = ("axis",)
    supports_masking = True

    def call(self, x, mask, training):
        return activations.softmax(as_float32(x), axis=self.config.get("axis", -1))

    def steps(self, x, mask=None, context=None):
        yield softmax_step(self.name, as_float32(x).reshape(-1))


class Rescaling(Layer):
    """`x * scale + offset`, e.g. raw 0–255 pixels to 0–1."""

    config_keys = ("scale", "offset")
    defaults = {"scale": 1.0, "offset": 0.0}
    supports_masking = True

    def call(self, x, mask, training):
        self.expect(x, None, None, "(batch, ...)")
        scale = np.asarray(self.config.get("scale", 1.0), np.float32)
        offset = np.asarray(self.config.get("offset", 0.0), np.float32)
        return as_float32(x) * scale + offset


class Dropout(Layer):
    """Identity at inference; inverted dropout (keep with prob 1-rate, scale 1/(1-rate)) in training.

    The training-time RNG is seedable through `seed` in the config or `self.rng`.
    """

    config_keys = ("rate", "seed", "noise_shape")
    supports_masking = True

    def __init__(self, name, **config):
        super().__init__(name, **config)
        self.rng = np.random.default_rng(self.config.get("seed"))

    def steps(self, x, mask=None, context=None):
        from nntrace.tracer.events import DropoutStep

        yield DropoutStep(self.name, rate=float(self.config.get("rate", 0.0)), training=False)

    def call(self, x, mask, training):
        rate = float(self.config.get("rate", 0.0))
        if not training or rate == 0.0:
            return x
        keep = self.rng.random(x.shape) >= rate
        return np.where(keep, as_float32(x) / np.float32(1.0 - rate), np.float32(0.0))


class InputLayer(Layer):
    """Keras's placeholder for the model input; identity, passes the mask on."""

    supports_masking = True

    def call(self, x, mask, training):
        return x


class Identity(Layer):
    """A Keras layer that is the identity at inference (augmentation, SpatialDropout, noise), named
    by `keras_class`; passes the mask on."""

    config_keys = ("keras_class",)
    supports_masking = True

    def call(self, x, mask, training):
        return x


def softmax_step(layer_name: str, logits: np.ndarray):
    """The softmax of one logit vector `(classes,)`, shown step by step (same maths as `softmax`)."""
    from nntrace.tracer.events import SoftmaxStep

    exps = np.exp(logits - logits.max())
    total = exps.sum()
    return SoftmaxStep(layer_name, logits=logits, exps=exps, total=float(total), probabilities=exps / total)
