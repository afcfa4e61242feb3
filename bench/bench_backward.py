"""Backward-pass throughput: scratch `model.gradients` vs `tf.GradientTape`, same inputs, one run.

Prints examples/s for TensorFlow (the tape in a `tf.function`, as Keras's `fit` runs it, and eager)
and for the scratch gradients, the ratio scratch / TensorFlow (target: ≥ 0.5×), the CPU time per
batch, and the largest relative gradient difference (at batch 128 a ReLU input within float32
round-off of 0 can fall on opposite sides in the two, which moves one element's gradient).

    python bench/bench_backward.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.bench_forward import text_model  # noqa: E402
from bench.timing import blas_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tape_steps(keras_model):
    """(compiled, eager): functions of (x, y) returning the loss and every trainable variable's
    gradient, as a training step computes them."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, keras_model(x, training=False))
        return loss, tape.gradient(loss, keras_model.trainable_variables)

    return tf.function(step), step


def max_rel_diff(scratch_g, keras_model, grads) -> float:
    """max over variables of max|g − g_tf| / max|g_tf| (a check that both sides did the same work)."""
    import tensorflow as tf

    worst = 0.0
    for v, g in zip(keras_model.trainable_variables, grads):
        g_tf = np.asarray(tf.convert_to_tensor(g))
        worst = max(worst, float(np.abs(scratch_g.weights[v.path] - g_tf).max() / np.abs(g_tf).max()))
    return worst


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, every thread) of the fastest of two runs."""
    fn()
    best = (float("inf"), float("inf"))
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def compare(name: str, keras_model, scratch, x, y, repeats: int) -> dict:
    """TensorFlow and scratch timed alternately, `repeats` rounds; ratios are medians over rounds.

    Wall-clock throughput is what a user waits for; CPU time (summed over threads) is the work
    done, which a machine shared with other jobs distorts less.
    """
    import tensorflow as tf

    compiled, eager = tape_steps(keras_model)
    xt, yt = tf.constant(x), tf.constant(y)
    runs = {"compiled": lambda: compiled(xt, yt), "eager": lambda: eager(xt, yt),
            "scratch": lambda: scratch.gradients(x, y)}
    rounds = [{k: timed(fn) for k, fn in runs.items()} for _ in range(repeats)]
    n = len(x)
    out = {"name": name, "max_rel": max_rel_diff(runs["scratch"](), keras_model, runs["compiled"]()[1])}
    for k in runs:
        out[k] = n / min(r[k][0] for r in rounds)
        out[f"{k}_cpu_ms"] = 1000 * min(r[k][1] for r in rounds)
    for ref in ("compiled", "eager"):
        out[f"ratio_{ref}"] = statistics.median(r[ref][0] / r["scratch"][0] for r in rounds)
        out[f"cpu_ratio_{ref}"] = statistics.median(r[ref][1] / r["scratch"][1] for r in rounds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import keras
    from rich.console import Console
    from rich.table import Table

    from nntrace.models import load_scratch

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (128, 32, 32, 3)).astype(np.float32)
    cnn = keras.models.load_model(ROOT / "models" / "pretrained" / "cnn.keras", compile=False)
    ids = rng.integers(1, 2000, (64, 60)).astype(np.int32)
    lengths = rng.integers(5, 61, 64)
    ids[np.arange(60)[None, :] >= lengths[:, None]] = 0  # post-padded, mixed real lengths
    lstm = text_model("lstm")

    rows = [compare("shipped CNN (batch 128)", cnn, load_scratch(ROOT / "models" / "pretrained" / "cnn.npz"),
                    images, rng.integers(0, 10, 128), args.repeats),
            compare("Bidirectional LSTM(64) (64 × 60 tokens)", lstm, load_scratch(lstm), ids,
                    rng.integers(0, 3, 64), args.repeats)]
    table = Table(title=f"gradient throughput (examples/s, best of {args.repeats} alternating rounds) and "
                        "CPU time per batch (ms, all threads)")
    for col in ("model", "TF tf.function", "TF eager", "scratch", "scratch ÷ tf.function", "scratch ÷ eager",
                "CPU ms: tf.function / eager / scratch", "CPU: scratch ÷ tf.function", "max rel Δg"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for r in rows:
        table.add_row(r["name"], f"{r['compiled']:.0f}", f"{r['eager']:.0f}", f"{r['scratch']:.0f}",
                      f"{r['ratio_compiled']:.2f}×", f"{r['ratio_eager']:.2f}×",
                      f"{r['compiled_cpu_ms']:.0f} / {r['eager_cpu_ms']:.0f} / {r['scratch_cpu_ms']:.0f}",
                      f"{r['cpu_ratio_compiled']:.2f}×", f"{r['max_rel']:.1e}")
    Console(width=200).print(table)
    print(blas_line())


if __name__ == "__main__":
    main()
