"""Keras activations in NumPy, looked up by their Keras names, and their gradients as TensorFlow
computes them."""
from __future__ import annotations

from typing import Callable

import numpy as np

Activation = Callable[[np.ndarray], np.ndarray]
#: `(dy, x, y) -> dx`: the gradient of an activation's input from the gradient of its output `dy`,
#: its input `x` (the pre-activation) and its output `y`, all of one shape.
Gradient = Callable[[np.ndarray, np.ndarray | None, np.ndarray], np.ndarray]


def erf(x: np.ndarray) -> np.ndarray:
    """The error function (scipy's, imported on first use so that importing the layers stays light)."""
    from scipy.special import erf as scipy_erf

    return scipy_erf(x)


def linear(x: np.ndarray) -> np.ndarray:
    return x


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, dtype=x.dtype)


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 6).astype(x.dtype, copy=False)


def leaky_relu(x: np.ndarray, negative_slope: float = 0.2) -> np.ndarray:
    return np.where(x > 0, x, x * np.asarray(negative_slope, x.dtype))


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-x) overflows to inf for very negative x, and 1 / (1 + inf) is exactly the right 0.
    # One new array, then in place: the same float32 operations as 1 / (1 + exp(−x)).
    y = np.negative(x)
    if y.dtype.kind != "f":
        y = y.astype(np.float64)
    with np.errstate(over="ignore"):
        np.exp(y, out=y)
    y += 1
    return np.reciprocal(y, out=y)


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    """Keras 3 definition: relu6(x + 3) / 6."""
    return (np.clip(x + 3, 0, 6) / 6).astype(x.dtype, copy=False)


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype, copy=False)


def selu(x: np.ndarray) -> np.ndarray:
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return (scale * elu(x, alpha)).astype(x.dtype, copy=False)


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(x, 0).astype(x.dtype, copy=False)


def softsign(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.abs(x))


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def gelu(x: np.ndarray) -> np.ndarray:
    """Keras default `approximate=False`: x * Φ(x) with the exact error function."""
    return (0.5 * x * (1 + erf(x / np.sqrt(2)))).astype(x.dtype, copy=False)


def exponential(x: np.ndarray) -> np.ndarray:
    return np.exp(x)


def celu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return (np.maximum(x, 0) + alpha * np.expm1(np.minimum(x, 0) / alpha)).astype(x.dtype, copy=False)


def squareplus(x: np.ndarray, b: float = 4.0) -> np.ndarray:
    return ((x + np.sqrt(np.square(x) + np.asarray(b, x.dtype))) / 2).astype(x.dtype, copy=False)


