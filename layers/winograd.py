"""Winograd's minimal filtering F(2×2, 3×3) for 3×3, stride-1 convolutions (Lavin & Gray, 2016).

Each 2×2 block of outputs comes from a 4×4 tile of the (padded) input: `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d
B)] A`. The ⊙ over every tile and channel becomes 16 matrix products `(tiles, in) @ (in, out)`, so a
layer does 16 products of 4 outputs' work where the direct method does 36: 2.25× fewer
multiply-adds, the rest being additions. The result equals the direct correlation up to float32
round-off (a few ulps of the inputs' scale).

    U = kernel_transform(kernel)                       # once per kernel: (16, in, out)
    out = correlate_3x3(padded, U, out_h, out_w)        # padded input (n, out_h + 2, out_w + 2, in)
"""
from __future__ import annotations

import numpy as np

#: G (4×3): the kernel transform.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float64)


def kernel_transform(kernel: np.ndarray) -> np.ndarray:
    """`(3, 3, in, out)` → `G g Gᵀ` for every (in, out) pair, as `(16, in, out)` float32 (computed in
    float64 and rounded once)."""
    u = np.einsum("ai,ijco,bj->abco", G, kernel.astype(np.float64), G)
    return np.ascontiguousarray(u.reshape(16, kernel.shape[2], kernel.shape[3]).astype(np.float32))


def input_transform(xp: np.ndarray, th: int, tw: int, out: np.ndarray) -> np.ndarray:
    """`Bᵀ d B` of every 4×4 tile (stride 2) of `xp` `(n, 2·th + 2, 2·tw + 2, c)` into `out`
    `(16, n, th, tw, c)`: rows combined first (d0 − d2, d1 + d2, d2 − d1, d1 − d3), then columns."""
    rows = [xp[:, a:a + 2 * th:2] for a in range(4)]  # (n, th, W, c) each: row a of every tile row
    mixed = (rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3])
    for i, m in enumerate(mixed):
        cols = [m[:, :, b:b + 2 * tw:2] for b in range(4)]
        np.subtract(cols[0], cols[2], out=out[4 * i])
        np.add(cols[1], cols[2], out=out[4 * i + 1])
        np.subtract(cols[2], cols[1], out=out[4 * i + 2])
        np.subtract(cols[1], cols[3], out=out[4 * i + 3])
    return out


def output_transform(m: np.ndarray, out: np.ndarray, oh: int, ow: int) -> None:
    """`Aᵀ M A` of `m` `(16, n, th, tw, f)` into `out` `(n, oh, ow, f)`: each tile's 2×2 outputs
    (rows m0 + m1 + m2 and m1 − m2 − m3, then the same over columns)."""
    m = m.reshape(4, 4, *m.shape[1:])
    rows = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])  # (4, n, th, tw, f) each
    for a, r in enumerate(rows):
        for b, y in enumerate((r[0] + r[1] + r[2], r[1] - r[2] - r[3])):
            target = out[:, a::2, b::2]
            target[...] = y[:, :target.shape[1], :target.shape[2]]


def correlate_3x3(xp: np.ndarray, u: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """The 3×3 stride-1 cross-correlation of the padded input `xp` `(n, oh + 2, ow + 2, in)` with the
    transformed kernel `u` `(16, in, out)`: `(n, oh, ow, out)` float32."""
    n, c, f = xp.shape[0], u.shape[1], u.shape[2]
    th, tw = -(-oh // 2), -(-ow // 2)
    need_h, need_w = 2 * th + 2, 2 * tw + 2  # whole tiles: one more zero row/column when oh/ow is odd
    if xp.shape[1] < need_h or xp.shape[2] < need_w:
        xp = np.pad(xp, ((0, 0), (0, need_h - xp.shape[1]), (0, need_w - xp.shape[2]), (0, 0)))
    v = input_transform(xp, th, tw, np.empty((16, n, th, tw, c), np.float32))
    m = np.matmul(v.reshape(16, n * th * tw, c), u).reshape(16, n, th, tw, f)
    out = np.empty((n, oh, ow, f), np.float32)
    output_transform(m, out, oh, ow)
    return out
