"""Dense, Flatten, Activation, Softmax, Rescaling, Dropout, Reshape, InputLayer."""
from __future__ import annotations

import numpy as np

from nntrace.layers import activations, vector_ops
from nntrace.layers.base import Layer, as_float32
from nntrace.layers.parallel import MIN_SPLIT, over_batch
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

    def check_input(self, x: np.ndarray) -> None:
        n_in = self.weights["kernel"].shape[0]
        self.expect(x, None, n_in, f"(batch, ..., {n_in})")

    def call(self, x, mask, training):
        self.check_input(x)
        if x.ndim == 2 and x.shape[0] >= 2 * MIN_SPLIT:  # a batch of vectors: split over the cores
            return np.concatenate(over_batch(lambda lo, hi: self.act(self.pre_activation(x[lo:hi])), x.shape[0]))
        return self.act(self.pre_activation(x))

    def forward_with_cache(self, x, mask=None):
        """The output, and the pre-activation when the activation's gradient needs it."""
        if not self.weights or not activations.needs_input(self.config.get("activation")):
            return self.forward(x, mask), None
        self.check_input(x)
        z = self.pre_activation(x)
        return self.act(z), z

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx `(batch, ..., in)` and {kernel, bias} for dy `(batch, ..., units)`."""
        z = cache
        if z is None and activations.needs_input(self.config.get("activation")):
            z = self.pre_activation(x)
        if y is None:
            y = self.forward(x) if z is None else self.act(z)
        return self.backward_pre_activation(self.activation_backward(as_float32(dy), z, y), x)

    def backward_pre_activation(self, dz: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """From dL/d(pre-activation) `dz` `(batch, ..., units)`: kernel `xᵀ·dz`, bias `Σ dz`,
        dL/dx `dz·kernelᵀ`, with every leading axis treated as batch."""
        kernel = self.weights["kernel"]
        x2 = as_float32(x).reshape(-1, kernel.shape[0])
        dz2 = as_float32(dz).reshape(-1, kernel.shape[1])
        grads = {"kernel": x2.T @ dz2}
        if "bias" in self.weights:
            grads["bias"] = vector_ops.channel_sums(dz2)
        return (dz2 @ kernel.T).reshape(np.shape(x)), grads

    def steps(self, x, mask=None, context=None, units=None, top: int = 10):
        """One `DenseNeuron` per unit of sample `x` `(1, in)` (its `top` largest contributions first);
        then, with a softmax activation, one `SoftmaxStep`. A Dense applied to a sequence
        `(1, timesteps, in)` has no unit steps: the layer's summary shows its output."""
        from nntrace.tracer.events import DenseNeuron

        if np.ndim(x) > 2:
            return
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

    def backward_steps(self, x, mask=None, dy=None, context=None, dz=None, units=None, top: int = 10):
        """One `DenseGradient` per unit of sample `x` `(1, in)`: δ, then its `top` largest weight
        gradients x_i·δ. `dy` is ∂L/∂y `(1, units)`; `dz` (∂L/∂z) replaces it for a final softmax
        whose loss gives δ directly. A Dense on a sequence has no unit steps."""
        from nntrace.tracer.events import DenseGradient

        if np.ndim(x) > 2:
            return
        x1 = as_float32(x).reshape(-1)
        name = activations.activation_name(self.config.get("activation"))
        slopes = None
        if dz is None:
            z = self.pre_activation(x.reshape(1, -1))
            y = self.act(z)
            delta = self.activation_backward(as_float32(dy).reshape(1, -1), z, y)[0]
            if name != "softmax":
                slopes = activations.derivative(activations.gradient(name), z, y)[0]
        else:
            delta = as_float32(dz).reshape(-1)
        has_bias = "bias" in self.weights
        for u in range(delta.size) if units is None else units:
            products = x1 * delta[u]
            order = np.argsort(-np.abs(products), kind="stable")[:top]
            yield DenseGradient(self.name, unit=u, output_gradient=None if dz is not None else float(dy.reshape(-1)[u]),
                                slope=None if slopes is None else float(slopes[u]), delta=float(delta[u]),
                                inputs=order.astype(np.int32), x=x1[order], weight_gradients=products[order],
                                n_inputs=int(x1.size), bias_gradient=float(delta[u]) if has_bias else None,
                                activation=name, from_loss=dz is not None)


