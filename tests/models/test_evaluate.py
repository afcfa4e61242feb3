"""`evaluate`: the whole test split through the scratch model and Keras, scored with scikit-learn."""
import keras
import numpy as np
from sklearn.metrics import f1_score

from nntrace.models import load_scratch
from nntrace.models.data import load_cifar10, load_nusax
from nntrace.models.evaluate import evaluate
from tests.keras_models import small_text_model
from tests.parity import randomise_weights


def tiny_cifar_cnn():
    L = keras.layers
    model = keras.Sequential([keras.Input((32, 32, 3)), L.Rescaling(1 / 255.0), L.Conv2D(3, 3, activation="relu"),
                              L.GlobalAveragePooling2D(), L.Dense(10, activation="softmax")])
    randomise_weights(model, 3)
    return model


def test_the_cnn_test_split_scored_both_ways(tmp_path, data_dir):
    model = tiny_cifar_cnn()
    model.save(tmp_path / "m.keras")
    path = load_scratch(model).save_weights(tmp_path / "m.npz")
    seen = []
    result = evaluate(path, data_dir=data_dir, batch_size=7, keras_path=tmp_path / "m.keras",
                      progress=lambda what, done, total: seen.append((what, done, total)))
    data = load_cifar10(data_dir)
    expected = model.predict(data.x_test, verbose=0).argmax(-1)
    assert result.n_test == len(data.y_test) == 20
    assert result.keras_f1 == f1_score(data.y_test, expected, average="macro")
    assert result.scratch_f1 == result.keras_f1 and result.agreement == 100.0 and result.max_prob_diff < 1e-5
    assert ("scratch", 7, 20) in seen and ("scratch", 20, 20) in seen  # a progress tick per batch
    assert result.scratch_seconds > 0


def test_a_text_model_without_keras_beside_it(tmp_path, data_dir):
    path = load_scratch(small_text_model()).save_weights(tmp_path / "t.npz")
    result = evaluate(path, data_dir=data_dir)
    data = load_nusax(data_dir)
    scratch = load_scratch(path).predict(data.x_test)
    assert result.keras_f1 is None and result.agreement is None
    assert result.scratch_f1 == f1_score(data.y_test, scratch, average="macro")


def test_the_evaluate_command_prints_both_scores(tmp_path, data_dir, capsys):
    from nntrace import cli

    model = tiny_cifar_cnn()
    model.save(tmp_path / "m.keras")
    path = load_scratch(model).save_weights(tmp_path / "m.npz")
    assert cli.main(["evaluate", str(path), "--data", str(data_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    data = load_cifar10(data_dir)
    f1 = f1_score(data.y_test, model.predict(data.x_test, verbose=0).argmax(-1), average="macro")
    assert f"scratch macro-F1 {f1:.4f}" in out and f"Keras   macro-F1 {f1:.4f}" in out
    assert "agreement 100.00%" in out
    assert cli.main(["evaluate", str(path), "--batch-size", "0"]) == 2
