"""`nntrace train`: what it saves, that it refuses to overwrite, and that an interrupted run resumes."""
import json

import keras
import numpy as np
import pytest

from nntrace import cli
from nntrace.models.callbacks import TrainingProgress
from nntrace.models.train import keras_input


def test_interrupted_training_resumes_and_saves_everything(tmp_path, data_dir, monkeypatch, capsys):
    out, log = tmp_path / "models", tmp_path / "train.log"
    args = ["train", "lstm", "--quick", "--epochs", "4", "--data", str(data_dir), "--out", str(out),
            "--no-progress", "--log", str(log)]
    real_epoch_end = TrainingProgress.on_epoch_end

    def stop_after_two(self, epoch, logs=None):
        real_epoch_end(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during epoch 3

    monkeypatch.setattr(TrainingProgress, "on_epoch_end", stop_after_two)
    assert cli.main(args) == 130
    assert "run the same command again to resume" in capsys.readouterr().out
    assert not (out / "lstm.keras").exists() and (out / "lstm-backup").is_dir()

    monkeypatch.setattr(TrainingProgress, "on_epoch_end", real_epoch_end)
    assert cli.main(args) == 0
    lines = log.read_text().splitlines()
    assert any(line.endswith("lstm: resuming after epoch 2") for line in lines)
    epochs_logged = [line.split("epoch ")[1].split("/")[0] for line in lines if ": epoch " in line]
    assert epochs_logged == ["1", "2", "3", "4"]  # the resumed run did epochs 3 and 4 only
    assert not (out / "lstm-backup").exists()

    history = json.loads((out / "lstm-history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == 4
    card = json.loads((out / "lstm.json").read_text())
    assert card["labels"] == ["negative", "neutral", "positive"] and card["epochs_run"] == 4
    assert card["keras_f1"] == card["scratch_f1"] and card["agreement"] == 100.0
    assert card["keras_version"] == keras.__version__ and card["settings"]["cell"] == "lstm"
    assert (out / "lstm-loss.png").stat().st_size > 1000 and (out / "lstm.npz").exists()

    model = keras.models.load_model(out / "lstm.keras", safe_mode=True)  # raw strings in, no custom code
    probs = model.predict(keras_input(np.array(["enak bagus", "buruk kotor"])), verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)

    before = (out / "lstm.keras").read_bytes()
    assert cli.main(args) == 2  # a finished model is not overwritten without --overwrite
    assert "exists" in capsys.readouterr().out and (out / "lstm.keras").read_bytes() == before


def test_cnn_shows_progress_and_takes_raw_pixels(tmp_path, data_dir, capsys):
    out = tmp_path / "models"
    assert cli.main(["train", "cnn", "--quick", "--epochs", "1", "--data", str(data_dir), "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "cnn epochs" in shown and "val_loss" in shown and "batches" in shown and "test macro-F1" in shown
    model = keras.models.load_model(out / "cnn.keras", safe_mode=True)
    assert model.layers[0].__class__.__name__ == "Rescaling"
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    from nntrace.models import load_scratch

    np.testing.assert_allclose(load_scratch(out / "cnn.npz").predict_proba(pixels), model.predict(pixels, verbose=0),
                               atol=1e-5)
    assert json.loads((out / "cnn.json").read_text())["labels"][0] == "airplane"


@pytest.mark.parametrize("kind,layer_class", [("gru", "GRU"), ("attention", "MultiHeadAttention")])
def test_the_gru_and_attention_demo_models_train_like_the_others(kind, layer_class, tmp_path, data_dir, capsys):
    from nntrace.models import load_scratch
    from nntrace.models.convert import load_keras

    out = tmp_path / "models"
    args = ["train", kind, "--quick", "--epochs", "1", "--data", str(data_dir), "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    assert f"{kind}: test macro-F1" in capsys.readouterr().out
    for suffix in (".keras", ".npz", ".json", "-history.json", "-loss.png"):
        assert (out / f"{kind}{suffix}").exists(), suffix
    card = json.loads((out / f"{kind}.json").read_text())
    assert card["kind"] == kind and card["settings"] == cli.settings_for(kind).to_dict()
    assert card["seed"] == cli.TRAIN_DEFAULTS[kind][3] and card["agreement"] == 100.0
    scratch = load_scratch(out / f"{kind}.npz")
    classes = {type(inner).__name__ for layer in scratch.layers
               for inner in (layer, getattr(layer, "forward_layer", None)) if inner is not None}
    assert layer_class in classes and scratch.takes_text
    texts = np.array(["enak bagus sekali", "buruk kotor", ""])
    np.testing.assert_allclose(scratch.predict_proba(texts),
                               load_keras(out / f"{kind}.keras").predict(keras_input(texts), verbose=0), atol=1e-5)
