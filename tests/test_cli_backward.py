"""`nntrace compare --backward`: each layer's gradient against tf.GradientTape, and a planted error
in one layer's backward pass is reported there."""
import numpy as np
import pytest

from nntrace import cli
from nntrace.layers import MaxPooling2D
from nntrace.models import load_scratch
from tests.keras_models import small_cnn, small_text_model


@pytest.fixture
def cnn_files(tmp_path):
    from PIL import Image

    model = small_cnn()
    model.save(tmp_path / "m.keras")
    load_scratch(model).save_weights(tmp_path / "m.npz")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    return tmp_path / "m.npz", tmp_path / "img.png"


def rows(out: str) -> dict[str, str]:
    table = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 6 and cells[1]:
            table[cells[1]] = cells[-2]
    return table


def test_compare_backward_passes_every_layer(cnn_files, capsys):
    npz, image = cnn_files
    assert cli.main(["compare", str(npz), "--image", str(image), "--backward", "--label", "1"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert "loss against class 1" in out
    assert table and set(table.values()) == {"pass"}
    names = [layer.name for layer in load_scratch(npz).layers if layer.name]
    assert "loss" in table and "input" in table and any(n in table for n in names)


def test_a_wrong_gradient_is_reported(cnn_files, capsys, monkeypatch):
    npz, image = cnn_files
    original = MaxPooling2D.backward

    def off_by_one_percent(self, *args, **kwargs):
        dx, grads = original(self, *args, **kwargs)
        return dx * np.float32(1.01), grads

    monkeypatch.setattr(MaxPooling2D, "backward", off_by_one_percent)
    assert cli.main(["compare", str(npz), "--image", str(image), "--backward"]) == 1
    table = rows(capsys.readouterr().out)
    assert "FAIL" in table.values() and table.get("loss") == "pass"


def test_compare_backward_text_model(tmp_path, capsys):
    model = small_text_model()
    model.save(tmp_path / "t.keras")
    assert cli.main(["compare", str(tmp_path / "t.keras"), "--text", "enak sekali", "--backward"]) == 0
    table = rows(capsys.readouterr().out)
    assert set(table.values()) == {"pass"} and "input" not in table


def test_a_label_outside_the_classes_is_one_line(cnn_files, capsys):
    npz, image = cnn_files
    code = cli.main(["compare", str(npz), "--image", str(image), "--backward", "--label", "99"])
    err = capsys.readouterr().err
    assert code == 2 and "label" in err and "Traceback" not in err


def test_a_one_unit_head_is_refused_in_one_line(tmp_path, capsys):
    import keras

    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "sig.keras")
    x = np.zeros((4, 4, 3), np.uint8)
    from PIL import Image
    Image.fromarray(x).save(tmp_path / "img.png")
    for argv in (["compare", str(tmp_path / "sig.keras"), "--image", str(tmp_path / "img.png"), "--backward"],
                 ["grad", "cnn", "--model", str(tmp_path / "sig.keras"), "--image", str(tmp_path / "img.png")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "1-unit output" in err and "Traceback" not in err


def test_a_model_with_two_inputs_is_refused_with_what_to_do(tmp_path, capsys):
    import keras

    a, b = keras.Input((4, 4, 3), name="left"), keras.Input((4, 4, 3), name="right")
    merged = keras.layers.Add()([keras.layers.Conv2D(2, 3)(a), keras.layers.Conv2D(2, 3)(b)])
    model = keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(merged)))
    model.save(tmp_path / "two.keras")
    for argv in (["compare", str(tmp_path / "two.keras"), "--index", "0", "--backward"],
                 ["trace", str(tmp_path / "two.keras"), "--index", "0", "-o", str(tmp_path / "t.nntrace")],
                 ["grad", "cnn", "--model", str(tmp_path / "two.keras"), "--index", "0"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "takes 2 inputs (left, right)" in err and "Traceback" not in err
