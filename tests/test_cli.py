"""The `nntrace` command: trace, compare, and clear errors with exit code 2."""
import numpy as np
import pytest

from nntrace import cli
from nntrace.models import load_scratch
from tests.keras_models import small_cnn, small_text_model
from nntrace.tracer.io import load_trace


@pytest.fixture
def cnn_files(tmp_path):
    model = small_cnn()
    keras_path = tmp_path / "m.keras"
    model.save(keras_path)
    load_scratch(model).save_weights(tmp_path / "m.npz")
    return tmp_path / "m.npz"


def test_trace_command_writes_a_replayable_file(tmp_path, cnn_files):
    from PIL import Image
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "img.png")
    out = tmp_path / "run.nntrace"
    assert cli.main(["trace", str(cnn_files), "--image", str(tmp_path / "img.png"), "-o", str(out)]) == 0
    t = load_trace(out)
    assert list(t.recorded_steps) == ["conv"] and len(t.recorded_steps["conv"]) == 8 * 8 * 4
    assert cli.main(["trace", str(cnn_files), "--image", str(tmp_path / "img.png"), "-o", str(out)]) == 2


def test_compare_command_prints_a_passing_table(cnn_files, tmp_path, capsys):
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    assert cli.main(["compare", str(cnn_files), "--image", str(tmp_path / "img.png")]) == 0
    out = capsys.readouterr().out
    assert "conv" in out and "pass" in out and "FAIL" not in out


def test_compare_text_model(tmp_path, capsys):
    model = small_text_model()
    model.save(tmp_path / "t.keras")
    assert cli.main(["compare", str(tmp_path / "t.keras"), "--text", "enak sekali"]) == 0
    assert "Bidirectional" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["trace", "missing.keras", "-o", "x.nntrace"], "no model file"),
    (["compare", "cnn_files", "--image", "nope.png"], "no image file"),
    (["compare", "cnn_files", "--text", "halo"], "this is an image model"),
])
def test_bad_input_exits_2_with_a_message(argv, message, cnn_files, capsys):
    argv = [str(cnn_files) if a == "cnn_files" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unreadable_image(tmp_path, cnn_files, capsys):
    (tmp_path / "bad.png").write_text("not an image")
    assert cli.main(["compare", str(cnn_files), "--image", str(tmp_path / "bad.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_the_first_frame_does_not_wait_for_tensorflow(tmp_path):
    """Opening a session (model, input, trace) from a .npz imports neither TensorFlow nor Keras."""
    import subprocess
    import sys
    from pathlib import Path

    path = load_scratch(small_text_model()).save_weights(tmp_path / "t.npz")
    code = ("import sys, cli; args = cli.build_parser().parse_args(['lstm', '--model', sys.argv[1], '--text', 'enak']);"
            "session, _ = cli.open_session(args); assert session.trace.layers;"
            "print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
