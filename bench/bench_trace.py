"""Tracer and app costs, measured in one run on the shipped CNN's architecture.

- tracing off: forward through the model container (null tracer) vs a bare loop over the layers;
- a full layer-level trace of one image;
- time to the first fine-grained conv event after the model is loaded;
- peak memory growth while stepping through (and keeping) every event of the first conv layer;
- app step latency on a 120×40 terminal with Textual's pilot.

    python bench/bench_trace.py
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.timing import best_time  # noqa: E402


def scratch_cnn():
    """The shipped CNN if present, else the same architecture with random weights."""
    from nntrace.models import load_scratch
    from nntrace.models.inputs import PRETRAINED

    shipped = PRETRAINED / "cnn.npz"
    if shipped.exists():
        return load_scratch(shipped), "shipped cnn.npz"
    from nntrace.models.builders import CNNSettings, build_cnn

    return load_scratch(build_cnn(CNNSettings())), "default CNN architecture, random weights"


def app_step_latency(model, x, presses: int = 30) -> tuple[float, float]:
    """(key binding's action + screen repaint, pilot key round trip) per step, in seconds.

    The first is what a user waits for: the `n` binding's action runs and the screen is repainted
    (`screen._on_timer_update` is what the pilot itself calls to repaint). The second adds the
    pilot's own synchronisation (it waits until every widget has processed the key event).
    """
    from nntrace.tracer import trace
    from nntrace.tui import NNTraceApp, Session

    t = trace(model, x)
    app = NNTraceApp(Session(t, "bench image"), model)

    async def run() -> tuple[float, float]:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("right_square_bracket", "n")
            await pilot.pause()
            start = time.perf_counter()
            for _ in range(presses):
                await app.run_action("step(1)")
                app.screen._on_timer_update()
            direct = (time.perf_counter() - start) / presses
            start = time.perf_counter()
            for _ in range(presses):
                await pilot.press("n")
                await pilot.pause(0)
            return direct, (time.perf_counter() - start) / presses

    return asyncio.run(run())


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from nntrace.tracer import trace

    model, source = scratch_cnn()
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (256, 32, 32, 3)).astype(np.float32)
    image = batch[:1]
    conv = next(l.name for l in model.layers if type(l).__name__ == "Conv2D")

    def bare():
        x = batch
        for layer in model.layers:
            x = layer.forward(x)

    t_bare = best_time(bare)
    t_off = best_time(lambda: model.forward(batch))
    t_trace = best_time(lambda: trace(model, image))

    def first_event():
        next(trace(model, image).steps(conv))

    t_first = best_time(first_event)
    t = trace(model, image)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = list(t.steps(conv))
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    step_latency, pilot_round_trip = app_step_latency(model, image)

    table = Table(title=f"tracer and app costs ({source})")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    table.add_row("forward, tracing off ÷ bare layer loop (256 images)", f"{t_off / t_bare:.3f}×", "≤ 1.05×")
    table.add_row("layer-level trace of one image", f"{t_trace * 1e3:.1f} ms", "< 50 ms")
    table.add_row("first fine-grained conv event", f"{t_first * 1e3:.1f} ms", "< 200 ms")
    table.add_row(f"peak memory, all {len(kept)} events of {conv} kept", f"{peak / 2**20:.1f} MB", "< 300 MB")
    table.add_row("app step, 120×40: key action + repaint", f"{step_latency * 1e3:.1f} ms", "< 50 ms")
    table.add_row("app step, 120×40: pilot key round trip", f"{pilot_round_trip * 1e3:.1f} ms", "")
    Console().print(table)


if __name__ == "__main__":
    main()