class Flatten(Layer):
    """Row-major flatten of everything after the batch axis: `(batch, h, w, c)` → `(batch, h*w*c)`;
    `(batch,)` → `(batch, 1)` as in Keras."""

    def call(self, x, mask, training):
        if not isinstance(x, np.ndarray) or x.ndim < 1:
            raise InputShapeError(self.name, "Flatten", "of shape (batch, ...)", getattr(x, "shape", type(x)))
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))

    def backward(self, dy, x, mask=None, y=None, cache=None):
        return np.reshape(dy, np.shape(x)), {}

    def steps(self, x, mask=None, context=None):
        """One `FlattenMap`: flat index k comes from input cell `sources[k]` (row-major, channels last)."""
        from nntrace.tracer.events import FlattenMap

        shape = x.shape[1:]
        if not shape:  # one number per sample: nothing to rearrange
            return
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

    def backward(self, dy, x, mask=None, y=None, cache=None):
        return np.reshape(dy, np.shape(x)), {}


class Activation(Layer):
    """An activation on its own: `(batch, ...)` → same shape."""

    config_keys = ("activation",)
    supports_masking = True

    def built(self):
        self.act = self.activation_fn()

    def call(self, x, mask, training):
        return self.act(as_float32(x))

    def backward(self, dy, x, mask=None, y=None, cache=None):
        x = as_float32(x)
        return self.activation_backward(as_float32(dy), x, self.output_of(x, mask, y)), {}

    def backward_pre_activation(self, dz: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """The layer is only its activation: dL/d(pre-activation) is dL/dx."""
        return as_float32(dz), {}

    def check_config(self, config):
        super().check_config(config)
        self.act = self.activation_fn()


class Softmax(Layer):
    """Softmax over `axis` (default the last; several axes normalise over all of them together).

    With a mask (broadcast against the input from the right), masked positions count as −1e9
    before the softmax and are 0 after it, as in Keras.
    """

    config_keys = ("axis",)
    supports_masking = True

    def __init__(self, name, **config):
        super().__init__(name, **config)
        self.config["axis"] = axis_of(self.config.get("axis", -1))

    def call(self, x, mask, training):
        x = as_float32(x)
        keep = self.mask_for(x, mask)
        if keep is not None:
            x = np.where(keep, x, np.float32(-1e9))
        axis = self.config["axis"]
        if isinstance(axis, int):
            out = activations.softmax(x, axis=axis)
        else:
            top = x.max(axis=axis, keepdims=True)
            out = np.exp(x - (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))))
        return out if keep is None else np.where(keep, out, np.float32(0))

    def mask_for(self, x: np.ndarray, mask) -> np.ndarray | None:
        if mask is None:
            return None
        mask = np.asarray(mask)
        if mask.ndim > x.ndim or any(m not in (1, n) for m, n in zip(mask.shape[::-1], x.shape[::-1])):
            raise InputShapeError(self.name, "Softmax", f"a mask that broadcasts to {x.shape}", f"shape {mask.shape}")
        return mask > 0.5 if mask.dtype != bool else mask

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """The Jacobian-vector product `(dy − Σ dy·p)·p` over `axis`."""
        p = self.output_of(x, mask, y)
        return activations.softmax_grad(as_float32(dy), None, p, axis=self.config.get("axis", -1)), {}

    def backward_pre_activation(self, dz: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, dict]:
        return as_float32(dz), {}

    def steps(self, x, mask=None, context=None):
        """One `SoftmaxStep` when each sample is one vector of logits (masked ones at −1e9)."""
        x = as_float32(x)
        if x.ndim != 2 or self.config["axis"] not in (-1, 1):
            return
        keep = self.mask_for(x, mask)
        yield softmax_step(self.name, (x if keep is None else np.where(keep, x, np.float32(-1e9))).reshape(-1))


