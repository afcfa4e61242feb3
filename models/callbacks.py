"""A Keras callback that shows training progress with rich, logs each epoch, and keeps the history
on disk so a resumed run (BackupAndRestore) still has every epoch."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TextIO

import keras
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress(keras.callbacks.Callback):
    """Epoch and batch bars (when `show`), one log line per epoch (when `log`), history in `history_path`."""

    def __init__(self, name: str, epochs: int, history_path: Path, log: TextIO | None = None,
                 show: bool = True) -> None:
        super().__init__()
        self.name, self.epochs, self.history_path, self.log, self.show = name, epochs, history_path, log, show
        self.history: dict[str, list[float]] = {}
        self.progress: Progress | None = None

    def on_train_begin(self, logs=None):
        if self.history_path.exists():
            self.history = json.loads(self.history_path.read_text())
        done = len(self.history.get("loss", []))
        if done:
            self.write(f"resuming after epoch {done}")
        if self.show:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self.progress.start()
            self.epoch_task = self.progress.add_task(f"{self.name} epochs", total=self.epochs, completed=done, info="")
            self.batch_task = self.progress.add_task("batches", total=self.params.get("steps"), info="")

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()
        if self.progress:
            self.progress.reset(self.batch_task, total=self.params.get("steps"), info="")

    def on_train_batch_end(self, batch, logs=None):
        if self.progress:
            loss = (logs or {}).get("loss")
            self.progress.update(self.batch_task, completed=batch + 1,
                                 info="" if loss is None else f"loss {float(loss):.4f}")

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        self.history_path.write_text(json.dumps(self.history))
        summary = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss",
                                                                            "val_accuracy"))
        self.write(f"epoch {epoch + 1}/{self.epochs} {summary} ({time.time() - self.started:.0f}s)")
        if self.progress:
            self.progress.update(self.epoch_task, completed=epoch + 1, info=summary)

    def on_train_end(self, logs=None):
        if self.progress:
            self.progress.stop()

    def write(self, line: str) -> None:
        if self.log is not None:
            self.log.write(f"{time.strftime('%H:%M:%S')} {self.name}: {line}\n")
            self.log.flush()


class BestValidationF1(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation macro-F1 and restores them at the end
    (validation loss can keep falling while the minority class is forgotten)."""

    def __init__(self, x_val, y_val) -> None:
        super().__init__()
        self.x_val, self.y_val = x_val, y_val
        self.best, self.best_epoch, self.best_weights = -1.0, -1, None

    def on_epoch_end(self, epoch, logs=None):
        from sklearn.metrics import f1_score

        pred = self.model.predict(self.x_val, verbose=0).argmax(1)
        f1 = float(f1_score(self.y_val, pred, average="macro"))
        if logs is not None:
            logs["val_macro_f1"] = f1
        if f1 > self.best:
            self.best, self.best_epoch, self.best_weights = f1, epoch, self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
