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


@pytest.mark.parametrize("kind,event_kind,heading", [("gru", "gru_step", "GRU forward sweep"),
                                                     ("attention", "attention", "head 0, query 1 'tidak'")])
def test_the_shipped_gru_and_attention_models_open_in_the_app(kind, event_kind, heading, tmp_path, capsys):
    import asyncio
    import json

    from nntrace.models.inputs import PRETRAINED
    from nntrace.tui import NNTraceApp

    text = "Makanannya tidak enak sekali"
    for argv in (["serve", kind], ["grad", kind], ["evaluate", kind], ["trace", kind, "-o", "x"], ["compare", kind]):
        cli.build_parser().parse_args(argv)  # the shipped name is accepted wherever cnn, rnn and lstm are
    session, scratch = cli.open_session(cli.build_parser().parse_args([kind, "--text", text]))
    assert session.keras_path == PRETRAINED / f"{kind}.keras"
    layer = next(name for name, _ in session.trace.layers
                 if session.trace.has_steps(name) and any(e.kind == event_kind for e in session.trace.steps(name)))
    card = json.loads((PRETRAINED / f"{kind}.json").read_text())
    assert card["kind"] == kind and card["agreement"] == 100.0 and card["keras_f1"] == card["scratch_f1"]
    assert card["settings"] == cli.settings_for(kind).to_dict()
    app = NNTraceApp(session, scratch)

    async def run():
        async with app.run_test(size=(80, 24)) as pilot:
            app.replay.go_to(layer, 0)
            app.refresh_view()
            await pilot.press("n", "down")
            await pilot.pause()
            screen = "\n".join("".join(s.text for s in strip) for strip in app.screen._compositor.render_strips())
            assert heading in screen and "cannot show this step" not in screen

    asyncio.run(run())
    assert cli.main(["compare", kind, "--text", text]) == 0
    assert "FAIL" not in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["lesson", "3"], ["cnn", "--model", "{tmp}/m.npz", "--image", "{tmp}/i.png"]])
def test_the_app_without_a_terminal_is_one_line_not_a_spinning_process(tmp_path, argv):
    """Input from /dev/null: the app would wait for keys that never come (it spun at 90% CPU and
    a lesson ignored SIGTERM); it says it needs a terminal and exits 2."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from tests.scratch_models import tiny_cnn

    tiny_cnn().save_weights(tmp_path / "m.npz")
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "i.png")
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-m", "nntrace.cli", *argv], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NNTRACE_STATE": str(tmp_path / "state")})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "nntrace: the app needs a terminal, and standard input and output are not one; `nntrace serve` shows it "
        "in a browser, `nntrace trace` records a pass to a file"]


def test_tensorflow_start_up_lines_stay_off_the_terminal(tmp_path):
    """`grad` loads Keras; TensorFlow's C++ start-up lines (absl, oneDNN) are not printed."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nntrace.cli", "grad", "attention", "--text", "enak sekali"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NNTRACE_STATE": str(tmp_path / "state")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "GradientTape" in done.stdout
    assert done.stderr == ""