def axis_of(axis) -> int | tuple[int, ...]:
    """A Keras `axis` setting (an int, or a list as a saved model gives it) as an int or a tuple."""
    if isinstance(axis, (list, tuple)):
        axes = tuple(int(a) for a in axis)
        return axes[0] if len(axes) == 1 else axes
    return int(axis)


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

    def backward(self, dy, x, mask=None, y=None, cache=None):
        return as_float32(dy) * np.asarray(self.config.get("scale", 1.0), np.float32), {}


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
        keep = self.rng.random(self.noise_shape(x)) >= rate  # broadcast over the axes of size 1
        return np.where(keep, as_float32(x) / np.float32(1.0 - rate), np.float32(0.0))

    def noise_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """The shape of the keep/drop draws: `noise_shape` with None read from the input (one draw
        per position where it says 1, shared along that axis), or the input's shape."""
        shape = self.config.get("noise_shape")
        if shape is None:
            return x.shape
        if len(shape) != x.ndim:
            raise InputShapeError(self.name, type(self).__name__, f"{len(shape)} axes (noise_shape {tuple(shape)})",
                                  f"shape {x.shape}")
        return tuple(n if s is None else int(s) for s, n in zip(shape, x.shape))

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """The identity, as the inference forward pass is."""
        return dy, {}


class InputLayer(Layer):
    """Keras's placeholder for the model input; identity, passes the mask on."""

    supports_masking = True

    def call(self, x, mask, training):
        return x

    def backward(self, dy, x, mask=None, y=None, cache=None):
        return dy, {}


class Identity(Layer):
    """A Keras layer that is the identity at inference (augmentation, SpatialDropout, noise), named
    by `keras_class`; passes the mask on."""

    config_keys = ("keras_class",)
    supports_masking = True

    def call(self, x, mask, training):
        return x

    def backward(self, dy, x, mask=None, y=None, cache=None):
        return dy, {}


def softmax_step(layer_name: str, logits: np.ndarray):
    """The softmax of one logit vector `(classes,)`, shown step by step (same maths as `softmax`)."""
    from nntrace.tracer.events import SoftmaxStep

    exps = np.exp(logits - logits.max())
    total = exps.sum()
    return SoftmaxStep(layer_name, logits=logits, exps=exps, total=float(total), probabilities=exps / total)


class SpatialDropout1D(Dropout):
    """Dropout of whole channels: one keep/drop draw per (sample, channel) for `(batch, steps,
    channels)`; the identity at inference."""

    config_keys = ("rate", "seed")

    def noise_shape(self, x):
        self.expect(x, 3, None, "(batch, steps, channels)")
        return x.shape[0], 1, x.shape[2]


class SpatialDropout2D(Dropout):
    """Dropout of whole feature maps: one keep/drop draw per (sample, channel) for `(batch, h, w,
    channels)`; the identity at inference."""

    config_keys = ("rate", "seed")

    def noise_shape(self, x):
        self.expect(x, 4, None, "(batch, height, width, channels)")
        return x.shape[0], 1, 1, x.shape[3]


