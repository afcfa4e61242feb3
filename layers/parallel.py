"""Work over a batch split between the machine's cores: each part runs in its own thread with the
BLAS library held to one thread, so that both cores do the im2col copies and the matrix products
(NumPy releases the GIL in both) instead of one core copying while BLAS waits, and no BLAS thread
spins on a core the other part is using.

    parts = over_batch(lambda lo, hi: work(x[lo:hi]), len(x))   # [work(first half), work(second half)]

Small batches (one traced sample) run in the calling thread as they are.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

#: Below this many samples the batch is not split (the threads would cost more than they save).
MIN_SPLIT = 8

PREFIX = "nntrace-part"
_pool: ThreadPoolExecutor | None = None
_controller = None


def workers() -> int:
    """How many parts a batch is split into: the cores this process may use, at most 4
    (`NNTRACE_THREADS` overrides; 1 turns the splitting off)."""
    given = os.environ.get("NNTRACE_THREADS")
    if given and given.isdigit() and int(given) > 0:
        return int(given)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def together(*tasks: Callable[[], T]) -> list[T]:
    """Independent tasks (e.g. a Bidirectional layer's two directions) at once, one per core when
    there are cores to spare; their results in order."""
    if len(tasks) <= 1 or workers() <= 1 or threading.current_thread().name.startswith(PREFIX):
        return [task() for task in tasks]
    with limited_blas(len(tasks)) as pool:
        futures = [pool.submit(task) for task in tasks]
        return [f.result() for f in futures]


class limited_blas:
    """The thread pool (at least `size` threads), with BLAS held to one thread while in use."""

    def __init__(self, size: int) -> None:
        global _pool, _controller
        if _pool is None or _pool._max_workers < size:  # noqa: SLF001 — grown once when more are asked
            _pool = ThreadPoolExecutor(size, thread_name_prefix=PREFIX)
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            from nntrace.layers.memory import retain_freed_memory

            retain_freed_memory()
            _controller = ThreadpoolController()
        self.limit = _controller.limit(limits=1, user_api="blas")

    def __enter__(self) -> ThreadPoolExecutor:
        self.limit.__enter__()
        return _pool

    def __exit__(self, *exc) -> None:
        self.limit.__exit__(*exc)


def over_batch(work: Callable[[int, int], T], n: int) -> list[T]:
    """`work(lo, hi)` over consecutive parts of `range(n)`, in parallel when it pays; the results
    in order. An exception in any part is raised here."""
    parts = min(workers(), n // MIN_SPLIT)
    if parts <= 1 or threading.current_thread().name.startswith(PREFIX):  # already inside a part: no nesting
        return [work(0, n)]
    bounds = [n * k // parts for k in range(parts + 1)]
    with limited_blas(parts) as pool:
        futures = [pool.submit(work, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
        return [f.result() for f in futures]
