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


#: Rows summed in float32 before the partial sums are added in float64 (`channel_sums`).
SUM_ROWS = 256
_ONES = np.ones(SUM_ROWS, np.float32)


def grouped_sum(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Σ over the rows of `a` `(rows, channels)` (of `a·b` when `b` is given): `(channels,)`
    float64, the rows summed in float32 groups of `SUM_ROWS` (one batched product, one pass over
    memory) and the groups added in float64."""
    whole = a.shape[0] // SUM_ROWS * SUM_ROWS
    groups = (-1, SUM_ROWS, a.shape[1])
    if b is None:
        head = np.matmul(_ONES, a[:whole].reshape(groups))
        tail = a[whole:].sum(axis=0, dtype=np.float64)
    else:
        head = np.einsum("gij,gij->gj", a[:whole].reshape(groups), b[:whole].reshape(groups))
        tail = np.einsum("ij,ij->j", a[whole:].astype(np.float64), b[whole:])
    return head.sum(axis=0, dtype=np.float64) + tail


def channel_sums(x: np.ndarray) -> np.ndarray:
    """`x` `(…, channels)` summed over every axis but the last: `(channels,)` float32.

    Rows are summed in groups (`grouped_sum`), so the round-off stays that of a few hundred
    float32 additions however many rows there are. A bias's gradient is such a sum over every
    (sample, pixel): added row after row in float32, tens of thousands of rows lose about 1e-4 of
    the result where the rows cancel.
    """
    return grouped_sum(np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])).astype(np.float32)


def channel_dot_sums(a: np.ndarray, b: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """Σ a·(b − shift) over every axis but the last, for `a` and `b` of one shape `(…, channels)`
    and `shift` `(channels,)` (default 0): `(channels,)` float32, summed in groups as
    `channel_sums` does. The shift is taken a chunk of rows at a time (no full-size difference
    array): Σ a·b − shift·Σ a would cancel away the digits when `b` sits far from 0."""
    a2 = np.ascontiguousarray(a, np.float32).reshape(-1, a.shape[-1])
    b2 = np.ascontiguousarray(b, np.float32).reshape(a2.shape)
    if shift is None:
        return grouped_sum(a2, b2).astype(np.float32)
    step = max(1, 4 * BLOCK // max(a2.shape[1], 1) // SUM_ROWS) * SUM_ROWS  # whole groups, ~256 KiB a chunk
    total = np.zeros(a2.shape[1], np.float64)
    for lo in range(0, a2.shape[0], step):
        total += grouped_sum(a2[lo:lo + step], b2[lo:lo + step] - shift)
    return total.astype(np.float32)