class ReLU(Layer):
    """Keras's ReLU layer: `max_value` caps the output, inputs at or below `threshold` give 0 (or,
    with a `negative_slope`, `negative_slope·(x − threshold)`)."""

    config_keys = ("max_value", "negative_slope", "threshold")
    defaults = {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}
    supports_masking = True

    def call(self, x, mask, training):
        x = as_float32(x)
        slope, top, threshold = (self.config.get(k) for k in ("negative_slope", "max_value", "threshold"))
        slope, threshold = float(slope or 0.0), float(threshold or 0.0)
        if slope and top is None and not threshold:
            return activations.leaky_relu(x, slope)
        negative = activations.relu(threshold - x) if slope else None
        clip = top is not None
        if threshold:
            y = np.where(x > np.float32(threshold), x, np.float32(0))
        elif top == 6:
            y, clip = activations.relu6(x), False
        else:
            y = activations.relu(x)
        if clip:
            y = np.clip(y, np.float32(0), np.float32(top))
        if slope:
            y = y - np.float32(slope) * negative
        return y

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx, shaped like `x`, each step of `call` differentiated as TensorFlow does: ReluGrad
        passes where its output is > 0, Relu6Grad where 0 < x < 6, the `where` above `threshold`
        where x > threshold, the clip to max_value (Minimum, then Maximum) where 0 ≤ value ≤
        max_value; the negative part adds `negative_slope·dy` where `threshold − x > 0`; the plain
        leaky case is LeakyReluGrad (`negative_slope·dy` where x ≤ 0)."""
        x, dy = as_float32(x), as_float32(dy)
        slope, top, threshold = (self.config.get(k) for k in ("negative_slope", "max_value", "threshold"))
        slope, threshold = float(slope or 0.0), float(threshold or 0.0)
        if slope and top is None and not threshold:
            return activations.leaky_relu_grad(dy, x, None, slope), {}
        clip = top is not None
        if threshold:
            passed = x > np.float32(threshold)
            value = np.where(passed, x, np.float32(0))
        elif top == 6:
            passed, clip = (x > 0) & (x < 6), False
        else:
            value = activations.relu(x)
            passed = value > 0
        if clip:
            passed &= (value >= 0) & (value <= np.float32(top))
        dx = np.multiply(dy, passed, dtype=np.float32)
        if slope:
            dx += np.float32(slope) * np.multiply(dy, activations.relu(threshold - x) > 0, dtype=np.float32)
        return dx, {}

    def steps(self, x, mask=None, context=None):
        """One `ActivationStep`: the sample's input and output."""
        from nntrace.tracer.events import ActivationStep

        top = self.config.get("max_value")
        yield ActivationStep(self.name, function="relu", x=as_float32(x)[0], y=self.call(x, mask, False)[0],
                             negative_slope=float(self.config.get("negative_slope") or 0.0),
                             max_value=None if top is None else float(top),
                             threshold=float(self.config.get("threshold") or 0.0))


class LeakyReLU(Layer):
    """`x` where x > 0, `negative_slope·x` elsewhere (Keras's default slope 0.3)."""

    config_keys = ("negative_slope",)
    defaults = {"negative_slope": 0.3}
    supports_masking = True

    def call(self, x, mask, training):
        return activations.leaky_relu(as_float32(x), float(self.config["negative_slope"]))

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """LeakyReluGrad: dy where x > 0, `negative_slope·dy` elsewhere."""
        return activations.leaky_relu_grad(as_float32(dy), as_float32(x), None,
                                           float(self.config["negative_slope"])), {}

    def steps(self, x, mask=None, context=None):
        """One `ActivationStep`: the sample's input and output."""
        from nntrace.tracer.events import ActivationStep

        yield ActivationStep(self.name, function="leaky_relu", x=as_float32(x)[0], y=self.call(x, mask, False)[0],
                             negative_slope=float(self.config["negative_slope"]))


class ELU(Layer):
    """`x` where x > 0, `alpha·(exp(x) − 1)` elsewhere."""

    config_keys = ("alpha",)
    defaults = {"alpha": 1.0}
    supports_masking = True

    def call(self, x, mask, training):
        return activations.elu(as_float32(x), float(self.config["alpha"]))

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """As TensorFlow differentiates Keras's `where(x > 0, elu(x), alpha·elu(x))`: the `where`
        scales dy by alpha where x ≤ 0, then EluGrad multiplies by `elu(x) + 1` where elu(x) < 0."""
        x, dy = as_float32(x), as_float32(dy)
        alpha = np.float32(self.config["alpha"])
        unit = activations.elu(x, 1.0)  # tf.nn.elu(x)
        d_unit = dy if alpha == 1 else np.where(x > 0, dy, alpha * dy)
        return activations.elu_grad(d_unit, x, unit), {}

    def steps(self, x, mask=None, context=None):
        """One `ActivationStep`: the sample's input and output."""
        from nntrace.tracer.events import ActivationStep

        yield ActivationStep(self.name, function="elu", x=as_float32(x)[0], y=self.call(x, mask, False)[0],
                             alpha=np.array([self.config["alpha"]], np.float32))


