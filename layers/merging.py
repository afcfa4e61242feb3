"""Merge layers: several inputs into one (Add, Subtract, Multiply, Average, Maximum, Minimum,
Concatenate, Dot), with Keras's masking rules.

Input: a tuple of arrays `(batch, ...)` (a model graph hands a merge its inputs in call order) and
a tuple of masks (None where an input has none). Output: one array `(batch, ...)`.
"""
from __future__ import annotations

import numpy as np

from nntrace.layers.base import Layer, as_float32
from nntrace.layers.errors import InputShapeError


class Merge(Layer):
    """Shared by the merge layers: input checks, rank alignment, the output mask, the step event."""

    supports_masking = True
    mode = "merge"
    n_inputs: int | None = None  # exactly this many inputs (None: at least one)

    def inputs(self, x) -> list[np.ndarray]:
        """The operands as float32 arrays, after checking there are enough of them."""
        if not isinstance(x, (tuple, list)) or not all(isinstance(v, np.ndarray) for v in x):
            raise InputShapeError(self.name, type(self).__name__, "a list of arrays (one per merged input)",
                                  type(x).__name__)
        want = self.n_inputs
        if (want is not None and len(x) != want) or len(x) < 1:
            raise InputShapeError(self.name, type(self).__name__, f"{want or 'at least one'} inputs",
                                  f"{len(x)} inputs")
        if len({v.shape[0] for v in x}) > 1:
            raise InputShapeError(self.name, type(self).__name__, "inputs with one batch size",
                                  f"shapes {', '.join(str(v.shape) for v in x)}")
        return [as_float32(v) for v in x]

    @staticmethod
    def masks_of(x, mask) -> list[np.ndarray | None]:
        if mask is None:
            return [None] * len(x)
        return [None if m is None else np.asarray(m, bool) for m in mask]

    def compute_mask(self, x, mask):
        """Keras's default for element-wise merges: the OR of the inputs' masks, or None if any has none."""
        masks = self.masks_of(x, mask)
        if any(m is None for m in masks):
            return None
        out = masks[0]
        for m in masks[1:]:
            out = out | m
        return out

    def call(self, x, mask, training):
        return self.merge(self.inputs(x), self.masks_of(x, mask))[1]

    def merge(self, xs: list[np.ndarray], masks: list) -> tuple[list[np.ndarray], np.ndarray]:
        """(the operands as the merge combines them, the result)."""
        raise NotImplementedError

    # -- backward -------------------------------------------------------------------------------
    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/d(each input), a tuple shaped like the inputs `x`, for dy shaped like the output; no
        weights. Masks change the gradient only where they change the forward values."""
        xs = self.inputs(x)
        grads = self.merge_backward(as_float32(np.asarray(dy)), xs, self.masks_of(x, mask))
        return tuple(g.astype(np.float32, copy=False) for g in grads), {}

    def merge_backward(self, dy: np.ndarray, xs: list[np.ndarray], masks: list) -> list[np.ndarray]:
        """The gradient of each operand in `xs` (float32, their own shapes)."""
        raise NotImplementedError

    def steps(self, x, mask=None, context=None):
        """One `MergeStep` for sample `x` (a tuple of `(1, ...)` arrays): its operands and result."""
        from nntrace.tracer.events import MergeStep

        masks = self.masks_of(x, mask)
        operands, result = self.merge(self.inputs(x), masks)
        yield MergeStep(self.name, mode=self.mode, operands=tuple(o[0] for o in operands), result=result[0],
                        masks=tuple(None if m is None else m[0] for m in masks), **self.step_fields(x))

    def step_fields(self, x) -> dict:
        return {}


class ElementwiseMerge(Merge):
    """Element-wise merges; inputs of lower rank get axes after the batch axis until ranks agree."""

    def aligned(self, xs: list[np.ndarray], masks: list) -> tuple[list[np.ndarray], list]:
        """Keras expands lower-rank inputs at axis 1; an expanded input's mask is not used."""
        top = max(v.ndim for v in xs)
        out, out_masks = [], []
        for v, m in zip(xs, masks):
            if v.ndim < top:
                v, m = v.reshape(v.shape[:1] + (1,) * (top - v.ndim) + v.shape[1:]), None
            out.append(v)
            out_masks.append(m)
        try:
            np.broadcast_shapes(*(v.shape for v in out))
        except ValueError:
            raise InputShapeError(self.name, type(self).__name__, "inputs of one shape (or broadcastable)",
                                  f"shapes {', '.join(str(v.shape) for v in xs)}") from None
        return out, out_masks

    @staticmethod
    def spread(mask: np.ndarray | None, shape: tuple) -> np.ndarray | None:
        """A `(batch, t)` mask broadcast over the features of a `(batch, t, features)` input."""
        return None if mask is None else np.broadcast_to(mask[..., None], shape)

    def fold(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def merge(self, xs, masks):
        xs, _ = self.aligned(xs, masks)
        out = xs[0]
        for v in xs[1:]:
            out = self.fold(out, v)
        return xs, out

    @staticmethod
    def sum_to(g: np.ndarray, shape: tuple) -> np.ndarray:
        """`g` summed over the axes along which an operand of `shape` was broadcast to `g`'s shape."""
        lead = g.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(lead + k for k, n in enumerate(shape) if n == 1 and g.shape[lead + k] != 1)
        return (g.sum(axis=axes, dtype=np.float32) if axes else g).reshape(shape)

    def unaligned(self, grads: list[np.ndarray], xs: list[np.ndarray]) -> list[np.ndarray]:
        """Gradients of the aligned operands back to each input's own shape (the broadcast axes
        summed, the axes `aligned` inserted removed)."""
        aligned, _ = self.aligned(xs, [None] * len(xs))
        return [self.sum_to(np.broadcast_to(g, np.broadcast_shapes(g.shape, a.shape)), a.shape).reshape(v.shape)
                for g, a, v in zip(grads, aligned, xs)]

    def merge_backward(self, dy, xs, masks):
        return self.unaligned(self.fold_backward(dy, len(xs)), xs)

    def fold_backward(self, dy: np.ndarray, n: int) -> list[np.ndarray]:
        """The gradient of each of the `n` operands of a merge linear in them."""
        raise NotImplementedError


class Add(ElementwiseMerge):
    """`x0 + x1 + …` (summed left to right, as Keras does)."""

    mode = "add"

    def fold(self, a, b):
        return a + b

    def fold_backward(self, dy, n):
        return [dy] * n


class Subtract(ElementwiseMerge):
    """`x0 − x1` (exactly two inputs)."""

    mode = "subtract"
    n_inputs = 2

    def fold(self, a, b):
        return a - b

    def fold_backward(self, dy, n):
        return [dy, -dy]


class Average(ElementwiseMerge):
    """`(x0 + x1 + …) / n`."""

    mode = "average"

    def fold(self, a, b):
        return a + b

    def merge(self, xs, masks):
        xs, total = super().merge(xs, masks)
        return xs, total / np.float32(len(xs))

    def fold_backward(self, dy, n):
        return [dy / np.float32(n)] * n


class Multiply(ElementwiseMerge):
    """`x0 · x1 · …`; a masked position of an input counts as 1, and when every input has a mask,
    positions masked in all of them are 0."""

    mode = "multiply"

    def merge(self, xs, masks):
        xs, masks = self.aligned(xs, masks)
        used = [v if m is None else np.where(self.spread(m, v.shape), v, np.float32(1)) for v, m in zip(xs, masks)]
        out = used[0]
        for v in used[1:]:
            out = out * v
        if all(m is not None for m in masks):
            keep = self.spread(self.compute_mask(xs, masks), out.shape)
            out = np.where(keep, out, np.float32(0))
        return used, out

    def merge_backward(self, dy, xs, masks):
        """Back through the product chain `((u0·u1)·u2)…` as TensorFlow's Mul gradients go (each
        factor gets the gradient times the product before it, or of those after it); a masked
        position of an input (a 1 in the product) and a position masked everywhere get 0."""
        used, out = self.merge(xs, masks)
        aligned, masks = self.aligned(xs, masks)
        partial = [used[0]]
        for v in used[1:-1]:
            partial.append(partial[-1] * v)
        g = dy
        if all(m is not None for m in masks):
            g = np.where(self.spread(self.compute_mask(aligned, masks), out.shape), g, np.float32(0))
        grads: list = [None] * len(used)
        for k in range(len(used) - 1, 0, -1):
            grads[k] = g * partial[k - 1]
            g = g * used[k]
        grads[0] = g
        grads = [gk if m is None else np.where(self.spread(m, v.shape), gk, np.float32(0))
                 for gk, m, v in zip(grads, masks, aligned)]
        return self.unaligned(grads, xs)


class Maximum(ElementwiseMerge):
    """Element-wise maximum; a masked position of an input does not take part."""

    mode = "maximum"
    reduce = staticmethod(np.maximum)

    def merge(self, xs, masks):
        xs, masks = self.aligned(xs, masks)
        out, out_mask = xs[0], self.spread(masks[0], xs[0].shape)
        for v, m in zip(xs[1:], masks[1:]):  # Keras's order of replacements, step by step
            m = self.spread(m, v.shape)
            if m is not None:
                v = np.where(m, v, out)
            if out_mask is not None:
                out = np.where(out_mask, out, v)
            out_mask = out_mask | m if (m is not None and out_mask is not None) else None
            out = self.reduce(out, v)
        # Each operand as it counts: a masked position holds the result, so max(operands) == result.
        used = [v if m is None else np.where(self.spread(m, v.shape), v, out) for v, m in zip(xs, masks)]
        return used, out

    def merge_backward(self, dy, xs, masks):
        """Back through `merge`'s steps in reverse: each `maximum(out, v)` (`minimum`) sends the
        gradient to `out` where `out >= v` (`<=`: ties go to the first operand, as TensorFlow's
        Maximum/Minimum gradients do) and to `v` elsewhere; each `where` sends it to the operand it
        took."""
        aligned, masks = self.aligned(xs, masks)
        prefer = np.greater_equal if self.reduce is np.maximum else np.less_equal
        out, out_mask = aligned[0], self.spread(masks[0], aligned[0].shape)
        tape = []  # per step: (the input's mask, the running mask, where the running result won)
        for v, m in zip(aligned[1:], masks[1:]):
            m = self.spread(m, v.shape)
            if m is not None:
                v = np.where(m, v, out)
            if out_mask is not None:
                out = np.where(out_mask, out, v)
            tape.append((m, out_mask, prefer(out, v)))
            out_mask = out_mask | m if (m is not None and out_mask is not None) else None
            out = self.reduce(out, v)
        zero = np.float32(0)
        g, grads = dy, [None] * len(aligned)
        for k in range(len(tape), 0, -1):
            m, om, won = tape[k - 1]
            g_out, g_v = np.where(won, g, zero), np.where(won, zero, g)
            if om is not None:
                g_v = g_v + np.where(om, zero, g_out)
                g_out = np.where(om, g_out, zero)
            if m is not None:
                g_out = g_out + np.where(m, zero, g_v)
                g_v = np.where(m, g_v, zero)
            grads[k], g = g_v, g_out
        grads[0] = g
        return self.unaligned(grads, xs)


class Minimum(Maximum):
    """Element-wise minimum; a masked position of an input does not take part."""

    mode = "minimum"
    reduce = staticmethod(np.minimum)


class Concatenate(Merge):
    """Inputs joined along `axis` (Keras numbering: 0 is the batch axis; default -1).

    Output mask: each input's mask (all True for an input without one) spread over its features,
    joined along `axis`, then any() over the last axis; None when no input has a mask.
    """

    mode = "concatenate"
    config_keys = ("axis",)
    defaults = {"axis": -1}

    def merge(self, xs, masks):
        ndim = xs[0].ndim
        axis = int(self.config.get("axis", -1))
        if any(v.ndim != ndim for v in xs) or not -ndim <= axis < ndim or axis % ndim == 0:
            raise InputShapeError(self.name, "Concatenate", f"inputs of one rank that can be joined on axis {axis}",
                                  f"shapes {', '.join(str(v.shape) for v in xs)}")
        others = {v.shape[:axis % ndim] + v.shape[axis % ndim + 1:] for v in xs}
        if len(others) > 1:
            raise InputShapeError(self.name, "Concatenate", f"inputs whose shapes agree except on axis {axis}",
                                  f"shapes {', '.join(str(v.shape) for v in xs)}")
        return xs, np.concatenate(xs, axis=axis)

    def compute_mask(self, x, mask):
        masks = self.masks_of(x, mask)
        if all(m is None for m in masks):
            return None
        full = []
        for v, m in zip(x, masks):
            shape = np.shape(v)
            if m is None:
                full.append(np.ones(shape, bool))
            elif m.ndim < len(shape):
                full.append(np.broadcast_to(m[..., None], shape))
            else:
                full.append(m)
        return np.concatenate(full, axis=int(self.config.get("axis", -1))).any(axis=-1)

    def merge_backward(self, dy, xs, masks):
        """dy split back along `axis` into each input's slice."""
        self.merge(xs, masks)  # the same shape checks as the forward pass
        axis = int(self.config.get("axis", -1)) % xs[0].ndim
        return np.split(dy, np.cumsum([v.shape[axis] for v in xs])[:-1], axis=axis)

    def step_fields(self, x):
        return {"axis": int(self.config.get("axis", -1)) % np.ndim(x[0]) - 1}


class Dot(Merge):
    """The dot product of two inputs along `axes` (one axis each; Keras numbering, 0 is the batch
    axis), optionally of L2-normalised inputs (cosine similarity). No output mask.

    `(batch, n)·(batch, n)` → `(batch, 1)`; in general the first input's other axes, then the
    second's.
    """

    mode = "dot"
    n_inputs = 2
    config_keys = ("axes", "normalize")
    defaults = {"normalize": False}
    #: Keras's backend epsilon: the largest inverse norm normalisation allows.
    EPSILON = 1e-7

    def check_config(self, config):
        super().check_config(config)
        axes = config.get("axes")
        if not (isinstance(axes, int) or (isinstance(axes, (list, tuple)) and len(axes) == 2
                                          and all(isinstance(a, int) for a in axes))):
            self.unsupported(f"axes {axes!r} is not supported (one integer, or one per input)")

    def axes_for(self, xs) -> tuple[int, int]:
        axes = self.config["axes"]
        if isinstance(axes, int):
            return (axes % xs[0].ndim, axes % xs[1].ndim) if axes < 0 else (axes, axes)
        return tuple(a % v.ndim if a < 0 else a for a, v in zip(axes, xs))

    def normalized(self, v: np.ndarray, axis: int) -> np.ndarray:
        inv = 1 / np.sqrt(np.sum(np.square(v), axis=axis, keepdims=True))
        with np.errstate(divide="ignore"):
            return v * np.minimum(inv, np.float32(1 / self.EPSILON))

    def merge(self, xs, masks):
        a0, a1 = self.axes_for(xs)
        x, y = xs
        if 0 in (a0, a1) or a0 >= x.ndim or a1 >= y.ndim or x.ndim < 2 or y.ndim < 2 \
                or x.shape[a0] != y.shape[a1]:
            raise InputShapeError(self.name, "Dot", f"two inputs with equal sizes on axes {a0} and {a1}",
                                  f"shapes {x.shape} and {y.shape}")
        if self.config.get("normalize", False):
            with np.errstate(divide="ignore"):
                x, y = self.normalized(x, a0), self.normalized(y, a1)
        n, k = x.shape[0], x.shape[a0]
        x_rest = tuple(np.delete(x.shape, a0)[1:])
        y_rest = tuple(np.delete(y.shape, a1)[1:])
        xm = np.moveaxis(x, a0, -1).reshape(n, -1, k)
        ym = np.moveaxis(y, a1, 1).reshape(n, k, -1)
        out = (xm @ ym).reshape((n,) + x_rest + y_rest)
        if out.ndim == 1:
            out = out[:, None]
        return [x, y], out

    def merge_backward(self, dy, xs, masks):
        """The batched matrix product's gradients `dy·yᵀ` and `xᵀ·dy`, moved back to each input's
        axes, then through the normalisation when `normalize`."""
        (x, y), _ = self.merge(xs, masks)
        a0, a1 = self.axes_for(xs)
        xt, yt = np.moveaxis(x, a0, -1), np.moveaxis(y, a1, 1)
        n, k = x.shape[0], x.shape[a0]
        xm, ym = xt.reshape(n, -1, k), yt.reshape(n, k, -1)
        g = dy.reshape(n, xm.shape[1], ym.shape[2])
        dx = np.moveaxis((g @ ym.transpose(0, 2, 1)).reshape(xt.shape), -1, a0)
        d_y = np.moveaxis((xm.transpose(0, 2, 1) @ g).reshape(yt.shape), 1, a1)
        if self.config.get("normalize", False):
            dx, d_y = self.normalized_backward(dx, xs[0], a0), self.normalized_backward(d_y, xs[1], a1)
        return [dx, d_y]

    def normalized_backward(self, g: np.ndarray, v: np.ndarray, axis: int) -> np.ndarray:
        """dL/dv of `normalized(v)` = `v·min(rsqrt(Σv²), 1/ε)` from its gradient `g`, as TensorFlow
        differentiates it: Minimum passes to the inverse norm where it is ≤ 1/ε, Rsqrt's gradient is
        `−½·inv³`. (An all-zero `v`, NaN in TensorFlow, gets `g/ε` here.)"""
        s = np.sum(np.square(v), axis=axis, keepdims=True)
        cap = np.float32(1 / self.EPSILON)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inv = np.float32(1) / np.sqrt(s)
            d_inv = np.sum(g * v, axis=axis, keepdims=True, dtype=np.float32)
            d_s = np.where(inv <= cap, d_inv * np.float32(-0.5) * inv * inv * inv, np.float32(0))
        return g * np.minimum(inv, cap) + d_s * np.float32(2) * v

    def compute_mask(self, x, mask):
        return None

    def step_fields(self, x):
        a0, a1 = self.axes_for([np.asarray(v) for v in x])
        return {"axes": (a0 - 1, a1 - 1), "normalize": bool(self.config.get("normalize", False))}
