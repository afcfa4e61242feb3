"""`nntrace grad`: the backward pass of one input, beside tf.GradientTape."""
import numpy as np

from nntrace import cli
from nntrace.models import load_scratch
from tests.keras_models import small_cnn, small_text_model


def saved(model, tmp_path, name):
    model.save(tmp_path / f"{name}.keras")
    return load_scratch(model).save_weights(tmp_path / f"{name}.npz")


def test_grad_prints_the_loss_norms_and_the_tape_difference(tmp_path, capsys):
    from PIL import Image
    path = saved(small_cnn(), tmp_path, "cnn")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(tmp_path / "i.png")
    assert cli.main(["grad", "cnn", "--model", str(path), "--image", str(tmp_path / "i.png"), "--label", "1"]) == 0
    out = capsys.readouterr().out
    scratch = load_scratch(path)
    x = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "i.png"), np.float32)[None]
    g = scratch.gradients(x, np.array([1]))
    assert f"loss {g.loss:.6f}" in out and "GradientTape:" in out
    cells = [[c.strip() for c in line.split("│") if c.strip()] for line in out.splitlines() if "conv" in line]
    diffs = [float(row[-1]) for row in cells if row and row[-1] not in ("—", "…")]  # the last column
    assert len(diffs) >= 2, out  # the conv layer's output and its kernel
    assert diffs and max(diffs) < 1e-3  # every printed difference from the tape is small


def test_grad_refuses_a_label_outside_the_classes_and_a_view_that_does_not_fit(tmp_path, capsys):
    path = saved(small_text_model(), tmp_path, "t")
    assert cli.main(["grad", "lstm", "--model", str(path), "--label", "7"]) == 2
    assert "--label must be a class id from 0 to" in capsys.readouterr().err
    assert cli.main(["grad", "cnn", "--model", str(path)]) == 2


def test_a_gradient_that_is_zero_in_exact_arithmetic_is_measured_against_its_layer(capsys):
    """A key bias shifts every score of a softmax row alike, so its gradient is 0 and both sides
    give round-off. Divided by itself that read as a 100% difference; divided by the
    largest gradient among the layer's variables it is round-off again."""
    assert cli.main(["grad", "attention", "--text", "filmnya bagus sekali", "--label", "2"]) == 0
    out = capsys.readouterr().out
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.split("│") if c.strip()]
                                          for line in out.splitlines() if line.startswith("│")) if "/" in cells[0]}
    key_bias = next(cells for name, cells in rows.items() if name.endswith("key/bias"))
    key_kernel = next(cells for name, cells in rows.items() if name.endswith("key/kernel"))
    assert float(key_bias[2]) < 1e-3 * float(key_kernel[2])  # ‖gradient‖: round-off of an exact 0
    diffs = [float(cells[-1]) for cells in rows.values() if cells[-1] not in ("—", "…")]
    assert len(diffs) >= 10 and max(diffs) < 1e-4, out
    assert "largest GradientTape gradient among the layer's variables" in " ".join(out.split())


def test_grad_on_a_per_pixel_output_says_what_it_takes(tmp_path, capsys):
    """A class vector per pixel: the command names the output shape instead of a label error
    about a --label the learner never gave."""
    import keras
    from PIL import Image

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1, activation="softmax")(inputs))
    path = saved(model, tmp_path, "pixels")
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "i.png")
    assert cli.main(["grad", "cnn", "--model", str(path), "--image", str(tmp_path / "i.png")]) == 2
    err = capsys.readouterr().err
    assert "gives an output of shape (8, 8, 4) per input" in err and "--label" not in err
