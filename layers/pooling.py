"""Max/average pooling over windows (vectorised with sliding windows) and global pooling."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nntrace.layers.base import Layer, as_float32
from nntrace.layers.conv import output_geometry, pair


class Pooling2D(Layer):
    """Shared window logic. Input `(batch, h, w, c)` → output `(batch, out_h, out_w, c)`."""

    config_keys = ("pool_size", "strides", "padding")
    defaults = {"pool_size": 2, "strides": None, "padding": "valid"}
    reduce = "max"

    def check_config(self, config):
        super().check_config(config)
        if config.get("padding", "valid") not in ("valid", "same"):
            self.unsupported(f"padding '{config.get('padding')}' is not supported (valid, same)")

    @property
    def pool_size(self) -> tuple[int, int]:
        return pair(self.config.get("pool_size", 2))

    @property
    def strides(self) -> tuple[int, int]:
        s = self.config.get("strides")
        return self.pool_size if s is None else pair(s)

    def windows(self, x: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Windows `(batch, out_h, out_w, c, ph, pw)` (a view) and, for `same`, the real-cell mask."""
        (t, b), (l, r), oh, ow = output_geometry(x.shape[1], x.shape[2], self.pool_size, self.strides,
                                                 self.config.get("padding", "valid"))
        real = None
        if t or b or l or r:
            real = np.pad(np.ones(x.shape[1:3], np.float32), ((t, b), (l, r)))
            x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        v = sliding_window_view(x, (ph, pw), axis=(1, 2))[:, ::sh, ::sw][:, :oh, :ow]
        if real is not None:
            real = sliding_window_view(real, (ph, pw))[::sh, ::sw][:oh, :ow]  # (oh, ow, ph, pw)
        return v, real

    def call(self, x, mask, training):
        self.expect(x, 4, None, "(batch, height, width, channels)")
        x = as_float32(x)
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        if (ph, pw) == (sh, sw) and self.config.get("padding", "valid") == "valid":
            # Non-overlapping windows: combine the ph*pw strided views element-wise (a loop over
            # window offsets, never over pixels).
            oh, ow = x.shape[1] // ph, x.shape[2] // pw
            views = [x[:, i:oh * ph:ph, j:ow * pw:pw] for i in range(ph) for j in range(pw)]
            acc = views[0].copy()
            for v in views[1:]:
                np.maximum(acc, v, out=acc) if self.reduce == "max" else np.add(acc, v, out=acc)
            return acc if self.reduce == "max" else acc / np.float32(ph * pw)
        if self.reduce == "max":
            v, _ = self.windows(x, -np.inf)
            return v.max(axis=(-2, -1))
        v, real = self.windows(x, 0.0)
        total = v.sum(axis=(-2, -1))
        if real is None:
            return total / np.float32(self.pool_size[0] * self.pool_size[1])
        return total / real.sum(axis=(-2, -1))[None, :, :, None]

    def steps(self, x, mask=None, context=None, rows=None, cols=None, channels=None):
        """One `PoolWindow` per (channel, row, col) of sample `x` `(1, h, w, c)`; padding shows as nan."""
        from nntrace.tracer.events import PoolWindow

        x = as_float32(x)
        (t, b), (l, r), oh, ow = output_geometry(x.shape[1], x.shape[2], self.pool_size, self.strides,
                                                 self.config.get("padding", "valid"))
        geometry = dict(input_size=tuple(x.shape[1:3]), strides=tuple(self.strides), pad=(t + b, l + r),
                        output_size=(oh, ow))
        v, real = self.windows(x, np.nan)
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        for ch in range(x.shape[3]) if channels is None else channels:
            for r in range(oh) if rows is None else rows:
                for c in range(ow) if cols is None else cols:
                    window = v[0, r, c, ch]
                    is_real = np.ones((ph, pw), bool) if real is None else real[r, c].astype(bool)
                    if self.reduce == "max":
                        flat = int(np.nanargmax(window))
                        winner, value = (flat // pw, flat % pw), float(window.flat[flat])
                    else:
                        winner, value = None, float(np.nansum(window) / is_real.sum())
                    yield PoolWindow(self.name, row=r, col=c, channel=ch, mode=self.reduce if self.reduce == "max"
                                     else "average", window=window.copy(), real=is_real, winner=winner,
                                     value=value, origin=(r * sh - t, c * sw - l), **geometry)

    def backward_steps(self, x, mask=None, dy=None, context=None, rows=None, cols=None, channels=None):
        """One `PoolRouting` per (channel, row, col) of sample `x` `(1, h, w, c)` for ∂L/∂y `dy`
        `(1, out_h, out_w, c)`: where the window's gradient goes (the windows of `steps`)."""
        from nntrace.tracer.events import PoolRouting

        dy = as_float32(dy)
        for e in self.steps(x, mask, context, rows=rows, cols=cols, channels=channels):
            g = dy[0, e.row, e.col, e.channel]
            routed = np.zeros(e.window.shape, np.float32)
            if e.winner is not None:
                routed[tuple(e.winner)] = g
            else:
                routed[e.real] = g / np.float32(e.real.sum())
            yield PoolRouting(self.name, row=e.row, col=e.col, channel=e.channel, mode=e.mode, window=e.window,
                              real=e.real, winner=e.winner, output_gradient=float(g), routed=routed, origin=e.origin)


    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx `(batch, h, w, c)` for dy `(batch, out_h, out_w, c)`; no weights.

        Max: each window's gradient goes to one cell holding its maximum, the first in row-major
        window order on ties (as TensorFlow's MaxPoolGrad). Average: each window's gradient is
        shared equally by its real (unpadded) cells.
        """
        x, dy = as_float32(x), as_float32(dy)
        (n, h, w, c), (ph, pw), (sh, sw) = x.shape, self.pool_size, self.strides
        (t, b), (l, r), oh, ow = output_geometry(h, w, self.pool_size, self.strides,
                                                 self.config.get("padding", "valid"))
        if self.reduce == "max" and (ph, pw) == (sh, sw) and (oh * ph, ow * pw) == (h, w):
            return self.tiled_max_backward(x, dy, as_float32(self.output_of(x, mask, y))), {}
        d_padded = np.zeros((n, h + t + b, w + l + r, c), np.float32)
        overlapping = sh < ph or sw < pw
        if self.reduce == "max":
            y = as_float32(self.output_of(x, mask, y))
            padded = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf) if t + b + l + r else x
            taken = np.zeros(dy.shape, bool)  # windows whose winner is already found
            wins = np.empty(dy.shape, bool)
            for i in range(ph):  # window offsets in row-major order; never a loop over pixels
                for j in range(pw):
                    rows, cols = slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw)
                    np.equal(padded[:, rows, cols], y, out=wins)
                    np.greater(wins, taken, out=wins)  # holds the max, and no earlier cell did
                    taken |= wins
                    if overlapping:
                        d_padded[:, rows, cols] += np.multiply(dy, wins, dtype=np.float32)
                    else:  # each input cell is in one window: write its share in place
                        np.multiply(dy, wins, out=d_padded[:, rows, cols])
        else:
            real = np.pad(np.ones((h, w), np.float32), ((t, b), (l, r)))
            counts = sliding_window_view(real, (ph, pw))[::sh, ::sw][:oh, :ow].sum(axis=(-2, -1))
            share = dy / counts[None, :, :, None].astype(np.float32)
            for i in range(ph):
                for j in range(pw):
                    d_padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += share
        return d_padded[:, t:t + h, l:l + w], {}  # the padding's share falls away

    def tiled_max_backward(self, x: np.ndarray, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Max pooling's dL/dx when the windows tile the input exactly (no overlap, no padding, no
        cells left over): every cell is compared with its window's maximum at once, later ties are
        cleared in row-major window order, and dy is written through the winners in one pass."""
        (n, h, w, c), (ph, pw) = x.shape, self.pool_size
        oh, ow = h // ph, w // pw
        wins = np.ascontiguousarray(x).reshape(n, oh, ph, ow, pw, c) == y[:, :, None, :, None, :]
        taken = wins[:, :, 0, :, 0].copy()  # windows whose winner is already found
        offsets = [(i, j) for i in range(ph) for j in range(pw)][1:]
        for k, (i, j) in enumerate(offsets):
            later = wins[:, :, i, :, j]
            np.greater(later, taken, out=later)  # holds the max, and no earlier cell did
            if k < len(offsets) - 1:
                taken |= later
        return np.multiply(wins, dy[:, :, None, :, None, :], dtype=np.float32).reshape(n, h, w, c)


class MaxPooling2D(Pooling2D):
    """Maximum of each window."""

    reduce = "max"


class AveragePooling2D(Pooling2D):
    """Mean of each window; with `same` padding the mean is over the real (unpadded) cells only."""

    reduce = "mean"


class GlobalPooling2D(Layer):
    """Reduce over height and width: `(batch, h, w, c)` → `(batch, c)` (or `(batch, 1, 1, c)`)."""

    config_keys = ("keepdims",)
    reduce = "max"

    def call(self, x, mask, training):
        self.expect(x, 4, None, "(batch, height, width, channels)")
        keep = bool(self.config.get("keepdims", False))
        x = as_float32(x)
        return x.max(axis=(1, 2), keepdims=keep) if self.reduce == "max" else x.mean(axis=(1, 2), keepdims=keep)


    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx `(batch, h, w, c)` for dy `(batch, c)` (or `(batch, 1, 1, c)`): the mean shares it
        over every cell; the max over every cell holding the maximum, split equally on ties (the
        gradient of TensorFlow's reduce_max)."""
        x = as_float32(x)
        dy = as_float32(dy).reshape(x.shape[0], 1, 1, x.shape[3])
        if self.reduce == "mean":
            return np.broadcast_to(dy / np.float32(x.shape[1] * x.shape[2]), x.shape).copy(), {}
        winners = x == x.max(axis=(1, 2), keepdims=True)
        return winners * (dy / winners.sum(axis=(1, 2), keepdims=True, dtype=np.float32)), {}


class GlobalMaxPooling2D(GlobalPooling2D):
    reduce = "max"


class GlobalAveragePooling2D(GlobalPooling2D):
    reduce = "mean"



class Pooling1D(Pooling2D):
    """Windows over time: `(batch, steps, c)` → `(batch, out_steps, c)`, as a one-row 2-D pooling.

    Its steps are PoolWindow events of one row (`row` 0, `col` the output step, windows `(1, p)`).
    """

    @staticmethod
    def single(value) -> int:
        return int(value[0] if isinstance(value, (list, tuple)) else value)

    @property
    def pool_size(self) -> tuple[int, int]:
        return 1, self.single(self.config.get("pool_size", 2))

    @property
    def strides(self) -> tuple[int, int]:
        s = self.config.get("strides")
        return self.pool_size if s is None else (1, self.single(s))

    def call(self, x, mask, training):
        self.expect(x, 3, None, "(batch, steps, channels)")
        return super().call(x[:, None], None, training)[:, 0]

    def steps(self, x, mask=None, context=None, rows=None, cols=None, channels=None):
        return super().steps(np.asarray(x)[:, None], None, context, rows, cols, channels)

    def backward(self, dy, x, mask=None, y=None, cache=None):
        y = self.output_of(x, None, y) if self.reduce == "max" else y  # the 1-D output, before reshaping
        dx, grads = super().backward(np.asarray(dy)[:, None], np.asarray(x)[:, None], None,
                                     None if y is None else np.asarray(y)[:, None], cache)
        return dx[:, 0], grads


class MaxPooling1D(Pooling1D):
    """Maximum of each window over time."""

    reduce = "max"


class AveragePooling1D(Pooling1D):
    """Mean of each window over time; with `same` padding over the real (unpadded) steps only."""

    reduce = "mean"


class GlobalPooling1D(Layer):
    """Reduce over time: `(batch, steps, c)` → `(batch, c)` (or `(batch, 1, c)` with `keepdims`)."""

    config_keys = ("keepdims",)
    reduce = "max"

    def call(self, x, mask, training):
        self.expect(x, 3, None, "(batch, steps, channels)")
        keep = bool(self.config.get("keepdims", False))
        x = as_float32(x)
        return x.max(axis=1, keepdims=keep) if self.reduce == "max" else x.mean(axis=1, keepdims=keep)

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx `(batch, steps, c)` for dy `(batch, c)` (or `(batch, 1, c)`): the mean shares it
        over every step; the max over every step holding the maximum, split equally on ties (the
        gradient of TensorFlow's reduce_max). A mask changes nothing here (Keras ignores it)."""
        x = as_float32(x)
        dy = as_float32(dy).reshape(x.shape[0], 1, x.shape[2])
        if self.reduce == "mean":
            return np.broadcast_to(dy / np.float32(x.shape[1]), x.shape).copy(), {}
        winners = x == x.max(axis=1, keepdims=True)
        return winners * (dy / winners.sum(axis=1, keepdims=True, dtype=np.float32)), {}


class GlobalMaxPooling1D(GlobalPooling1D):
    """Maximum over time; like Keras it ignores (and drops) a mask."""

    reduce = "max"


class GlobalAveragePooling1D(GlobalPooling1D):
    """Mean over time; with a mask, the mean over the unmasked steps only (Keras's rule). No mask
    leaves it."""

    reduce = "mean"
    supports_masking = True

    def call(self, x, mask, training):
        if mask is None:
            return super().call(x, mask, training)
        self.expect(x, 3, None, "(batch, steps, channels)")
        keep = np.asarray(mask, bool)[:, :, None]
        total = np.where(keep, as_float32(x), np.float32(0)).sum(axis=1, keepdims=True)
        out = total / keep.sum(axis=1, keepdims=True).astype(np.float32)
        return out if self.config.get("keepdims", False) else out[:, 0]

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """With a mask: dL/dx `(batch, steps, c)` is dy shared equally by the unmasked steps, 0 at
        the masked ones (a sample with every step masked gets 0, as TensorFlow's `where` gives)."""
        if mask is None:
            return super().backward(dy, x, mask, y, cache)
        x = as_float32(x)
        keep = np.asarray(mask, bool)[:, :, None]
        count = keep.sum(axis=1, keepdims=True).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = as_float32(dy).reshape(x.shape[0], 1, x.shape[2]) / count
        return np.where(keep, share, np.float32(0)), {}

    def compute_mask(self, x, mask):
        return None
