"""Timing helper shared by the benchmark scripts."""
import time


def best_time(fn, repeats: int = 5) -> float:
    """The fastest of `repeats` runs of `fn()`, after one warm-up run (graph tracing, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
