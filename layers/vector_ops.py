"""Per-channel elementwise passes over a layer's output, block by block.

NumPy broadcasting a short row (a bias, a per-channel scale), or comparing with a scalar 0, walks
the array in short inner loops; a row tiled to a block, and a block of zeros, run the same float32
operations (bit for bit) in long vector loops, and a pass that does two things touches one block
while it is still in cache.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

#: Floats per block: 64 KiB of float32, well inside a core's L2 cache.
BLOCK = 16384
_ZEROS = np.zeros(BLOCK, np.float32)


def blockable(z: np.ndarray) -> bool:
    """Whether `z` `(…, channels)` is worth the blocked passes: C-contiguous float32, large."""
    return (z.dtype == np.float32 and z.flags.c_contiguous and z.size >= 4 * BLOCK
            and 0 < z.shape[-1] <= BLOCK)


def blocks(size: int, channels: int) -> Iterator[tuple[int, int]]:
    """`(start, stop)` of blocks of whole rows of `channels` over a flat array of `size` floats."""
    span = BLOCK // channels * channels
    for s in range(0, size, span):
        yield s, min(s + span, size)


def tiled(row: np.ndarray, channels: int) -> np.ndarray:
    """`row` `(channels,)` repeated over one block of whole rows."""
    return np.tile(np.asarray(row, np.float32), BLOCK // channels)


def bias_relu_in_place(z: np.ndarray, bias: np.ndarray | None, relu: bool) -> None:
    """`z` `(rows, units)` C-contiguous float32: `z += bias` (when given), then `max(z, 0)` (when
    `relu`), in blocks of whole rows."""
    if bias is None and not relu:
        return
    if not blockable(z):
        if bias is not None:
            z += bias
        if relu:
            np.maximum(z, _ZEROS[:1], out=z)
        return
    units = z.shape[-1]
    flat = z.reshape(-1)
    row = tiled(bias, units) if bias is not None else None
    for s, e in blocks(flat.size, units):
        block = flat[s:e]
        if row is not None:
            np.add(block, row[:e - s], out=block)
        if relu:
            np.maximum(block, _ZEROS[:e - s], out=block)


def scale_shift(x: np.ndarray, scale: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """`x · scale (+ shift)` over the last axis of `x` `(…, channels)`: a new float32 array."""
    if not blockable(x):
        out = x * scale
        if shift is not None:
            out += shift
        return out.astype(np.float32, copy=False)
    channels = x.shape[-1]
    out = np.empty_like(x)
    src, dst = x.reshape(-1), out.reshape(-1)
    scale_row = tiled(scale, channels)
    shift_row = None if shift is None else tiled(shift, channels)
    for s, e in blocks(src.size, channels):
        block = dst[s:e]
        np.multiply(src[s:e], scale_row[:e - s], out=block)
        if shift_row is not None:
            np.add(block, shift_row[:e - s], out=block)
    return out


def channel_sums(x: np.ndarray) -> np.ndarray:
    """`x` `(…, channels)` summed over every axis but the last, `(channels,)` float32 (one
    matrix-vector product: one pass over memory)."""
    rows = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    return np.ones(rows.shape[0], np.float32) @ rows
