"""Timing helpers shared by the benchmark scripts."""
import os
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


def wall_and_cpu(fn, warm_up: bool = True) -> tuple[float, float]:
    """One timed run of `fn()` (after a warm-up run): wall-clock seconds, and the CPU seconds the
    whole process spent meanwhile (every thread, BLAS's and TensorFlow's included)."""
    if warm_up:
        fn()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def blas_line() -> str:
    """Which BLAS NumPy's matrix products run on: library, version, the kernel it picked for this
    CPU and its threads; and the environment variables that force another kernel, if set (the
    scratch figures depend on the kernel: an AVX-512 CPU held to the Haswell kernel does about
    half the floating-point work per cycle)."""
    from threadpoolctl import threadpool_info

    libs = sorted({f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture') or 'kernel not reported'}, "
            f"{i.get('num_threads')} threads)" for i in threadpool_info() if i.get("user_api") == "blas"})
    forced = [f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ]
    return ("NumPy BLAS: " + (", ".join(libs) or "none found")
            + (f"; set in the environment: {' '.join(forced)}" if forced else ""))