class PReLU(Layer):
    """A leaky ReLU whose slopes are weights: `relu(x) − alpha·relu(−x)`.

    Weights: alpha, the input's shape without the batch axis, with size 1 along `shared_axes`.
    """

    config_keys = ("shared_axes",)
    defaults = {"shared_axes": None}
    supports_masking = True

    def weight_shapes(self):
        rank = self.weights["alpha"].ndim if "alpha" in self.weights else getattr(self, "rank", 1)
        return {"alpha": (None,) * rank}

    def set_weights(self, arrays):
        self.rank = np.ndim(arrays[0]) if len(arrays) == 1 else 1
        super().set_weights(arrays)

    def call(self, x, mask, training):
        alpha = self.weights["alpha"]
        self.expect(x, alpha.ndim + 1, None, f"(batch, ...) of rank {alpha.ndim + 1}")
        if any(a not in (1, n) for a, n in zip(alpha.shape, x.shape[1:])):
            raise InputShapeError(self.name, "PReLU", f"a shape that alpha {alpha.shape} fits",
                                  f"shape {x.shape}")
        x = as_float32(x)
        return activations.relu(x) + -alpha * activations.relu(-x)

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx = dy where x > 0, `alpha·dy` where x < 0 (0 at 0: both ReluGrads stop there);
        {alpha: −Σ dy·relu(−x)} summed over the batch and the `shared_axes` (alpha's size-1 axes)."""
        x, dy = as_float32(x), as_float32(dy)
        alpha = self.weights["alpha"]
        negative = activations.relu(-x)
        dx = np.multiply(dy, x > 0, dtype=np.float32) + np.multiply(alpha * dy, negative > 0, dtype=np.float32)
        shared = (0,) + tuple(k + 1 for k, (a, n) in enumerate(zip(alpha.shape, x.shape[1:])) if a == 1 and n != 1)
        d_alpha = -(dy * negative).sum(axis=shared, keepdims=True, dtype=np.float32)[0]
        return dx, {"alpha": d_alpha.reshape(alpha.shape)}

    def steps(self, x, mask=None, context=None):
        """One `ActivationStep`: the sample's input and output, and the slopes."""
        from nntrace.tracer.events import ActivationStep

        yield ActivationStep(self.name, function="prelu", x=as_float32(x)[0], y=self.call(x, mask, False)[0],
                             alpha=self.weights["alpha"])


class Masking(Layer):
    """Marks time steps whose features all equal `mask_value` as padding: they become 0 and the mask
    `(batch, steps)` (True where any feature differs) goes to the next layers."""

    config_keys = ("mask_value",)
    defaults = {"mask_value": 0.0}
    supports_masking = True

    def call(self, x, mask, training):
        self.expect(x, None, None, "(batch, steps, ...)")
        keep = (x != np.float32(self.config["mask_value"])).any(axis=-1, keepdims=True)
        return np.where(keep, as_float32(x), np.float32(0))

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx `(batch, steps, ...)`: dy where the step is kept, 0 on padding steps (they became 0)."""
        keep = (np.asarray(x) != np.float32(self.config["mask_value"])).any(axis=-1, keepdims=True)
        return np.where(keep, as_float32(dy), np.float32(0)), {}

    def compute_mask(self, x, mask):
        return (np.asarray(x) != np.float32(self.config["mask_value"])).any(axis=-1)

    def steps(self, x, mask=None, context=None):
        """One `MaskingStep`: which steps of the sample are padding."""
        from nntrace.tracer.events import MaskingStep

        yield MaskingStep(self.name, mask_value=float(self.config["mask_value"]), x=as_float32(x)[0],
                          keep=self.compute_mask(x, mask)[0], y=self.call(x, mask, False)[0])
