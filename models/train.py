"""Train the reference models with Keras, evaluate them against their scratch twins, save it all.

Each run writes into its output directory: `<name>.keras`, `<name>.npz` (scratch weights),
`<name>.json` (metrics card), `<name>-history.json`, `<name>-loss.png`, and a `backup/` directory
(with the history so far) that lets an interrupted run resume where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from nntrace.models.builders import CNNSettings, TextSettings, build_cnn, build_text_model
from nntrace.models.data import Splits


@dataclass
class RunResult:
    """What one training run produced."""

    name: str
    metrics: dict
    history: dict
    keras_path: Path


def open_log(path: str | Path | None) -> contextlib.AbstractContextManager[TextIO | None]:
    """The log file for background runs, appended to (or None when there is no log)."""
    return open(path, "a", encoding="utf-8") if path else contextlib.nullcontext()


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro"))


def compare_on(keras_model, x: Any, y: np.ndarray, batch_size: int = 256) -> dict:
    """Keras vs scratch on the same inputs: both macro-F1s, agreement (%), max probability difference."""
    from nntrace.models import load_scratch

    scratch = load_scratch(keras_model)
    p_keras = keras_model.predict(keras_input(x), batch_size=batch_size, verbose=0)
    p_scratch = scratch.predict_proba(x, batch_size=batch_size)
    return {
        "keras_f1": macro_f1(y, p_keras.argmax(1)),
        "scratch_f1": macro_f1(y, p_scratch.argmax(1)),
        "agreement": float(100.0 * np.mean(p_keras.argmax(1) == p_scratch.argmax(1))),
        "max_prob_diff": float(np.abs(p_keras - p_scratch).max()),
    }


def keras_input(x: np.ndarray):
    """Images go to Keras as they are; texts as a `(n, 1)` string tensor (Keras takes no NumPy strings)."""
    if np.asarray(x).dtype.kind not in "UO":
        return x
    import tensorflow as tf

    return tf.constant(np.asarray(x, dtype=object).reshape(-1, 1).tolist(), dtype=tf.string)


def text_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((keras_input(x), y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def cifar_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, augment: bool, seed: int):
    """A tf.data pipeline; augmentation (flip + shift by up to 4 px) happens outside the model."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if augment:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)

        def jitter(img, label):
            img = tf.image.random_flip_left_right(img)
            img = tf.pad(img, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
            img = tf.image.random_crop(img, (32, 32, 3))
            return img, label

        ds = ds.map(jitter, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def save_for_inference(model, path: Path) -> None:
    """Save without the optimizer's state (a third of the size): save, reload uncompiled, save again."""
    import keras

    tmp = path.with_name(path.stem + ".training.keras")
    model.save(tmp)
    keras.models.load_model(tmp, compile=False, safe_mode=True).save(path)
    tmp.unlink()


def plot_history(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], label="training loss")
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fit(kind: str, settings: CNNSettings | TextSettings, data: Splits, out_dir: Path, name: str,
        epochs: int, batch_size: int, seed: int = 0, log=None, progress: bool = True,
        patience: int = 6) -> RunResult:
    """Train one model, keep the weights of the best validation epoch, evaluate, save everything."""
    import keras
    import tensorflow as tf

    from nntrace.models.callbacks import BestValidationF1, TrainingProgress

    tf.get_logger().setLevel("ERROR")  # retracing notices between variants are expected

    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "cnn":
        model = build_cnn(settings, len(data.labels), seed)
        train = cifar_dataset(data.x_train, data.y_train, batch_size, settings.augment, seed)
        val = (data.x_val, data.y_val)
        x_test = data.x_test
        lr = 1e-3
    else:
        model = build_text_model(settings, data.x_train, len(data.labels), seed)
        train = text_dataset(data.x_train, data.y_train, batch_size, True, seed)
        val = (data.x_val, data.y_val)
        x_test = data.x_test
        lr = settings.learning_rate
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    backup = out_dir / f"{name}-backup"  # BackupAndRestore deletes it once training completes
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup)),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=kind == "cnn"),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(2, patience // 2)),
    ]
    if kind != "cnn":  # small validation set: keep the epoch with the best validation macro-F1
        callbacks.insert(0, BestValidationF1(keras_input(val[0]), val[1]))
    tracker = TrainingProgress(name, epochs, backup / "history.json", log=log, show=progress)
    callbacks.append(tracker)
    started = time.time()
    model.fit(train, validation_data=(keras_input(val[0]), val[1]), epochs=epochs, callbacks=callbacks, verbose=0,
              shuffle=False)  # the dataset shuffles itself
    seconds = time.time() - started
    history = tracker.history

    val_metrics = compare_on(model, val[0], data.y_val)
    test_metrics = compare_on(model, x_test, data.y_test)
    metrics = {
        "name": name, "kind": kind, "labels": list(data.labels),
        **test_metrics,
        "val_keras_f1": val_metrics["keras_f1"],
        "keras_version": keras.__version__, "seed": seed, "settings": settings.to_dict(),
        "epochs_run": len(history.get("loss", [])), "batch_size": batch_size, "train_seconds": round(seconds, 1),
        "n_train": int(len(data.y_train)), "n_test": int(len(data.y_test)),
    }
    keras_path = out_dir / f"{name}.keras"
    save_for_inference(model, keras_path)
    from nntrace.models import load_scratch

    scratch = load_scratch(model)
    scratch.meta.update(labels=list(data.labels), test_keras_f1=metrics["keras_f1"], seed=seed)
    scratch.save_weights(out_dir / f"{name}.npz", overwrite=True)
    (out_dir / f"{name}-history.json").write_text(json.dumps(history, indent=1))
    (out_dir / f"{name}.json").write_text(json.dumps(metrics, indent=1))
    plot_history(history, out_dir / f"{name}-loss.png", f"{name}: loss per epoch")
    return RunResult(name, metrics, history, keras_path)
