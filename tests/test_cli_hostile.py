"""Hostile arguments and files on the command line: each is refused with exit code 2 and ONE line
`nntrace: <message>` naming the value and what was expected, before any work starts; a programming
error (KeyError) is not dressed up as a user error."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nntrace import cli
from nntrace.layers import Conv2D, Dense, Flatten
from nntrace.layers.errors import NNTraceError
from nntrace.models import CNNFromScratch
from tests.datasets import make_cifar_zip
from tests.scratch_models import tiny_cnn, tiny_lstm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as loading data, a model, or training."""
    def work(*args, **kwargs):
        raise AssertionError("the command started work before refusing its arguments")

    for target in ("nntrace.models.data.load_cifar10", "nntrace.models.data.load_nusax", "nntrace.models.train.fit",
                   "nntrace.models.load_scratch", "nntrace.models.experiments.run_experiments"):
        monkeypatch.setattr(target, work)


def refused(argv: list[str], capsys) -> str:
    """The one line a refused command prints; checks exit code 2 and no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nntrace: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv,message", [
    (["train", "cnn", "--epochs", "0"], "argument --epochs: expected a positive whole number (1, 2, 3…), got '0'"),
    (["train", "cnn", "--epochs", "-3"], "argument --epochs: expected a positive whole number (1, 2, 3…), got '-3'"),
    (["train", "lstm", "--batch-size", "0"], "argument --batch-size: expected a positive whole number"),
    (["train", "lstm", "--batch-size", "1.5"], "argument --batch-size: expected a positive whole number"),
    (["train", "cnn", "--seed", "-1"], "argument --seed: expected a whole number from 0 to 4294967295, got '-1'"),
    (["train", "cnn", "--name", "../elsewhere"], "argument --name: expected a plain file name"),
    (["train", "cnn", "--data", "no/such/dir"], "argument --data: no directory or file at 'no/such/dir'"),
    (["cnn", "--index", "-1"], "argument --index: expected a whole number from 0 up, got '-1'"),
    (["trace", "cnn", "--index", "two", "-o", "x.nntrace"], "argument --index: expected a whole number from 0 up"),
    (["trace", "cnn", "--data", "no/such/dir", "-o", "x.nntrace"], "no directory or file at 'no/such/dir'"),
    (["serve", "--port", "0"], "argument --port: expected a port number from 1 to 65535, got '0'"),
    (["serve", "--port", "65536"], "argument --port: expected a port number from 1 to 65535, got '65536'"),
    (["experiments", "--out", "FILE"], "is a file, not a directory"),
    (["train", "cnn", "--log", "DIR"], "argument --log: "),
    (["trace", "cnn", "-o", "DIR"], "argument -o/--output: "),
    (["train", "vit"], "argument kind: invalid choice: 'vit'"),
])
def test_bad_arguments_are_refused_before_any_work(argv, message, tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("x")
    argv = [str(tmp_path) if a == "DIR" else str(tmp_path / "file") if a == "FILE" else a for a in argv]
    line = refused(argv, capsys)
    assert message in line and "--help" in line


@pytest.fixture
def models(tmp_path):
    return {"cnn": tiny_cnn().save_weights(tmp_path / "cnn.npz"),
            "lstm": tiny_lstm().save_weights(tmp_path / "lstm.npz")}


@pytest.mark.parametrize("kind,options,message", [
    ("lstm", ["--index", "5"],
     "--index picks an image, but 'tiny_lstm' is a text model: give it a sentence with --text"),
    ("lstm", ["--image", "photo.png"], "--image picks an image, but 'tiny_lstm' is a text model"),
    ("cnn", ["--text", "enak sekali"], "--text gives a sentence, but this is an image model ('tiny_cnn')"),
])
def test_options_that_do_not_fit_the_model_are_refused(kind, options, message, models, tmp_path, capsys):
    line = refused(["trace", str(models[kind]), *options, "-o", str(tmp_path / "t.nntrace")], capsys)
    assert message in line
    assert not (tmp_path / "t.nntrace").exists()


def test_an_index_outside_the_test_set_names_the_range(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NNTRACE_CACHE", str(tmp_path / "cache"))
    data = make_cifar_zip(tmp_path / "data", per_class=(1, 2))  # 20 test images
    argv = ["trace", str(models["cnn"]), "--data", str(data), "-o", str(tmp_path / "t.nntrace")]
    line = refused(argv + ["--index", "20"], capsys)
    assert "--index must be between 0 and 19 (the CIFAR-10 test set has 20 images), got 20" in line
    assert cli.main(argv + ["--index", "19"]) == 0


def test_an_unknown_layer_is_refused_with_the_layers_there_are(models, tmp_path, capsys):
    line = refused(["trace", str(models["cnn"]), "--layer", "conv9", "-o", str(tmp_path / "t.nntrace")], capsys)
    assert "--layer conv9: model 'tiny_cnn' has no such layer; its layers: rescaling, conv2d_1" in line


def test_a_programming_error_is_not_reported_as_a_user_error(models, monkeypatch):
    def buggy(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "cmd_trace", buggy)
    with pytest.raises(KeyError):
        cli.main(["trace", str(models["cnn"]), "-o", "x.nntrace"])


def test_malformed_architecture_json_is_not_a_bare_key_name(tmp_path, models, capsys):
    with np.load(models["cnn"], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arch = json.loads(str(arrays["__architecture__"]))
    del arch["layers"]
    arrays["__architecture__"] = np.array(json.dumps(arch))
    np.savez(tmp_path / "bad.npz", **arrays)
    line = refused(["trace", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "t.nntrace")], capsys)
    assert line == (f"nntrace: '{tmp_path / 'bad.npz'}': the architecture's 'layers' must be a non-empty list of "
                    "layers, got nothing")


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b""), "is empty (0 bytes): expected a Keras .keras model file"),
    (lambda p: p.write_bytes(b"garbage" * 50), "is not a Keras .keras model file"),
])
def test_damaged_keras_files_on_the_command_line(tmp_path, make, message, capsys):
    path = tmp_path / "m.keras"
    make(path)
    line = refused(["trace", str(path), "-o", str(tmp_path / "t.nntrace")], capsys)
    assert str(path) in line and message in line and "File not found" not in line


def test_a_lambda_model_is_one_line_about_code(tmp_path, capsys):
    import keras

    path = tmp_path / "lambda.keras"
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Lambda(lambda x: x / 255, name="scale"),
                      keras.layers.Flatten(), keras.layers.Dense(2)]).save(path)
    line = refused(["compare", str(path)], capsys)
    assert "contains code (Lambda layer 'scale') that nntrace does not run, for safety" in line


@pytest.mark.parametrize("error,line", [
    (PermissionError(13, "Permission denied", "/models/m.npz"), "nntrace: permission denied: '/models/m.npz'"),
    (IsADirectoryError(21, "Is a directory", "/models"), "nntrace: is a directory: '/models'"),
    (NNTraceError("first line\n  second line"), "nntrace: first line second line"),
])
def test_user_path_errors_are_one_clear_line(error, line, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "cmd_trace", fail)
    assert refused(["trace", "cnn", "-o", "x.nntrace"], capsys) == line


def test_a_hostile_image_is_one_line(models, tmp_path, capsys):
    from tests.models.test_inputs import bilevel_png

    bomb = bilevel_png(tmp_path / "bomb.png", 20000, 20000)
    line = refused(["trace", str(models["cnn"]), "--image", str(bomb), "-o", str(tmp_path / "t.nntrace")], capsys)
    assert "bomb.png' is too large to read safely" in line and "89,478,485 pixels" in line


def one_channel_cnn(channels: int) -> CNNFromScratch:
    rng = np.random.default_rng(0)
    conv = Conv2D("conv", filters=2, kernel_size=3, padding="same", activation="relu")
    conv.set_weights([rng.normal(0, 0.3, (3, 3, channels, 2)), np.zeros(2)])
    dense = Dense("out", units=3, activation="softmax")
    dense.set_weights([rng.normal(0, 0.3, (128, 3)), np.zeros(3)])
    return CNNFromScratch([conv, Flatten("flat"), dense], "gray", {"shape": [None, 8, 8, channels], "dtype": "float32"})


def test_a_grayscale_model_gets_grayscale_pixels(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    path = one_channel_cnn(1).save_weights(tmp_path / "gray.npz")
    args = cli.build_parser().parse_args(["trace", str(path), "--image", str(tmp_path / "red.png"), "-o", "x"])
    x, described, _, _ = cli.model_input(args, one_channel_cnn(1))
    assert x.shape == (1, 8, 8, 1) and np.allclose(x, 76) and "resized from 16×16 to 8×8" in described
    assert cli.main(["trace", str(path), "--image", str(tmp_path / "red.png"), "-o", str(tmp_path / "g")]) == 0
    four = one_channel_cnn(4).save_weights(tmp_path / "four.npz")
    line = refused(["trace", str(four), "--image", str(tmp_path / "red.png"), "-o", str(tmp_path / "f")], capsys)
    assert "this model takes images with 4 channels; nntrace gives a model 1 (grayscale) or 3 (RGB)" in line


# -- files nntrace wrote earlier --------------------------------------------------------------------
def test_train_refuses_a_damaged_history_before_loading_data(tmp_path, capsys, no_work):
    backup = tmp_path / "runs" / "cnn-backup"
    backup.mkdir(parents=True)
    (backup / "history.json").write_text('["loss", 0.5]')
    line = refused(["train", "cnn", "--out", str(tmp_path / "runs")], capsys)
    assert f"'{backup / 'history.json'}' is not a training history" in line and f"delete {backup}" in line


def test_train_never_overwrites_a_weights_file_of_that_name(tmp_path, capsys, no_work):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "cnn.npz").write_bytes(b"the user's own weights")
    assert cli.main(["train", "cnn", "--out", str(out)]) == 2
    assert "cnn.npz exists" in capsys.readouterr().out.replace("\n", "")  # a long path may wrap
    assert (out / "cnn.npz").read_bytes() == b"the user's own weights"


@pytest.mark.parametrize("records,message", [
    (None, "no experiment results at"),
    ("{not json", "is not valid JSON"),
    ({"key": "x"}, "must be a JSON list of experiment records, got dict"),
    ([{"key": "cnn/a", "group": "cnn", "label": "a"}], "record 0 needs 'kind' (a string), got nothing"),
])
def test_report_only_refuses_damaged_results(tmp_path, records, message, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    if records is not None:
        (out / "experiments.json").write_text(records if isinstance(records, str) else json.dumps(records))
    assert message in refused(["experiments", "--report-only", "--out", str(out)], capsys)


def test_a_results_record_without_its_loss_curve(tmp_path, capsys):
    record = {"key": "cnn_pooling/max pooling", "group": "cnn_pooling", "label": "max pooling", "kind": "cnn",
              "settings": {}, "keras_f1": 0.5, "scratch_f1": 0.5, "agreement": 100.0, "max_prob_diff": 0.0,
              "val_keras_f1": 0.5, "epochs_run": 2, "history": {"val_loss": [1.0, 0.9]}}
    (tmp_path / "experiments.json").write_text(json.dumps([record]))
    line = refused(["experiments", "--report-only", "--out", str(tmp_path)], capsys)
    assert "record 0 needs 'history.loss' (a list of numbers)" in line  # was `nntrace: 'loss'`


def test_the_real_command_prints_one_line_for_a_damaged_model(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"PK\x03\x04 cut short")
    out = subprocess.run([sys.executable, "-m", "nntrace.cli", "trace", str(tmp_path / "m.npz"), "-o", "x.nntrace"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"nntrace: '{tmp_path / 'm.npz'}' is not an nntrace .npz weights file: it is "
                                       f"not a readable zip archive (truncated or another kind of file: File is not "
                                       f"a zip file)"]


def test_the_app_ends_on_sigterm_and_gives_the_terminal_back(tmp_path):
    import os
    import pty
    import select
    import signal
    import time

    path = tiny_cnn().save_weights(tmp_path / "m.npz")
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.environ.update(TERM="xterm-256color", COLUMNS="100", LINES="30", NNTRACE_STATE=str(tmp_path / "state"))
        os.execv(sys.executable, [sys.executable, "-m", "nntrace.cli", "cnn", "--model", str(path)])

    def read_until(done, seconds: float) -> bytes:
        output, deadline = b"", time.time() + seconds
        while time.time() < deadline and not done(output):
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    output += os.read(fd, 65536)
                except OSError:
                    break
        return output

    status = None
    try:
        assert b"conv2d_1" in read_until(lambda out: b"conv2d_1" in out, 60)
        os.kill(pid, signal.SIGTERM)
        restored = read_until(lambda out: b"\x1b[?1049l" in out, 10)
        deadline = time.time() + 10
        while time.time() < deadline and status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(raw) if done else None
            time.sleep(0.05)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert status == 128 + signal.SIGTERM  # ended by the app, not killed by the signal
    assert b"\x1b[?1049l" in restored  # the alternate screen was left: the terminal is usable again


def test_a_keras_layer_name_with_a_bidi_override_is_refused_without_echoing_it():
    import keras

    from nntrace.layers import NNTraceError
    from nntrace.models import load_scratch

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense\u202eevil")])
    with pytest.raises(NNTraceError, match=r"a Dense layer's name holds a control character or a bidi override "
                                           r"\(U\+202E at position 5\)") as info:
        load_scratch(model)
    assert "\u202e" not in str(info.value)


def test_error_messages_reach_the_terminal_without_control_characters(tmp_path, capsys):
    """A message quoting a file's contents (here a path holding ESC and a C1 CSI) prints as text."""
    assert cli.main(["trace", str(tmp_path / "m\x1b[2J\x9b31m.npz"), "-o", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nntrace: ") and "m[2J31m.npz" in err
    assert not any(ch in err for ch in "\x1b\x9b\x07")


def test_a_model_that_overflows_gets_one_note_naming_the_layer(tmp_path, capsys):
    from tests.scratch_models import tiny_cnn

    model = tiny_cnn()
    layer = next(l for l in model.layers if l.name == "predictions")
    layer.set_weights([np.full((64, 3), 3e38, np.float32), np.zeros(3, np.float32)])
    path = model.save_weights(tmp_path / "huge.npz")
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "i.png")
    assert cli.main(["trace", str(path), "--image", str(tmp_path / "i.png"), "-o", str(tmp_path / "t")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["nntrace: note: layer 'predictions' gives infinite or NaN values (float32 overflow, "
                                "or an invalid operation), and so does every layer that reads it"]
