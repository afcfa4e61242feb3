"""Conv2D as im2col + one matrix product, chunked over the batch so the columns stay in cache."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from nntrace.layers import activations
from nntrace.layers import vector_ops
from nntrace.layers import winograd
from nntrace.layers.parallel import over_batch
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


#: From how many input channels, and input × output channels, a 3×3 stride-1 Conv2D's forward
#: pass uses Winograd's F(2×2, 3×3): below them the transforms cost more than the products saved
#: (measured on the seed CNN's layers with OpenBLAS's native kernel: up to 64→128 direct is as fast
#: or faster, 128→128 is faster by Winograd).
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_PRODUCTS = 16384


#: Below this many input channels, im2col columns and col2im patch gradients are laid out
#: channel-first (`column_matrices`, `col2im`).
FEW_CHANNELS = 8


class Conv2D(Layer):
    """2-D cross-correlation (no kernel flip), channels last.

    Input shape: `(batch, height, width, in_channels)`.
    Output shape: `(batch, out_height, out_width, filters)`.
    Weights: kernel `(kh, kw, in_channels, filters)`, bias `(filters,)`.
    """

    config_keys = ("filters", "kernel_size", "strides", "padding", "activation", "use_bias",
                   "dilation_rate", "groups")
    defaults = {"strides": 1, "padding": "valid", "activation": "linear", "use_bias": True}
    #: Output pixels per chunk on the Winograd path (bench/bench_forward.py: 2,048 beat 1,024 and 4,096).
    chunk_rows = 2048
    #: Bytes of im2col columns per chunk of whole images: one chunk's columns stay in a core's L2
    #: cache while its matrix product reads them (the seed CNN's layers, forward and backward: 0.5–1
    #: MB beat 2 MB by 15–30%).
    column_bytes = 640 * 1024

    def chunk_images(self, pixels: int, floats: int) -> int:
        """Images per chunk for columns of `floats` floats per output pixel, `pixels` per image."""
        return max(1, self.column_bytes // (4 * floats * max(pixels, 1)))

    def check_config(self, config):
        super().check_config(config)
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

    @property
    def general(self) -> bool:
        """Dilated or grouped: the general cross-correlation (`Window`) does the work."""
        return pair(self.config.get("dilation_rate", 1)) != (1, 1) or int(self.config.get("groups", 1)) != 1

    @property
    def window(self) -> Window:
        return Window(self.kernel_size, self.strides, pair(self.config.get("dilation_rate", 1)), self.padding)

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
        self.winograd_kernel = None  # G g Gᵀ, made on the first batch that takes the Winograd path

    @property
    def winograd(self) -> bool:
        """3×3, stride 1, not dilated or grouped, with enough input channels for the 16 matrix
        products to pay: the forward pass uses Winograd's F(2×2, 3×3) (layers/winograd.py)."""
        cin, filters = self.weights["kernel"].shape[2:]
        return (self.kernel_size == (3, 3) and self.strides == (1, 1) and not self.general
                and cin >= WINOGRAD_MIN_CHANNELS and cin * filters >= WINOGRAD_MIN_PRODUCTS)

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
        xp = np.ascontiguousarray(xp)
        s_n, s_h, _, s_c = xp.strides
        rows = as_strided(xp, shape=(n, xp.shape[1], ow, kw * c), strides=(s_n, s_h, sw * c * s_c, s_c),
                          writeable=False)  # rows[b, y, x] = the kw*cin floats starting at column x*sw
        flat = cols.reshape(n, oh, ow, kh, kw * c)
        for i in range(kh):  # loops over kernel rows only; every pixel moves in one slice
            flat[:, :, :, i, :] = rows[:, i:i + sh * (oh - 1) + 1:sh]
        return cols

    def call(self, x, mask, training):
        return self.convolve(x, activate=True)

    def convolve(self, x: np.ndarray, activate: bool = True) -> np.ndarray:
        """`(batch, h, w, in_ch)` → `(batch, out_h, out_w, filters)`: the activation's output, or
        its input (the pre-activation) when not `activate`."""
        if self.general:
            return self.convolve_general(x, activate)
        kernel = self.weights["kernel"]
        cin, filters = kernel.shape[2], kernel.shape[3]
        self.expect(x, 4, cin, f"(batch, height, width, {cin})")
        (kh, kw), (n, h, w) = self.kernel_size, x.shape[:3]
        if self.padding == "valid" and (h < kh or w < kw):
            self.expect(np.empty((0, 0)), 4, None, f"at least {kh}×{kw} pixels, got {h}×{w}")
        (t, b), (l, r), oh, ow = output_geometry(h, w, self.kernel_size, self.strides, self.padding)
        out = np.empty((n, oh, ow, filters), np.float32)
        if self.winograd and n * oh * ow >= self.chunk_rows:
            return self.convolve_winograd(x, out, activate)

        def part(lo: int, hi: int) -> None:  # images lo … hi − 1, in chunks of reused buffers
            for s, m, cols in self.column_matrices(x[lo:hi], oh, ow):
                z = out[lo + s:lo + s + m].reshape(-1, filters)
                np.matmul(cols, self.kernel_matrix, out=z)
                self.finish_in_place(z, activate)

        over_batch(part, n)
        return out

    def convolve_winograd(self, x: np.ndarray, out: np.ndarray, activate: bool) -> np.ndarray:
        """`convolve` by Winograd's F(2×2, 3×3), over chunks of images split between the cores."""
        if self.winograd_kernel is None:
            self.winograd_kernel = winograd.kernel_transform(self.weights["kernel"])
        (n, h, w, cin), oh, ow = x.shape, out.shape[1], out.shape[2]
        (t, b), (l, r) = output_geometry(h, w, self.kernel_size, self.strides, self.padding)[:2]
        step = max(1, self.chunk_rows // max(oh * ow, 1))

        def part(lo: int, hi: int) -> None:
            padded = np.zeros((min(step, hi - lo), h + t + b, w + l + r, cin), np.float32)
            for s in range(lo, hi, step):
                m = min(step, hi - s)
                padded[:m, t:t + h, l:l + w] = x[s:s + m]
                z = winograd.correlate_3x3(padded[:m], self.winograd_kernel, oh, ow)
                self.finish_in_place(z.reshape(-1, z.shape[-1]), activate)
                out[s:s + m] = z

        over_batch(part, n)
        return out

    def convolve_general(self, x: np.ndarray, activate: bool) -> np.ndarray:
        """`convolve` with `dilation_rate` or `groups`."""
        kernel = self.weights["kernel"]
        cin = kernel.shape[2] * int(self.config.get("groups", 1))
        self.expect(x, 4, cin, f"(batch, height, width, {cin})")
        window = self.window
        _, _, oh, ow = window.geometry(x.shape[1], x.shape[2])
        if oh < 1 or ow < 1:
            span = [(k - 1) * d + 1 for k, d in zip(window.kernel_size, window.dilation)]
            self.expect(np.empty((0, 0)), 4, None,
                        f"at least {span[0]}×{span[1]} pixels, got {x.shape[1]}×{x.shape[2]}")
        z = window.correlate(x, kernel)
        if "bias" in self.weights:
            z += self.weights["bias"]
        if activate:
            self.activate_in_place(z.reshape(-1, z.shape[-1]))
        return z

    def column_chunks(self, x: np.ndarray, oh: int, ow: int, pads: tuple | None = None):
        """Yield `(start, count, cols)` over the batch: `cols` `(count, oh, ow, kh, kw, cin)` are the
        im2col columns of images `start … start+count-1`, in a buffer reused for every chunk.
        `pads` `((top, bottom), (left, right))` replaces this layer's own padding."""
        (kh, kw), (n, h, w, cin) = self.kernel_size, x.shape
        (t, b), (l, r) = pads or output_geometry(h, w, self.kernel_size, self.strides, self.padding)[:2]
        step = max(1, min(n, self.chunk_images(oh * ow, kh * kw * cin)))
        # Buffers reused for every chunk of `step` images: the padding frame is written once.
        padded = np.zeros((step, h + t + b, w + l + r, cin), np.float32)
        cols = np.empty((step, oh, ow, kh, kw, cin), np.float32)
        for s in range(0, n, step):
            m = min(step, n - s)
            padded[:m, t:t + h, l:l + w] = x[s:s + m]
            self.im2col(padded[:m], oh, ow, cols)
            yield s, m, cols[:m]

    def column_matrices(self, x: np.ndarray, oh: int, ow: int, pads: tuple | None = None):
        """`column_chunks` as matrices: yield `(start, count, cols)`, `cols` `(count·oh·ow,
        kh·kw·cin)` with columns in the kernel matrix's row order. With few channels (an RGB
        picture) the columns are built channel-first, `(kh·kw·cin, pixels)`, each copy running
        along an image row instead of over a few channels, and `cols` is its transposed view."""
        (kh, kw), (n, h, w, cin) = self.kernel_size, x.shape
        if cin >= FEW_CHANNELS:
            for s, m, cols in self.column_chunks(x, oh, ow, pads):
                yield s, m, cols.reshape(m * oh * ow, kh * kw * cin)
            return
        (sh, sw) = self.strides
        (t, b), (l, r) = pads or output_geometry(h, w, self.kernel_size, self.strides, self.padding)[:2]
        step = max(1, min(n, self.chunk_images(oh * ow, kh * kw * cin)))
        padded = np.zeros((cin, step, h + t + b, w + l + r), np.float32)  # the frame is written once
        cols = np.empty((kh, kw, cin, step, oh, ow), np.float32)
        flat = cols.reshape(kh * kw * cin, step * oh * ow)
        for s in range(0, n, step):
            m = min(step, n - s)
            padded[:, :m, t:t + h, l:l + w] = x[s:s + m].transpose(3, 0, 1, 2)
            for i in range(kh):
                for j in range(kw):
                    cols[i, j, :, :m] = padded[:, :m, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            yield s, m, flat[:, :m * oh * ow].T

    # -- backward -------------------------------------------------------------------------------
    def forward_with_cache(self, x, mask=None):
        """The output, and the pre-activation when the activation's gradient needs it."""
        if not self.weights or not activations.needs_input(self.config.get("activation")):
            return self.forward(x, mask), None
        z = self.convolve(x, activate=False)
        return self.act(z), z

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx `(batch, h, w, in_ch)` and {kernel, bias} for dy `(batch, out_h, out_w, filters)`."""
        x = as_float32(x)
        return self.backward_pre_activation(self.pre_activation_gradient(dy, x, y, cache), x)

    def pre_activation_gradient(self, dy, x: np.ndarray, y=None, cache=None) -> np.ndarray:
        """dL/d(pre-activation) from dL/d(output) `dy`; `cache` is the pre-activation, when kept."""
        z = cache
        if z is None and activations.needs_input(self.config.get("activation")):
            z = self.convolve(x, activate=False)
        if y is None:
            y = self.forward(x) if z is None else self.act(z)
        return self.activation_backward(as_float32(dy), z, y)

    def backward_deferring_input(self, dy, x, mask=None, y=None, cache=None):
        """`backward` with dL/dx left until `input_gradient()` is called (see `Layer`)."""
        if self.general:
            return super().backward_deferring_input(dy, x, mask, y, cache)
        x = as_float32(x)
        dz = self.pre_activation_gradient(dy, x, y, cache)
        _, grads = self.backward_pre_activation(dz, x, input_gradient=False)
        kernel = self.weights["kernel"]  # the kernel of this pass, whatever the weights are when it is read
        return grads, lambda: np.concatenate(over_batch(lambda lo, hi: self.input_gradient(
            dz[lo:hi], (hi - lo,) + x.shape[1:], kernel), x.shape[0]))

    def backward_pre_activation(self, dz: np.ndarray, x: np.ndarray,
                                input_gradient: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """From dL/d(pre-activation) `dz` `(batch, out_h, out_w, filters)`: the kernel gradient as
        a correlation of the input patches (the forward's im2col columns) with `dz`, the bias
        gradient as `dz` summed, and dL/dx `(batch, h, w, in_ch)` as the transposed convolution
        (None when not `input_gradient`). Dilated or grouped: the general cross-correlation's
        gradients (`Window.correlate_backward`)."""
        x, dz = as_float32(x), as_float32(dz)
        kernel = self.weights["kernel"]
        if self.general:
            dx, d_kernel = self.window.correlate_backward(dz, x, kernel)
            grads = {"kernel": d_kernel}
            if "bias" in self.weights:
                grads["bias"] = vector_ops.channel_sums(dz)
            return dx, grads
        (kh, kw), cin, filters = self.kernel_size, kernel.shape[2], kernel.shape[3]
        _, _, oh, ow = output_geometry(x.shape[1], x.shape[2], self.kernel_size, self.strides, self.padding)
        dx = np.empty(x.shape, np.float32) if input_gradient else None

        def part(lo: int, hi: int) -> np.ndarray:  # images lo … hi − 1: their share of dW, and their dx
            d_kernel = np.zeros((kh * kw * cin, filters), np.float32)
            for s, m, cols in self.column_matrices(x[lo:hi], oh, ow):
                d_kernel += cols.T @ dz[lo + s:lo + s + m].reshape(-1, filters)
            if dx is not None:
                dx[lo:hi] = self.input_gradient(dz[lo:hi], (hi - lo,) + x.shape[1:])
            return d_kernel

        d_kernel = sum(over_batch(part, x.shape[0]))
        grads = {"kernel": d_kernel.reshape(kernel.shape)}
        if "bias" in self.weights:
            grads["bias"] = vector_ops.channel_sums(dz)
        return dx, grads

    def input_gradient(self, dz: np.ndarray, shape: tuple, kernel: np.ndarray | None = None) -> np.ndarray:
        """dL/dx `shape` `(batch, h, w, in_ch)` from dL/d(pre-activation) `dz`: the flipped-kernel
        correlation at stride 1, else (and with fewer input than output channels, where
        `dz @ kernelᵀ` is the wider matrix product) col2im; `kernel` (default: the layer's own)
        `(kh, kw, in_ch, filters)`."""
        kernel = self.weights["kernel"] if kernel is None else kernel
        cin, filters = kernel.shape[2:]
        if self.strides == (1, 1) and cin >= filters:
            return self.flipped_correlation(dz, shape, kernel)
        return self.col2im(dz, shape, kernel)

    def flipped_correlation(self, dz: np.ndarray, shape: tuple, kernel: np.ndarray | None = None) -> np.ndarray:
        """dL/dx for stride 1: `dz`, padded by `k − 1 − pad` before and the rest after, correlated
        with the kernel flipped in space and its channel axes swapped — the transposed convolution
        as one im2col matrix product, like the forward pass."""
        (kh, kw), (n, h, w, cin) = self.kernel_size, shape
        (t, _), (l, _), oh, ow = output_geometry(h, w, self.kernel_size, self.strides, self.padding)
        kernel = self.weights["kernel"] if kernel is None else kernel
        flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(-1, cin)  # rows (kh, kw, filters)
        dx = np.empty(shape, np.float32)
        pads = ((kh - 1 - t, h - oh + t), (kw - 1 - l, w - ow + l))
        for s, m, cols in self.column_matrices(dz, h, w, pads):
            np.matmul(cols, flipped, out=dx[s:s + m].reshape(-1, cin))
        return dx

    def col2im(self, dz: np.ndarray, shape: tuple, kernel: np.ndarray | None = None) -> np.ndarray:
        """dL/dx for any stride: each patch's gradient `dz @ kernelᵀ` added back where the patch was
        read from, a chunk of images at a time in reused buffers. With few input channels (an RGB
        picture) the products are laid out channel-first, so that every addition runs along image
        rows instead of over a few channels at a time."""
        (kh, kw), (sh, sw), (n, h, w, cin) = self.kernel_size, self.strides, shape
        (t, b), (l, r), oh, ow = output_geometry(h, w, self.kernel_size, self.strides, self.padding)
        dx = np.empty(shape, np.float32)
        step = max(1, min(n, self.chunk_images(oh * ow, kh * kw * cin)))
        matrix = self.kernel_matrix if kernel is None else kernel.reshape(-1, kernel.shape[-1])  # rows (kh, kw, cin)
        channel_first = cin < FEW_CHANNELS
        if channel_first:
            d_cols = np.empty((kh * kw * cin, step * oh * ow), np.float32)
            d_padded = np.empty((cin, step, h + t + b, w + l + r), np.float32)
        else:
            kernel_t = np.ascontiguousarray(matrix.T)  # (filters, kh·kw·cin)
            d_cols = np.empty((step * oh * ow, kh * kw * cin), np.float32)
            d_padded = np.empty((step, h + t + b, w + l + r, cin), np.float32)
        for s in range(0, n, step):
            m = min(step, n - s)
            rows = dz[s:s + m].reshape(-1, dz.shape[-1])
            if channel_first:  # (kh·kw·cin, pixels) = kernel @ dzᵀ
                cols = np.matmul(matrix, rows.T, out=d_cols[:, :m * oh * ow]).reshape(kh, kw, cin, m, oh, ow)
                padded = d_padded[:, :m]
            else:
                cols = np.matmul(rows, kernel_t, out=d_cols[:m * oh * ow]).reshape(m, oh, ow, kh, kw, cin)
                cols = cols.transpose(3, 4, 0, 1, 2, 5)  # (kh, kw, m, oh, ow, cin), a view
                padded = d_padded[:m]
            padded.fill(0.0)
            for i in range(kh):
                for j in range(kw):
                    at = (slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))
                    if channel_first:
                        padded[(slice(None), slice(None)) + at] += cols[i, j]
                    else:
                        padded[(slice(None),) + at] += cols[i, j]
            if channel_first:
                dx[s:s + m] = padded[:, :, t:t + h, l:l + w].transpose(1, 2, 3, 0)
            else:
                dx[s:s + m] = padded[:, t:t + h, l:l + w]
        return dx

    def activate_in_place(self, z: np.ndarray) -> None:
        name = activations.activation_name(self.config.get("activation"))
        if name == "relu":
            np.maximum(z, 0, out=z)
        elif name != "linear":
            z[...] = self.act(z)

    def finish_in_place(self, z: np.ndarray, activate: bool) -> None:
        """`z` `(pixels, filters)`, the kernel products: add the bias, then the activation when
        `activate`; a ReLU shares the bias's pass over memory (layers/vector_ops.py)."""
        relu = activate and activations.activation_name(self.config.get("activation")) == "relu"
        vector_ops.bias_relu_in_place(z, self.weights.get("bias"), relu)
        if activate and not relu:
            self.activate_in_place(z)

    def steps(self, x, mask=None, context=None, rows=None, cols=None, filters=None):
        """One `ConvPatch` per (filter, row, col) of sample `x` `(1, h, w, in_ch)`, filter-major.

        `rows`, `cols`, `filters`: iterables of indices (default: all).
        """
        from nntrace.tracer.events import ConvPatch

        if self.general:
            yield from self.window.patches(self.name, x, self.weights["kernel"], self.weights.get("bias"), self.act,
                                           activations.activation_name(self.config.get("activation")),
                                           rows, cols, filters)
            return
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

    def backward_step_count(self, x: np.ndarray) -> int:
        """How many steps `backward_steps` gives for sample `x` (without producing them)."""
        return 0 if self.general else int(self.weights["kernel"].size + np.size(x[0]))

    def backward_steps(self, x, mask=None, dy=None, context=None, dz=None, filters=None, taps=None,
                       cells=None):
        """The backward steps of sample `x` `(1, h, w, in_ch)` for ∂L/∂y `dy` `(1, out_h, out_w,
        filters)` (or ∂L/∂z `dz` for a final softmax): one `ConvKernelGradient` per kernel weight,
        filter-major then (i, j, ch), then one `ConvInputGradient` per input cell (row, col,
        channel). `taps` ((i, j, ch) triples) and `cells` ((row, col, ch) triples) keep only
        those. A dilated or grouped convolution has no backward steps."""
        from nntrace.tracer.events import ConvInputGradient, ConvKernelGradient

        if self.general:
            return
        x = as_float32(x)
        kernel = self.weights["kernel"]
        (kh, kw), (sh, sw), (_, h, w, cin) = self.kernel_size, self.strides, x.shape
        (t, _), (l, _), oh, ow = output_geometry(h, w, self.kernel_size, self.strides, self.padding)
        if dz is None:
            z = self.convolve(x, activate=False)
            dz = self.activation_backward(as_float32(dy), z, self.act(z))
        delta = as_float32(dz)[0]                                   # (oh, ow, filters)
        cols = next(self.column_chunks(x, oh, ow))[2][0]            # (oh, ow, kh, kw, cin)
        chosen = None if taps is None else {tuple(tap) for tap in taps}
        for f in range(kernel.shape[-1]) if filters is None else filters:
            for i in range(kh):
                for j in range(kw):
                    for ch in range(cin):
                        if chosen is not None and (i, j, ch) not in chosen:
                            continue
                        inputs = cols[:, :, i, j, ch]
                        products = inputs * delta[:, :, f]
                        running = np.cumsum(products, dtype=np.float32).reshape(products.shape)
                        # inputs and deltas are views of this sample's columns and δ (no copies)
                        yield ConvKernelGradient(self.name, filter=f, tap=(i, j, ch), inputs=inputs,
                                                 deltas=delta[:, :, f], products=products, running=running,
                                                 total=float(running[-1, -1]),
                                                 weight=float(kernel[i, j, ch, f]))
        if filters is not None or taps is not None:
            return
        wanted = None if cells is None else [tuple(c) for c in cells]
        for row, col, ch in wanted or ((r, c, k) for r in range(h) for c in range(w) for k in range(cin)):
            found, kernel_at = [], []
            for i in range(kh):  # output cells whose patch holds input (row, col) at tap (i, j)
                orow, rem_r = divmod(row + t - i, sh)
                if rem_r or not 0 <= orow < oh:
                    continue
                for j in range(kw):
                    ocol, rem_c = divmod(col + l - j, sw)
                    if rem_c or not 0 <= ocol < ow:
                        continue
                    found.append((orow, ocol))
                    kernel_at.append((i, j))
            taps_at = np.array(kernel_at, np.int32).reshape(-1, 2)
            where = np.array(found, np.int32).reshape(-1, 2)
            weights = kernel[taps_at[:, 0], taps_at[:, 1], ch, :]      # (n, filters)
            deltas = delta[where[:, 0], where[:, 1], :]                # (n, filters)
            cell_sums = (weights * deltas).sum(axis=1, dtype=np.float32)
            yield ConvInputGradient(self.name, row=row, col=col, channel=ch, cells=where, taps=taps_at,
                                    weights=weights, deltas=deltas, cell_sums=cell_sums,
                                    total=float(cell_sums.sum(dtype=np.float32)))


# ---------------------------------------------------------------------------------------------
# Dilated and grouped convolution: Conv2D with `dilation_rate` or `groups`, Conv1D,
# DepthwiseConv2D and SeparableConv2D share one cross-correlation.
# ---------------------------------------------------------------------------------------------
def dilated_padding(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """(pad_before, pad_after, out_size) along one axis for `k` taps `dilation` apart; `causal`
    pads only before (Conv1D)."""
    span = (k - 1) * dilation + 1
    if padding == "same":
        return same_padding(size, span, stride)
    if padding == "causal":
        return span - 1, 0, (size - 1) // stride + 1
    return 0, 0, (size - span) // stride + 1


class Window:
    """Where a kernel reads: `kernel_size` taps per axis, `dilation` apart, moved by `strides`,
    over an input padded for `padding` (valid, same, causal)."""

    def __init__(self, kernel_size: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int],
                 padding: str) -> None:
        self.kernel_size, self.strides, self.dilation, self.padding = kernel_size, strides, dilation, padding

    def geometry(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], int, int]:
        """((top, bottom), (left, right), out_h, out_w)."""
        t, b, oh = dilated_padding(h, self.kernel_size[0], self.strides[0], self.dilation[0], self.padding)
        l, r, ow = dilated_padding(w, self.kernel_size[1], self.strides[1], self.dilation[1], self.padding)
        return (t, b), (l, r), oh, ow

    def pad(self, x: np.ndarray) -> np.ndarray:
        (t, b), (l, r), _, _ = self.geometry(x.shape[1], x.shape[2])
        return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0))) if t or b or l or r else x

    def columns(self, xp: np.ndarray, oh: int, ow: int) -> np.ndarray:
        """Padded `(n, H, W, c)` → `(n, oh, ow, kh, kw, c)`: the cells each output reads."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation
        cols = np.empty((xp.shape[0], oh, ow, kh, kw, xp.shape[3]), np.float32)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, :, i, j] = xp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
        return cols

    def correlate(self, x: np.ndarray, kernel: np.ndarray, chunk_rows: int = 4096) -> np.ndarray:
        """`(n, h, w, cin)` ⋆ kernel `(kh, kw, cin/groups, filters)` → `(n, out_h, out_w, filters)`.

        With groups, filter f reads only the input channels of its group f // (filters/groups),
        as TensorFlow's grouped convolution does.
        """
        (kh, kw), (n, h, w, cin) = self.kernel_size, x.shape
        cin_g, filters = kernel.shape[2], kernel.shape[3]
        groups = cin // cin_g
        (_, _), (_, _), oh, ow = self.geometry(h, w)
        xp = self.pad(as_float32(x))
        out = np.empty((n, oh, ow, filters), np.float32)
        step = max(1, min(n, chunk_rows // max(oh * ow, 1)))
        if groups == 1:
            matrix = kernel.reshape(-1, filters)
        else:  # (kh, kw, cin_g, groups, filters per group)
            grouped = kernel.reshape(kh, kw, cin_g, groups, filters // groups)
        for s in range(0, n, step):
            cols = self.columns(xp[s:s + step], oh, ow)
            m = cols.shape[0]
            if groups == 1:
                out[s:s + m] = (cols.reshape(-1, kh * kw * cin) @ matrix).reshape(m, oh, ow, filters)
            else:
                split = cols.reshape(m * oh * ow, kh, kw, groups, cin_g)
                out[s:s + m] = np.einsum("nijgc,ijcgf->ngf", split, grouped, optimize=True).reshape(m, oh, ow, filters)
        return out

    def correlate_backward(self, dz: np.ndarray, x: np.ndarray, kernel: np.ndarray,
                           chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """The gradients of `correlate(x, kernel)` for dz `(n, out_h, out_w, filters)`: dL/dx
        `(n, h, w, cin)` and dL/dkernel `(kh, kw, cin/groups, filters)`.

        The kernel's gradient correlates the input columns with dz (per group); each column's
        gradient `dz·kernelᵀ` is added back to the (dilated, strided) cells it was read from, and
        the padding's share falls away.
        """
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation
        x, dz = as_float32(x), as_float32(dz)
        n, h, w, cin = x.shape
        cin_g, filters = kernel.shape[2], kernel.shape[3]
        groups = cin // cin_g
        (t, b), (l, r), oh, ow = self.geometry(h, w)
        xp = self.pad(x)
        d_kernel = np.zeros(kernel.shape, np.float32)
        dx = np.empty(x.shape, np.float32)
        step = max(1, min(n, chunk_rows // max(oh * ow, 1)))
        if groups == 1:
            matrix = kernel.reshape(-1, filters)
        else:
            grouped = kernel.reshape(kh, kw, cin_g, groups, filters // groups)
        for s in range(0, n, step):
            cols = self.columns(xp[s:s + step], oh, ow)
            m = cols.shape[0]
            g = dz[s:s + m].reshape(m * oh * ow, filters)
            if groups == 1:
                d_kernel += (cols.reshape(-1, kh * kw * cin).T @ g).reshape(kernel.shape)
                d_cols = (g @ matrix.T).reshape(m, oh, ow, kh, kw, cin)
            else:
                split = cols.reshape(m * oh * ow, kh, kw, groups, cin_g)
                g = g.reshape(-1, groups, filters // groups)
                d_kernel += np.einsum("nijgc,ngf->ijcgf", split, g, optimize=True).reshape(kernel.shape)
                d_cols = np.einsum("ngf,ijcgf->nijgc", g, grouped, optimize=True).reshape(m, oh, ow, kh, kw, cin)
            d_padded = np.zeros((m,) + xp.shape[1:], np.float32)
            for i in range(kh):
                for j in range(kw):
                    d_padded[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += \
                        d_cols[:, :, :, i, j]
            dx[s:s + m] = d_padded[:, t:t + h, l:l + w]
        return dx, d_kernel

    def patches(self, layer: str, x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, act, act_name: str,
                rows=None, cols=None, filters=None, stage: str = "") -> Iterator:
        """One `ConvPatch` per (filter, row, col) of sample `x` `(1, h, w, cin)`, filter-major: the
        cells the filter reads (dilated, and only its group's channels), times its kernel."""
        from nntrace.tracer.events import ConvPatch

        x = as_float32(x)
        (t, b), (l, r), oh, ow = self.geometry(x.shape[1], x.shape[2])
        geometry = dict(input_size=tuple(x.shape[1:3]), strides=tuple(self.strides), pad=(t + b, l + r),
                        output_size=(oh, ow), dilation=tuple(self.dilation))
        xp = self.pad(x)[0]
        real = self.pad(np.ones((1,) + x.shape[1:3] + (1,), np.float32))[0, :, :, 0]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation
        cin_g, n_filters = kernel.shape[2], kernel.shape[3]
        per_group = n_filters // (x.shape[3] // cin_g)
        for f in range(n_filters) if filters is None else filters:
            group = f // per_group
            k = kernel[..., f]
            b = np.float32(0.0) if bias is None else bias[f]
            for row in range(oh) if rows is None else rows:
                for col in range(ow) if cols is None else cols:
                    cells = np.ix_(row * sh + np.arange(kh) * dh, col * sw + np.arange(kw) * dw)
                    patch = xp[cells][:, :, group * cin_g:(group + 1) * cin_g]
                    products = patch * k
                    total = products.sum(dtype=np.float32)
                    pre = np.float32(total + b)
                    yield ConvPatch(layer, row=row, col=col, filter=f, patch=patch, kernel=k, products=products,
                                    channel_totals=products.sum(axis=(0, 1), dtype=np.float32), total=float(total),
                                    activation=act_name, bias=float(b), pre_activation=float(pre),
                                    value=float(act(np.array([pre], np.float32))[0]), padding=real[cells] == 0,
                                    origin=(row * sh - t, col * sw - l), group=group, stage=stage, **geometry)


class ActivatedBackward:
    """`forward_with_cache` and `backward` for a layer computing `act(pre_activation(x))`: the
    activation's gradient (reading the cached pre-activation when it needs it), then the layer's
    `backward_pre_activation`."""

    def forward_with_cache(self, x, mask=None):
        """The output, and the pre-activation when the activation's gradient needs it."""
        if not self.weights or not activations.needs_input(self.config.get("activation")):
            return self.forward(x, mask), None
        z = self.pre_activation(x)
        return self.act(z), z

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """dL/dx and the weight gradients for dy shaped like the output."""
        x = as_float32(x)
        z = cache
        if z is None and activations.needs_input(self.config.get("activation")):
            z = self.pre_activation(x)
        if y is None:
            y = self.forward(x) if z is None else self.act(z)
        return self.backward_pre_activation(self.activation_backward(as_float32(dy), z, y), x)


class Conv1D(ActivatedBackward, Layer):
    """1-D cross-correlation over time, channels last; `padding` valid, same or causal (left only).

    Input shape: `(batch, steps, in_channels)`. Output shape: `(batch, out_steps, filters)`.
    Weights: kernel `(k, in_channels / groups, filters)`, bias `(filters,)`.
    Its steps are ConvPatch events of one row (`row` 0, `col` the output step).
    """

    config_keys = ("filters", "kernel_size", "strides", "padding", "activation", "use_bias", "dilation_rate",
                   "groups")
    defaults = {"strides": 1, "padding": "valid", "activation": "linear", "use_bias": True, "dilation_rate": 1,
                "groups": 1}

    def check_config(self, config):
        super().check_config(config)
        if config.get("padding", "valid") not in ("valid", "same", "causal"):
            self.unsupported(f"padding '{config.get('padding')}' is not supported (valid, same, causal)")

    @staticmethod
    def single(value) -> int:
        return int(value[0] if isinstance(value, (list, tuple)) else value)

    @property
    def window(self) -> Window:
        c = self.config
        return Window((1, self.single(c["kernel_size"])), (1, self.single(c.get("strides", 1))),
                      (1, self.single(c.get("dilation_rate", 1))), c.get("padding", "valid"))

    def weight_shapes(self):
        shapes = {"kernel": (self.single(self.config["kernel_size"]), None, self.config["filters"])}
        if self.config.get("use_bias", True):
            shapes["bias"] = (self.config["filters"],)
        return shapes

    def built(self):
        self.act = self.activation_fn()

    @property
    def kernel2d(self) -> np.ndarray:
        return self.weights["kernel"][None]

    def call(self, x, mask, training):
        return self.act(self.pre_activation(x))

    def pre_activation(self, x: np.ndarray) -> np.ndarray:
        """`(batch, steps, in_ch)` → the output before the activation `(batch, out_steps, filters)`."""
        cin = self.weights["kernel"].shape[1] * int(self.config.get("groups", 1))
        self.expect(x, 3, cin, f"(batch, steps, {cin})")
        window = self.window
        if window.geometry(1, x.shape[1])[3] < 1:
            self.expect(np.empty((0, 0)), 3, None, f"at least {(window.kernel_size[1] - 1) * window.dilation[1] + 1} "
                                                   f"steps, got {x.shape[1]}")
        z = window.correlate(as_float32(x)[:, None], self.kernel2d)[:, 0]
        if "bias" in self.weights:
            z += self.weights["bias"]
        return z

    def backward_pre_activation(self, dz: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """From dL/d(pre-activation) `dz` `(batch, out_steps, filters)`: dL/dx `(batch, steps,
        in_ch)`, {kernel `(k, in_ch/groups, filters)`, bias} — the 2-D gradients of one row."""
        dx, d_kernel = self.window.correlate_backward(as_float32(dz)[:, None], as_float32(x)[:, None], self.kernel2d)
        grads = {"kernel": d_kernel[0]}
        if "bias" in self.weights:
            grads["bias"] = vector_ops.channel_sums(dz)
        return dx[:, 0], grads

    def steps(self, x, mask=None, context=None, rows=None, cols=None, filters=None):
        """One `ConvPatch` per (filter, output step) of sample `x` `(1, steps, in_ch)`; patches are
        `(1, k, in_ch)`."""
        return self.window.patches(self.name, as_float32(x)[:, None], self.kernel2d, self.weights.get("bias"),
                                   self.act, activations.activation_name(self.config.get("activation")),
                                   rows, cols, filters)


class DepthwiseConv2D(ActivatedBackward, Layer):
    """Each input channel convolved with its own `depth_multiplier` filters: output channel
    `c·depth_multiplier + m` reads only input channel c (a grouped convolution, one group per channel).

    Input shape: `(batch, h, w, channels)`. Output: `(batch, out_h, out_w, channels·depth_multiplier)`.
    Weights: kernel `(kh, kw, channels, depth_multiplier)`, bias `(channels·depth_multiplier,)`.
    """

    config_keys = ("kernel_size", "strides", "padding", "depth_multiplier", "activation", "use_bias",
                   "dilation_rate")
    defaults = {"strides": 1, "padding": "valid", "depth_multiplier": 1, "activation": "linear", "use_bias": True,
                "dilation_rate": 1}

    def check_config(self, config):
        super().check_config(config)
        if config.get("padding", "valid") not in ("valid", "same"):
            self.unsupported(f"padding '{config.get('padding')}' is not supported (valid, same)")

    @property
    def window(self) -> Window:
        c = self.config
        return Window(pair(c["kernel_size"]), pair(c.get("strides", 1)), pair(c.get("dilation_rate", 1)),
                      c.get("padding", "valid"))

    def weight_shapes(self):
        kh, kw = pair(self.config["kernel_size"])
        shapes = {"kernel": (kh, kw, None, int(self.config.get("depth_multiplier", 1)))}
        if self.config.get("use_bias", True):
            shapes["bias"] = (None,)
        return shapes

    def built(self):
        self.act = self.activation_fn()

    @property
    def grouped_kernel(self) -> np.ndarray:
        """`(kh, kw, 1, channels·depth_multiplier)`: filter c·dm + m is kernel[:, :, c, m]."""
        k = self.weights["kernel"]
        return k.reshape(k.shape[0], k.shape[1], 1, -1)

    def call(self, x, mask, training):
        return self.act(self.pre_activation(x))

    def pre_activation(self, x: np.ndarray) -> np.ndarray:
        """`(batch, h, w, channels)` → the output before the activation `(batch, out_h, out_w,
        channels·depth_multiplier)`."""
        cin = self.weights["kernel"].shape[2]
        self.expect(x, 4, cin, f"(batch, height, width, {cin})")
        z = self.window.correlate(x, self.grouped_kernel)
        if "bias" in self.weights:
            z += self.weights["bias"]
        return z

    def backward_pre_activation(self, dz: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """From dL/d(pre-activation) `dz` `(batch, out_h, out_w, channels·depth_multiplier)`:
        dL/dx `(batch, h, w, channels)`, {kernel `(kh, kw, channels, depth_multiplier)`, bias}."""
        dz = as_float32(dz)
        dx, d_grouped = self.window.correlate_backward(dz, x, self.grouped_kernel)
        grads = {"kernel": d_grouped.reshape(self.weights["kernel"].shape)}
        if "bias" in self.weights:
            grads["bias"] = vector_ops.channel_sums(dz)
        return dx, grads

    def steps(self, x, mask=None, context=None, rows=None, cols=None, filters=None):
        """One `ConvPatch` per (output channel, row, col): patches `(kh, kw, 1)` of one input channel
        (`group`)."""
        return self.window.patches(self.name, x, self.grouped_kernel, self.weights.get("bias"), self.act,
                                   activations.activation_name(self.config.get("activation")), rows, cols, filters)


class SeparableConv2D(DepthwiseConv2D):
    """A depthwise convolution, then a 1×1 convolution across its channels (the pointwise step),
    then the bias and the activation.

    Weights: depthwise_kernel `(kh, kw, channels, depth_multiplier)`, pointwise_kernel
    `(1, 1, channels·depth_multiplier, filters)`, bias `(filters,)`.
    """

    config_keys = DepthwiseConv2D.config_keys + ("filters",)

    def weight_shapes(self):
        kh, kw = pair(self.config["kernel_size"])
        dm, filters = int(self.config.get("depth_multiplier", 1)), self.config["filters"]
        shapes = {"depthwise_kernel": (kh, kw, None, dm), "pointwise_kernel": (1, 1, None, filters)}
        if self.config.get("use_bias", True):
            shapes["bias"] = (filters,)
        return shapes

    @property
    def grouped_kernel(self) -> np.ndarray:
        k = self.weights["depthwise_kernel"]
        return k.reshape(k.shape[0], k.shape[1], 1, -1)

    def depthwise(self, x: np.ndarray) -> np.ndarray:
        cin = self.weights["depthwise_kernel"].shape[2]
        self.expect(x, 4, cin, f"(batch, height, width, {cin})")
        return self.window.correlate(x, self.grouped_kernel)

    def call(self, x, mask, training):
        return self.act(self.pre_activation(x))

    def pre_activation(self, x: np.ndarray) -> np.ndarray:
        """`(batch, h, w, channels)` → the pointwise step's output plus the bias `(batch, out_h,
        out_w, filters)`, before the activation."""
        d = self.depthwise(x)
        pw = self.weights["pointwise_kernel"][0, 0]
        z = (d.reshape(-1, pw.shape[0]) @ pw).reshape(d.shape[:3] + (pw.shape[1],))
        if "bias" in self.weights:
            z += self.weights["bias"]
        return z

    def backward_pre_activation(self, dz: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """From dL/d(pre-activation) `dz` `(batch, out_h, out_w, filters)`: the pointwise kernel's
        gradient `dᵀ·dz` (d the depthwise output), the depthwise output's `dz·pointwiseᵀ`, then
        the depthwise step's gradients: dL/dx `(batch, h, w, channels)`, {depthwise_kernel,
        pointwise_kernel, bias}."""
        dz = as_float32(dz)
        d = self.depthwise(as_float32(x))
        pw = self.weights["pointwise_kernel"][0, 0]                 # (channels·dm, filters)
        dz2 = dz.reshape(-1, pw.shape[1])
        d_pointwise = (d.reshape(-1, pw.shape[0]).T @ dz2)[None, None]
        dx, d_grouped = self.window.correlate_backward((dz2 @ pw.T).reshape(d.shape), x, self.grouped_kernel)
        grads = {"depthwise_kernel": d_grouped.reshape(self.weights["depthwise_kernel"].shape),
                 "pointwise_kernel": d_pointwise}
        if "bias" in self.weights:
            grads["bias"] = vector_ops.channel_sums(dz2)
        return dx, grads

    def steps(self, x, mask=None, context=None, rows=None, cols=None, filters=None, stage: str | None = None):
        """The depthwise step's ConvPatch events (`stage` "depthwise": one per intermediate channel,
        no bias, no activation), then the pointwise step's (`stage` "pointwise": a 1×1 patch of
        every intermediate channel, then the bias and the activation). `filters` picks channels of
        the stage's own output; `stage` keeps one stage."""
        if stage in (None, "depthwise"):
            yield from self.window.patches(self.name, x, self.grouped_kernel, None, activations.linear, "linear",
                                           rows, cols, filters if stage else None, stage="depthwise")
        if stage in (None, "pointwise"):
            d = self.depthwise(as_float32(x))
            yield from Window((1, 1), (1, 1), (1, 1), "valid").patches(
                self.name, d, self.weights["pointwise_kernel"], self.weights.get("bias"), self.act,
                activations.activation_name(self.config.get("activation")), rows, cols, filters, stage="pointwise")
