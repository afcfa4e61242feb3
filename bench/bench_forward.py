"""Forward-pass throughput: scratch vs Keras `model.predict`, same inputs, same batch size, one run.

Prints images/s (or sequences/s) for both and the ratio scratch / Keras. Targets: CNN ≥ 0.8×,
LSTM and GRU ≥ 1.5×, the transformer ≥ 1.0×. Beside the throughput, the CPU time each side spends
per sample (all its threads, median of the runs): a side that keeps fewer cores busy shows it here.
`--profile` adds the scratch CNN's time per layer.

    python bench/bench_forward.py [--batch-size 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.timing import blas_line, wall_and_cpu  # noqa: E402


def seed_cnn():
    """The seed report's CNN: 32-32-64-64-128-128 3×3 convs, max-pooling, Dense 128, Dense 10."""
    import keras
    from keras import layers as L

    stack = [keras.Input((32, 32, 3))]
    for filters in (32, 64, 128):
        stack += [L.Conv2D(filters, 3, padding="same", activation="relu"),
                  L.Conv2D(filters, 3, padding="same", activation="relu"), L.MaxPooling2D()]
    stack += [L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")]
    return keras.Sequential(stack, name="seed_cnn")


def text_model(cell: str):
    import keras
    from keras import layers as L

    inputs = keras.Input((60,), dtype="int32")
    x = L.Embedding(2000, 64, mask_zero=True)(inputs)
    x = {"lstm": lambda: L.Bidirectional(L.LSTM(64)), "gru": lambda: L.Bidirectional(L.GRU(64)),
         "simple_rnn": lambda: L.SimpleRNN(64)}[cell]()(x)
    return keras.Model(inputs, L.Dense(3, activation="softmax")(x), name=f"bench_{cell}")


def transformer():
    """A small transformer classifier: one encoder block (MultiHeadAttention 4×16 with the padding
    mask, residual, LayerNorm, feed-forward 128, residual, LayerNorm), masked average, Dense 3."""
    import keras
    from keras import layers as L

    inputs = keras.Input((60,), dtype="int32")
    x = L.Embedding(2000, 64, mask_zero=True)(inputs)
    x = L.LayerNormalization()(L.Add()([x, L.MultiHeadAttention(4, 16)(x, x)]))
    x = L.LayerNormalization()(L.Add()([x, L.Dense(64)(L.Dense(128, activation="relu")(x))]))
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(3, activation="softmax")(x), name="bench_transformer")


def compare(name: str, keras_model, x, batch_size: int, repeats: int) -> dict:
    """Keras and scratch timed alternately, `repeats` pairs; the ratio is the median over pairs, so a
    noisy moment on the machine affects both sides of a pair alike."""
    import statistics

    from nntrace.models import load_scratch

    scratch = load_scratch(keras_model)
    run_keras = lambda: keras_model.predict(x, batch_size=batch_size, verbose=0)  # noqa: E731
    run_scratch = lambda: scratch.predict_proba(x, batch_size=batch_size)  # noqa: E731
    runs = [(wall_and_cpu(run_keras), wall_and_cpu(run_scratch)) for _ in range(repeats)]
    pairs = [(k[0], s[0]) for k, s in runs]
    diff = float(np.abs(run_keras() - run_scratch()).max())
    n = len(x)
    return {"keras_cpu": statistics.median(k[1] for k, _ in runs) / n,
            "scratch_cpu": statistics.median(s[1] for _, s in runs) / n,"name": name, "n": n, "keras": n / min(k for k, _ in pairs), "scratch": n / min(s for _, s in pairs),
            "keras_median": n / statistics.median(k for k, _ in pairs),
            "scratch_median": n / statistics.median(s for _, s in pairs),
            "ratio": statistics.median(k / s for k, s in pairs), "max_diff": diff}


def layer_profile(keras_model, x, batch_size: int) -> list[tuple[str, str, float]]:
    """Where the scratch forward pass spends its time: (layer, class, seconds over all of `x`),
    each layer timed between the outputs `forward_layers` yields, best of 2 passes."""
    import time

    from nntrace.models import load_scratch

    scratch = load_scratch(keras_model)
    best: dict[str, list] = {}
    for _ in range(2):
        spent: dict[str, float] = {}
        for i in range(0, len(x), batch_size):
            start = time.perf_counter()
            for layer, _, _ in scratch.forward_layers(x[i:i + batch_size]):
                now = time.perf_counter()
                spent[layer.name] = spent.get(layer.name, 0.0) + now - start
                start = now
        for layer in scratch.layers:
            if layer.name in spent:
                row = best.setdefault(layer.name, [layer.name, type(layer).__name__, spent[layer.name]])
                row[2] = min(row[2], spent[layer.name])
    return [tuple(r) for r in best.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="also print the scratch CNN's time per layer")
    parser.add_argument("--only", nargs="+", choices=["cnn", "lstm", "simple_rnn", "gru", "transformer"],
                        help="only these rows")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (1000, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(1, 2000, (400, 60)).astype(np.int32)
    lengths = rng.integers(5, 61, 400)
    ids[np.arange(60)[None, :] >= lengths[:, None]] = 0  # post-padded, mixed real lengths

    cases = {"cnn": ("CNN (6 conv, 1,000 images)", seed_cnn, images),
             "lstm": ("Bidirectional LSTM(64) (400 × 60)", lambda: text_model("lstm"), ids),
             "simple_rnn": ("SimpleRNN(64) (400 × 60)", lambda: text_model("simple_rnn"), ids),
             "gru": ("Bidirectional GRU(64) (400 × 60)", lambda: text_model("gru"), ids),
             "transformer": ("transformer, MHA 4×16 + FFN 128 (400 × 60)", transformer, ids)}
    rows = [compare(name, build(), x, args.batch_size, args.repeats)
            for key, (name, build, x) in cases.items() if not args.only or key in args.only]
    table = Table(title=f"forward throughput, batch size {args.batch_size}, {args.repeats} alternating runs")
    for col in ("model", "Keras /s (best)", "scratch /s (best)", "Keras /s (median)", "scratch /s (median)",
                "best ÷ best", "scratch ÷ Keras (median of pairs)", "CPU ms per sample, Keras / scratch",
                "max |Δp|"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for r in rows:
        table.add_row(r["name"], f"{r['keras']:.0f}", f"{r['scratch']:.0f}", f"{r['keras_median']:.0f}",
                      f"{r['scratch_median']:.0f}", f"{r['scratch'] / r['keras']:.2f}×",
                      f"{r['ratio']:.2f}×", f"{r['keras_cpu'] * 1e3:.2f} / {r['scratch_cpu'] * 1e3:.2f}",
                      f"{r['max_diff']:.1e}")
    Console(width=190).print(table)
    print(blas_line())
    if args.profile:
        profile = Table(title=f"scratch CNN forward, time per layer (1,000 images, batch {args.batch_size})")
        for col in ("layer", "class", "ms", "share"):
            profile.add_column(col, justify="left" if col in ("layer", "class") else "right")
        rows = layer_profile(seed_cnn(), images, args.batch_size)
        total = sum(t for _, _, t in rows) or 1.0
        for name, cls, t in rows:
            profile.add_row(name, cls, f"{t * 1000:.0f}", f"{t / total:.0%}")
        Console().print(profile)


if __name__ == "__main__":
    main()