def soft_shrink(x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    t = np.asarray(threshold, x.dtype)
    return np.where(x > t, x - t, np.where(x < -t, x + t, np.zeros_like(x)))


def sparse_plus(x: np.ndarray) -> np.ndarray:
    return np.where(x <= -1, np.zeros_like(x), np.where(x < 1, np.square(x + 1) / 4, x)).astype(x.dtype, copy=False)


def glu(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The first half of `axis` gated by the sigmoid of the second half (the axis halves)."""
    if x.shape[axis] % 2:
        raise ValueError(f"glu needs an even size on axis {axis}, got shape {x.shape}")
    a, b = np.split(x, 2, axis=axis)
    return a * sigmoid(b)


def tanh_shrink(x: np.ndarray) -> np.ndarray:
    return x - np.tanh(x)


def hard_tanh(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -1, 1).astype(x.dtype, copy=False)


def hard_shrink(x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return np.where(np.abs(x) > threshold, x, np.zeros_like(x))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    return (-np.logaddexp(-x, 0)).astype(x.dtype, copy=False)


def sparse_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x <= -1, np.float32(0), np.where(x >= 1, np.float32(1), (x + 1) / 2)).astype(x.dtype, copy=False)


def hard_silu(x: np.ndarray) -> np.ndarray:
    return x * hard_sigmoid(x)


def mish(x: np.ndarray) -> np.ndarray:
    return x * np.tanh(softplus(x))


def sparsemax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The Euclidean projection of `x` onto the probability simplex along `axis` (sparse probabilities)."""
    z = np.flip(np.sort(x, axis=axis), axis=axis)
    cumsum = np.cumsum(z, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    r = np.arange(1, x.shape[axis] + 1, dtype=x.dtype).reshape(shape)
    support = z - (cumsum - 1) / r > 0
    k = support.sum(axis=axis, keepdims=True).astype(x.dtype)
    tau = (np.where(support, cumsum, 0).sum(axis=axis, keepdims=True) - 1) / k
    return np.maximum(x - tau, 0).astype(x.dtype, copy=False)


ACTIVATIONS: dict[str, Activation] = {
    "linear": linear,
    "relu": relu,
    "relu6": relu6,
    "leaky_relu": leaky_relu,
    "sigmoid": sigmoid,
    "hard_sigmoid": hard_sigmoid,
    "tanh": tanh,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "elu": elu,
    "selu": selu,
    "softplus": softplus,
    "softsign": softsign,
    "silu": silu,
    "swish": silu,
    "gelu": gelu,
    "exponential": exponential,
    "celu": celu,
    "squareplus": squareplus,
    "soft_shrink": soft_shrink,
    "sparse_plus": sparse_plus,
    "glu": glu,
    "tanh_shrink": tanh_shrink,
    "hard_tanh": hard_tanh,
    "hard_shrink": hard_shrink,
    "log_sigmoid": log_sigmoid,
    "sparse_sigmoid": sparse_sigmoid,
    "hard_silu": hard_silu,
    "hard_swish": hard_silu,
    "mish": mish,
    "sparsemax": sparsemax,
}


def activation_name(spec: object) -> str:
    """Normalise a Keras activation config entry (a name, None, or a serialized dict) to a name."""
    if spec is None:
        return "linear"
    if isinstance(spec, dict):  # {"module": "keras.activations", "class_name": "function", "config": "relu"}
        config = spec.get("config")
        if isinstance(config, str):
            return config
        if spec.get("class_name") in (None, "__lambda__"):  # a lambda's code: {"value": (…)} or {"config": {"code": …}}
            return "<lambda>"
        return str(spec.get("registered_name") or spec.get("class_name"))
    return str(spec)


def get(spec: object) -> Activation:
    """The activation function for a Keras activation name; ValueError if unknown."""
    name = activation_name(spec)
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation '{name}'; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


# ---------------------------------------------------------------------------------------------
# Gradients: `(dy, x, y) -> dx`, each the rule TensorFlow registers for the op Keras calls
# (ReluGrad, EluGrad, SeluGrad, SigmoidGrad, ...), so that the boundary cases (x == 0 for relu, the
# ends of relu6) fall the same way. Those in OUTPUT_ONLY read only `y` and may be given x=None.
# ---------------------------------------------------------------------------------------------
def linear_grad(dy, x, y):
    return dy


def relu_grad(dy, x, y):
    """ReluGrad: `dy · (y > 0)`, passing where the output is positive."""
    return np.multiply(dy, y > 0, dtype=dy.dtype)


def relu6_grad(dy, x, y):
    """Relu6Grad: passes where 0 < output < 6."""
    return np.multiply(dy, (y > 0) & (y < 6), dtype=dy.dtype)


def leaky_relu_grad(dy, x, y, negative_slope: float = 0.2):
    """LeakyReluGrad: `dy` where x > 0, `negative_slope · dy` elsewhere."""
    return dy * np.where(x > 0, np.float32(1), np.asarray(negative_slope, np.float32)).astype(dy.dtype, copy=False)


def sigmoid_grad(dy, x, y):
    return dy * y * (1 - y)


def hard_sigmoid_grad(dy, x, y):
    """relu6(x + 3) / 6: Relu6Grad on the shifted input, divided by 6."""
    shifted = x + np.asarray(3.0, x.dtype)
    return np.multiply(dy / np.asarray(6.0, dy.dtype), (shifted > 0) & (shifted < 6), dtype=dy.dtype)


def tanh_grad(dy, x, y):
    return dy * (1 - y * y)


def softmax_grad(dy, x, y, axis: int = -1):
    """The Jacobian-vector product `(dy - Σ dy·p) · p` over `axis`."""
    return (dy - np.sum(dy * y, axis=axis, keepdims=True)) * y


def log_softmax_grad(dy, x, y, axis: int = -1):
    """`dy - Σ dy · softmax(x)`, with softmax(x) = exp(y)."""
    return dy - np.sum(dy, axis=axis, keepdims=True) * np.exp(y)


def elu_grad(dy, x, y):
    """EluGrad: `dy · (y + 1)` where y < 0, `dy` elsewhere."""
    return dy * (np.minimum(y, 0) + 1)


def selu_grad(dy, x, y):
    """SeluGrad: `dy · (y + scale·alpha)` where y < 0, `dy · scale` elsewhere."""
    alpha, scale = np.float32(1.6732632423543772), np.float32(1.0507009873554805)
    return np.where(y < 0, dy * (y + scale * alpha), dy * scale).astype(dy.dtype, copy=False)


def softplus_grad(dy, x, y):
    return dy * sigmoid(x)


def softsign_grad(dy, x, y):
    return dy / np.square(1 + np.abs(x))


def silu_grad(dy, x, y):
    """tf.nn.silu's own gradient: `σ(x) · (1 + x · (1 − σ(x)))`."""
    s = sigmoid(x)
    return dy * (s * (1 + x * (1 - s)))


def gelu_grad(dy, x, y):
    """d/dx of x·Φ(x) = Φ(x) + x·φ(x)."""
    cdf = 0.5 * (1 + erf(x / np.sqrt(2)))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    return (dy * (cdf + x * pdf)).astype(dy.dtype, copy=False)


def exponential_grad(dy, x, y):
    return dy * y


def celu_grad(dy, x, y):
    """max(x, 0) + expm1(min(x, 0)): Maximum's gradient takes x ≥ 0, Minimum's x ≤ 0 (both at 0)."""
    return dy * ((x >= 0) + np.exp(np.minimum(x, 0)) * (x <= 0)).astype(dy.dtype, copy=False)


def squareplus_grad(dy, x, y, b: float = 4.0):
    """(x + √(x² + b)) / 2 → (1 + x / √(x² + b)) / 2."""
    return dy * ((1 + x / np.sqrt(np.square(x) + np.asarray(b, x.dtype))) / 2)


def soft_shrink_grad(dy, x, y, threshold: float = 0.5):
    return np.multiply(dy, (x > threshold) | (x < -threshold), dtype=dy.dtype)


def sparse_plus_grad(dy, x, y):
    """0 for x ≤ −1, (x + 1)/2 below 1, then 1."""
    return dy * np.where(x <= -1, np.float32(0), np.where(x < 1, (x + 1) / 2, np.float32(1))).astype(dy.dtype,
                                                                                                     copy=False)


def glu_grad(dy, x, y, axis: int = -1):
    """a·σ(b) with x = [a, b] on `axis`: dL/da = dy·σ(b), dL/db = dy·a·σ(b)(1 − σ(b))."""
    a, b = np.split(x, 2, axis=axis)
    s = sigmoid(b)
    return np.concatenate([dy * s, dy * a * s * (1 - s)], axis=axis)


def tanh_shrink_grad(dy, x, y):
    """x − tanh(x) → tanh(x)²."""
    return dy * np.square(np.tanh(x))


def hard_tanh_grad(dy, x, y):
    """clip(x, −1, 1) as Minimum then Maximum: passes where −1 ≤ x ≤ 1."""
    return np.multiply(dy, (x >= -1) & (x <= 1), dtype=dy.dtype)


def hard_shrink_grad(dy, x, y, threshold: float = 0.5):
    return np.multiply(dy, np.abs(x) > threshold, dtype=dy.dtype)


def log_sigmoid_grad(dy, x, y):
    """−softplus(−x) → σ(−x)."""
    return dy * sigmoid(-x)


def sparse_sigmoid_grad(dy, x, y):
    """½ on −1 < x < 1, 0 elsewhere."""
    return np.multiply(dy * np.float32(0.5), (x > -1) & (x < 1), dtype=dy.dtype)


def hard_silu_grad(dy, x, y):
    """x · relu6(x + 3)/6 → relu6(x + 3)/6 + x/6 where 0 < x + 3 < 6."""
    return dy * hard_sigmoid(x) + hard_sigmoid_grad(dy * x, x, None)


def mish_grad(dy, x, y):
    """x · tanh(softplus(x)) → tanh(sp) + x·(1 − tanh(sp)²)·σ(x)."""
    t = np.tanh(softplus(x))
    return dy * (t + x * (1 - t * t) * sigmoid(x))


def sparsemax_grad(dy, x, y, axis: int = -1):
    """Keras's sparsemax, `max(x − τ, 0)` with `τ = (Σ_{j<k} cumsum_j − 1) / k` over the values
    sorted in descending order (`k` the support), differentiated as TensorFlow does: Maximum's
    gradient where `x − τ ≥ 0`, then `−Σ` of it through τ to the i-th largest value with weight
    `(k − i) / k` for i < k."""
    x, dy = np.moveaxis(x, axis, -1), np.moveaxis(dy, axis, -1)
    z = np.flip(np.sort(x, axis=-1), axis=-1)
    cumsum = np.cumsum(z, axis=-1)
    r = np.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    k = (z - (cumsum - 1) / r > 0).sum(axis=-1, keepdims=True).astype(x.dtype)
    tau = (np.where(z - (cumsum - 1) / r > 0, cumsum, 0).sum(axis=-1, keepdims=True) - 1) / k
    passed = dy * (x - tau >= 0)
    ranks = np.argsort(np.argsort(-x, axis=-1, kind="stable"), axis=-1, kind="stable")  # 0 = the largest
    weight = np.where(ranks < k, (k - ranks) / k, 0).astype(dy.dtype)
    return np.moveaxis(passed - passed.sum(axis=-1, keepdims=True) * weight, -1, axis)


GRADIENTS: dict[str, Gradient] = {
    "linear": linear_grad,
    "relu": relu_grad,
    "relu6": relu6_grad,
    "leaky_relu": leaky_relu_grad,
    "sigmoid": sigmoid_grad,
    "hard_sigmoid": hard_sigmoid_grad,
    "tanh": tanh_grad,
    "softmax": softmax_grad,
    "log_softmax": log_softmax_grad,
    "elu": elu_grad,
    "selu": selu_grad,
    "softplus": softplus_grad,
    "softsign": softsign_grad,
    "silu": silu_grad,
    "swish": silu_grad,
    "gelu": gelu_grad,
    "exponential": exponential_grad,
    "celu": celu_grad,
    "squareplus": squareplus_grad,
    "soft_shrink": soft_shrink_grad,
    "sparse_plus": sparse_plus_grad,
    "glu": glu_grad,
    "tanh_shrink": tanh_shrink_grad,
    "hard_tanh": hard_tanh_grad,
    "hard_shrink": hard_shrink_grad,
    "log_sigmoid": log_sigmoid_grad,
    "sparse_sigmoid": sparse_sigmoid_grad,
    "hard_silu": hard_silu_grad,
    "hard_swish": hard_silu_grad,
    "mish": mish_grad,
    "sparsemax": sparsemax_grad,
}
#: Activations whose gradient reads only the output `y` (the pre-activation need not be kept).
OUTPUT_ONLY = frozenset({"linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "log_softmax", "elu", "selu",
                         "exponential"})


def derivative(grad: Gradient, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """An element-wise activation's derivative at `x` (its gradient for dy = 1), shaped like `x`."""
    d = grad(np.float32(1), x, y)
    return d if np.shape(d) == np.shape(x) else np.broadcast_to(d, np.shape(x)).astype(np.float32)


def gradient(spec: object) -> Gradient:
    """The gradient `(dy, x, y) -> dx` of a Keras activation; ValueError if unknown."""
    name = activation_name(spec)
    if name not in GRADIENTS:
        raise ValueError(f"unsupported activation '{name}'; supported: {', '.join(sorted(GRADIENTS))}")
    return GRADIENTS[name]


def needs_input(spec: object) -> bool:
    """Whether the activation's gradient reads its input (the pre-activation), not only its output."""
    return activation_name(spec) not in OUTPUT_ONLY
