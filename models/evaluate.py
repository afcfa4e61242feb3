"""Evaluate a model on its whole test split: scratch and Keras macro-F1, agreement and max |Δp|."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Evaluation:
    model: str
    n_test: int
    scratch_f1: float
    scratch_seconds: float               # the scratch forward pass over the whole split
    keras_f1: float | None = None        # None when no Keras model sits beside the weights
    keras_seconds: float | None = None
    agreement: float | None = None       # % of samples where both predict the same class
    max_prob_diff: float | None = None


def test_split(scratch, data_dir=None):
    """(x_test, y_test) of the data set the model was trained on: CIFAR-10 or NusaX-Senti."""
    from nntrace.models.data import load_cifar10, load_nusax

    data = load_nusax(data_dir) if scratch.takes_text else load_cifar10(data_dir)
    return data.x_test, np.asarray(data.y_test)


def in_batches(predict: Callable[[object], np.ndarray], x, batch_size: int,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """`predict` over `x` in batches, calling `progress(done)` after each."""
    parts = []
    for start in range(0, len(x), batch_size):
        parts.append(predict(x[start:start + batch_size]))
        if progress:
            progress(min(start + batch_size, len(x)))
    return np.concatenate(parts, axis=0)


def evaluate(model_path: Path, data_dir=None, batch_size: int = 256, keras_path: Path | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> Evaluation:
    """Run the scratch model (and Keras, when `keras_path` is given) over the test split.

    `progress(what, done, total)` is called after every batch.
    """
    from nntrace.models import load_scratch
    from nntrace.models.train import macro_f1

    scratch = load_scratch(model_path)
    x, y = test_split(scratch, data_dir)
    tick = (lambda what: (lambda done: progress(what, done, len(y)))) if progress else (lambda what: None)
    start = time.perf_counter()
    ours = in_batches(scratch.forward, x, batch_size, tick("scratch"))
    result = Evaluation(scratch.name, len(y), macro_f1(y, ours.argmax(-1)), time.perf_counter() - start)
    if keras_path is not None:
        from nntrace.models.convert import load_keras
        from nntrace.models.train import keras_input

        keras_model = load_keras(keras_path)
        start = time.perf_counter()
        theirs = in_batches(lambda b: keras_model.predict(keras_input(b), batch_size=batch_size, verbose=0), x,
                            max(batch_size, 2048), tick("Keras"))
        result.keras_seconds = time.perf_counter() - start
        result.keras_f1 = macro_f1(y, theirs.argmax(-1))
        result.agreement = float((theirs.argmax(-1) == ours.argmax(-1)).mean() * 100)
        result.max_prob_diff = float(np.abs(theirs - ours).max())
    return result
