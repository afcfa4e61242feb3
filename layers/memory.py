"""Keep freed memory for the next batch.

A layer's output over a batch is megabytes (the seed CNN's first layer: 16 MB at batch 128). By
default glibc hands blocks that large straight back to the kernel when NumPy frees them, so every
layer of every batch writes into fresh pages and pays a page fault per 4 KiB. Raising the mmap
and trim thresholds lets the freed blocks be reused as they are (bench/bench_forward.py: the seed
CNN's forward pass about 25% faster when nothing else in the process allocates). glibc's
defaults favour a small resident size; this trades up to `TRIM_BYTES` of kept memory for speed.
Set when the first batch is split between the cores (layers/parallel.py).
"""
from __future__ import annotations

import sys

#: Blocks below this are carved from the heap and reused (glibc's largest allowed threshold).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory the heap keeps before returning any to the kernel.
TRIM_BYTES = 512 * 1024 * 1024
#: Extra memory asked of the kernel each time the heap grows.
TOP_PAD_BYTES = 64 * 1024 * 1024

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def retain_freed_memory() -> bool:
    """Set glibc's malloc thresholds once per process; False where the C library is not glibc."""
    global _done
    if _done:
        return True
    _done = True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, TRIM_BYTES), (_M_TOP_PAD, TOP_PAD_BYTES)))
