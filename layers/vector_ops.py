"""In-place bias add and ReLU over a layer's output, block by block.

NumPy broadcasting a short bias row, or comparing with a scalar 0, walks the array in short inner
loops; adding a bias row tiled to a block, and taking the maximum with a block of zeros, runs the
same float32 operations (bit for bit) in long vector loops, and both passes touch one block while
it is still in cache.
"""
from __future__ import annotations

import numpy as np

#: Floats per block: 64 KiB of float32, well inside a core's L2 cache.
BLOCK = 16384
_ZEROS = np.zeros(BLOCK, np.float32)


def bias_relu_in_place(z: np.ndarray, bias: np.ndarray | None, relu: bool) -> None:
    """`z` `(rows, units)` C-contiguous float32: `z += bias` (when given), then `max(z, 0)` (when
    `relu`), in blocks of whole rows."""
    if bias is None and not relu:
        return
    units = z.shape[-1]
    flat = z.reshape(-1)
    if flat.size < 4 * BLOCK or units > BLOCK or z.dtype != np.float32 or not z.flags.c_contiguous:
        if bias is not None:
            z += bias
        if relu:
            np.maximum(z, _ZEROS[:1], out=z)
        return
    rows = BLOCK // units
    span = rows * units
    tiled = np.tile(bias.astype(np.float32, copy=False), rows) if bias is not None else None
    zeros = _ZEROS[:span]
    for s in range(0, flat.size, span):
        block = flat[s:s + span]
        k = block.size
        if tiled is not None:
            np.add(block, tiled[:k], out=block)
        if relu:
            np.maximum(block, zeros[:k], out=block)
