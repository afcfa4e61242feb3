"""Conv2D as im2col + one matrix product, chunked over the batch so the columns stay in cache."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from nntrace.layers import activations
from nntrace.layers.base import Layer, as_float32


def pair(value: int | tuple | list) -> tuple[int, int]:
    """Keras accepts `3` or `(3, 3)`; always return a pair."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


def same_padding(size: int, window: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow's `same` rule: (pad_before, pad_after, out_size); the odd extra cell goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2, out


def output_geometry(h: int, w: int, kernel: tuple[int, int], strides: tuple[int, int], padding: str):
    """((top, bottom), (left, right), out_h, out_w) for `valid` or `same` padding."""
    if padding == "same":
        top, bottom, oh = same_padding(h, kernel[0], strides[0])
        left, right, ow = same_padding(w, kernel[1], strides[1])
        return (top, bottom), (left, right), oh, ow
    oh = (h - kernel[0]) // strides[0] + 1
    ow = (w - kernel[1]) // strides[1] + 1
    return (0, 0), (0, 0), oh, ow


class Conv2D(Layer):
    """2-D cross-correlation (no kernel flip), channels last.

    Input shape: `(batch, height, width, in_channels)`.
    Output shape: `(batch, out_height, out_width, filters)`.
    Weights: kernel `(kh, kw, in_channels, filters)`, bias `(filters,)`.
    """

    config_keys = ("filters", "kernel_size", "strides", "padding", "activation", "use_bias",
                   "dilation_rate", "groups")
    defaults = {"strides": 1, "padding": "valid", "activation": "linear", "use_bias": True}
    #: im2col rows per chunk: ~4k rows × (kh·kw·cin) floats keeps the columns in L2/L3.
    chunk_rows = 4096

    def check_config(self, config):
        super().check_config(config)
        if pair(config.get("dilation_rate", 1)) != (1, 1):
            self.unsupported("dilation_rate other than 1 is not supported")
        if int(config.get("groups", 1)) != 1:
            self.unsupported("groups other than 1 is not supported")
        if config.get("padding", "valid") not in ("valid", "same"):
            self.unsupported(f"padding '{config.get('padding')}' is not supported (valid, same)")

    @property
    def kernel_size(self) -> tuple[int, int]:
        return pair(self.config["kernel_size"])

    @property
    def strides(self) -> tuple[int, int]:
        return pair(self.config.get("strides", 1))

    @property
    def padding(self) -> str:
        return self.config.get("padding", "valid")

    def weight_shapes(self):
        kh, kw = self.kernel_size
        shapes = {"kernel": (kh, kw, None, self.config["filters"])}
        if self.config.get("use_bias", True):
            shapes["bias"] = (self.config["filters"],)
        return shapes

    def built(self):
        k = self.weights["kernel"]
        self.kernel_matrix = np.ascontiguousarray(k.reshape(-1, k.shape[-1]))  # rows ordered (kh, kw, cin)
        self.act = self.activation_fn()

    def pad(self, x: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Zero-pad `(batch, h, w, c)` for this layer; returns (padded, out_h, out_w)."""
        (t, b), (l, r), oh, ow = output_geometry(x.shape[1], x.shape[2], self.kernel_size, self.strides, self.padding)
        if t or b or l or r:
            x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
        return x, oh, ow

    def im2col(self, xp: np.ndarray, oh: int, ow: int, out: np.ndarray | None = None) -> np.ndarray:
        """Padded `(n, H, W, cin)` → columns `(n, oh, ow, kh, kw, cin)`: one row per output pixel.

        Within one input row, the `kw` cells of a patch row are `kw*cin` consecutive floats, so a
        strided view gives every patch row without copying; only `kh` copies remain (one per kernel
        row), each moving contiguous runs of `kw*cin` floats.
        """
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        n, _, _, c = xp.shape
        cols = np.empty((n, oh, ow, kh, kw, c), np.float32) if out is None else out[:n]
        if c < 8:  # a few channels: runs of kw*cin floats are too short to pay off; copy per offset
            for i in range(kh):
                for j in range(kw):
                    cols[:, :, :, i, j, :] = xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            return cols
        xp = np.ascontiguousarray(xp)
        s_n, s_h, _, s_c = xp.strides
        rows = as_strided(xp, shape=(n, xp.shape[1], ow, kw * c), strides=(s_n, s_h, sw * c * s_c, s_c),
                          writeable=False)  # rows[b, y, x] = the kw*cin floats starting at column x*sw
        flat = cols.reshape(n, oh, ow, kh, kw * c)
        for i in range(kh):  # loops over kernel rows only; every pixel moves in one slice
            flat[:, :, :, i, :] = rows[:, i:i + sh * (oh - 1) + 1:sh]
        return cols

    def call(self, x, mask, training):
        kernel = self.weights["kernel"]
        cin, filters = kernel.shape[2], kernel.shape[3]
        self.expect(x, 4, cin, f"(batch, height, width, {cin})")
        (kh, kw), (n, h, w) = self.kernel_size, x.shape[:3]
        if self.padding == "valid" and (h < kh or w < kw):
            self.expect(np.empty((0, 0)), 4, None, f"at least {kh}×{kw} pixels, got {h}×{w}")
        (t, b), (l, r), oh, ow = output_geometry(h, w, self.kernel_size, self.strides, self.padding)
        out = np.empty((n, oh, ow, filters), np.float32)
        step = max(1, min(n, self.chunk_rows // max(oh * ow, 1)))
        # Buffers reused for every chunk of `step` images: the padding frame is written once.
        padded = np.zeros((step, h + t + b, w + l + r, cin), np.float32)
        cols = np.empty((step, oh, ow, kh, kw, cin), np.float32)
        for s in range(0, n, step):
            m = min(step, n - s)
            padded[:m, t:t + h, l:l + w] = x[s:s + m]
            self.im2col(padded[:m], oh, ow, cols)
            z = out[s:s + m].reshape(-1, filters)
            np.matmul(cols[:m].reshape(-1, kh * kw * cin), self.kernel_matrix, out=z)
            if "bias" in self.weights:
                z += self.weights["bias"]
            self.activate_in_place(z)
        return out

    def activate_in_place(self, z: np.ndarray) -> None:
        name = activations.activation_name(self.config.get("activation"))
        if name == "relu":
            np.maximum(z, 0, out=z)
        elif name != "linear":
            z[...] = self.act(z)

    def steps(self, x, mask=None, context=None, rows=None, cols=None, filters=None):
        """One `ConvPatch` per (filter, row, col) of sample `x` `(1, h, w, in_ch)`, filter-major.

        `rows`, `cols`, `filters`: iterables of indices (default: all).
        """
        from nntrace.tracer.events import ConvPatch

        kernel = self.weights["kernel"]
        bias = self.weights.get("bias")
        (t, b), (l, r), oh, ow = output_geometry(x.shape[1], x.shape[2], self.kernel_size, self.strides, self.padding)
        geometry = dict(input_size=tuple(x.shape[1:3]), strides=tuple(self.strides), pad=(t + b, l + r),
                        output_size=(oh, ow))
        xp, _, _ = self.pad(as_float32(x))
        real, _, _ = self.pad(np.ones((1,) + x.shape[1:3] + (1,), np.float32))
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        act_name = activations.activation_name(self.config.get("activation"))
        for f in range(kernel.shape[-1]) if filters is None else filters:
            k = kernel[..., f]
            b = np.float32(0.0) if bias is None else bias[f]
            for r in range(oh) if rows is None else rows:
                for c in range(ow) if cols is None else cols:
                    patch = xp[0, r * sh:r * sh + kh, c * sw:c * sw + kw, :]
                    products = patch * k
                    channel_totals = products.sum(axis=(0, 1), dtype=np.float32)
                    total = products.sum(dtype=np.float32)
                    pre = np.float32(total + b)
                    yield ConvPatch(self.name, row=r, col=c, filter=f, patch=patch, kernel=k, products=products,
                                    channel_totals=channel_totals, total=float(total), activation=act_name, bias=float(b), pre_activation=float(pre),
                                    value=float(self.act(np.array([pre], np.float32))[0]),
                                    padding=real[0, r * sh:r * sh + kh, c * sw:c * sw + kw, 0] == 0,
                                    origin=(r * sh - t, c * sw - l), **geometry)
