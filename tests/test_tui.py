"""The app, driven with Textual's pilot: keys move through the trace and the screen shows its values."""
import asyncio
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nntrace.models import load_scratch
from tests.keras_models import small_cnn, small_text_model
from nntrace.tracer import trace
from nntrace.tracer.io import save_trace
from nntrace.tui import NNTraceApp, Session
from nntrace.views.formulas import num

ROOT = Path(__file__).resolve().parents[1]


def session_for(model, x, tmp_path, name):
    model.save(tmp_path / f"{name}.keras")
    scratch = load_scratch(model)
    path = scratch.save_weights(tmp_path / f"{name}.npz")
    scratch = load_scratch(path)
    t = trace(scratch, x)
    t.context["model_input"] = x
    return Session(t, "test input", tmp_path / f"{name}.keras"), scratch


async def wait_for_keras(app, pilot, seconds=60):
    for _ in range(seconds * 10):
        if app.keras.outputs is not None or "could not" in app.keras.status:
            break
        await asyncio.sleep(0.1)
    await pilot.pause()


def as_text(renderable) -> str:
    from rich.console import Console

    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text()


def view_text(app) -> str:
    """The main panel as plain text, rendered the way the terminal shows it."""
    return as_text(app.view_renderable)


def test_stepping_through_a_convolution(tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    session, scratch = session_for(small_cnn(), x, tmp_path, "cnn")
    app = NNTraceApp(session, scratch)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("right_square_bracket", "n", "n")
            assert app.layer == ("conv", "Conv2D") and app.step == 2
            event = app.current_event()
            expected = list(session.trace.steps("conv"))[2]
            assert (event.row, event.col, event.filter) == (expected.row, expected.col, expected.filter)
            assert event.value == expected.value
            assert num(expected.value) in view_text(app)
            await pilot.press("p")
            assert app.step == 1
            await pilot.press("j")
            await pilot.press(*"3 4 2", "enter")
            e = app.current_event()
            assert (e.row, e.col, e.filter) == (3, 4, 2)
            await wait_for_keras(app, pilot)
            assert app.keras.outputs is not None, app.keras.status
            assert all(ok for _, ok in app.keras.diffs.values())
            assert "Keras: " in view_text(app)
            await pilot.press("g")
            assert app.screen.__class__.__name__ == "GalleryScreen"
            gallery = as_text(app.screen.text)
            assert "4 feature maps" in gallery and "scratch | Keras" in gallery and "channel 3" in gallery
            await pilot.press("escape")
            await pilot.press("k")
            assert "Keras: " not in view_text(app)
            await pilot.press("question_mark")
            assert app.screen.__class__.__name__ == "HelpScreen"
            await pilot.press("escape")
            # the last layer: probabilities from the softmax step, scratch beside Keras
            await pilot.press("k", *["right_square_bracket"] * 10)
            assert app.layer[0] == "out"
            while app.current_event() is not None and app.current_event().kind != "softmax":
                await pilot.press("n")
            probs = app.current_event().probabilities
            np.testing.assert_allclose(probs, session.trace.probabilities, rtol=1e-6)
            assert f"{probs.max():.4f}" in view_text(app)

    asyncio.run(run())


def test_lstm_gates_per_token_and_new_sentence(tmp_path):
    session, scratch = session_for(small_text_model(), ["enak sekali"], tmp_path, "lstm")
    app = NNTraceApp(session, scratch)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            names = [n for n, _ in session.trace.layers]
            bi = next(i for i, (_, c) in enumerate(session.trace.layers) if c == "Bidirectional")
            await pilot.press(*["right_square_bracket"] * bi, "n")
            event = app.current_event()
            assert event.kind == "lstm_step" and event.time == 1 and event.direction == "forward"
            assert "'sekali'" in view_text(app)
            await pilot.press("j")
            await pilot.press("5", "enter")  # step 5 reads a padded token: masked, state carried over
            assert app.current_event().masked and "masked" in view_text(app)
            await pilot.press("t")
            await pilot.press(*"buruk", "enter")
            assert session.trace is not app.trace and app.trace.context["tokens"][0] == "buruk"
            assert names == [n for n, _ in app.trace.layers]

    asyncio.run(run())


def test_replay_without_the_model(tmp_path):
    x = np.random.default_rng(1).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    session, _ = session_for(small_cnn(), x, tmp_path, "cnn")
    path = save_trace(session.trace, tmp_path / "run.nntrace")
    from nntrace.tracer.io import load_trace
    replay = load_trace(path)
    app = NNTraceApp(Session(replay, "replay"))

    async def run():
        async with app.run_test(size=(80, 24)) as pilot:  # a small terminal degrades, never crashes
            await pilot.press("right_square_bracket", "n", "n", "n")
            assert app.current_event().kind == "conv_patch" and app.step == 3
            await pilot.press("right_square_bracket", "n")
            assert app.current_event() is None and "output" in view_text(app)  # not recorded: summary

    asyncio.run(run())


def test_the_real_command_starts_and_quits_in_a_terminal(tmp_path):
    """Runs `nntrace cnn` in a pseudo-terminal, waits for the first frame, presses q."""
    model = small_cnn()
    model.save(tmp_path / "m.keras")
    load_scratch(model).save_weights(tmp_path / "m.npz")
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    output, code = run_in_pty(["cnn", "--model", str(tmp_path / "m.npz"), "--image", str(tmp_path / "img.png")],
                              ROOT, dict(os.environ), b"conv", 60)
    assert b"conv" in output, output[-500:]
    assert code == 0, "nntrace did not quit on q" if code is None else code


@pytest.mark.parametrize("argv,message", [
    (["cnn", "--model", "missing.npz"], "no model file"),
    (["lstm", "--model", "MODEL", "--text", "   "], "the sentence is empty"),
])
def test_bad_input_before_the_app_starts(argv, message, tmp_path, capsys):
    from nntrace import cli
    path = load_scratch(small_text_model()).save_weights(tmp_path / "t.npz")
    argv = [str(path) if a == "MODEL" else a for a in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def screen_text(app) -> str:
    """The whole composed screen as the terminal shows it."""
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


def tiny_lstm_app():
    from tests.scratch_models import tiny_lstm
    model = tiny_lstm()
    return NNTraceApp(Session(trace(model, ["Enak sekali, tidak mahal"]), "test"), model)


def tiny_cnn_app():
    from tests.scratch_models import tiny_cnn
    model = tiny_cnn()
    x = (np.arange(8 * 8 * 3).reshape(1, 8, 8, 3) * 5 % 256).astype(np.float32)
    t = trace(model, x)
    t.context.update(model_input=x, true_label=2)
    return NNTraceApp(Session(t, "a test pattern"), model)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_cursor_to_a_unit_and_token_shows_its_gate_formulas(size):
    app = tiny_lstm_app()

    async def run():
        async with app.run_test(size=size) as pilot:
            await pilot.press("right_square_bracket", "right_square_bracket")
            assert app.current_event().time == 0
            await pilot.press("right", "right", "down", "down")  # token 2 ('tidak'), unit 2
            await pilot.pause()
            e = app.current_event()
            assert (e.kind, e.direction, e.time, app.replay.unit) == ("lstm_step", "forward", 2, 2)
            screen = screen_text(app)
            assert "token 2 'tidak'" in screen and "unit 2" in screen
            f_line = next(line[line.index("f = σ("):] for line in screen.splitlines() if "f = σ(" in line)
            assert f_line.rstrip().endswith(f"= {e.f[2]:.4f}")
            assert f"σ({num(e.pre_activation[1, 2])})" in f_line
            assert f"c = f·c_prev + i·g = {e.f[2]:.4f}·" in screen
            assert f"= {num(e.h[2])}" in screen
            await pilot.press("right", "right")  # position 4 is padding
            await pilot.pause()
            screen = screen_text(app)
            assert app.current_event().masked and "is masked (padding)" in screen
            assert f"h = h_prev = {num(app.current_event().h[2])}" in screen and "σ(" not in screen

    asyncio.run(run())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_cursor_to_a_conv_cell_shows_its_sums(size):
    app = tiny_cnn_app()

    async def run():
        async with app.run_test(size=size) as pilot:
            await pilot.press("right_square_bracket", "j")
            await pilot.press(*"2 5 1", "enter")
            await pilot.press("down", "left", "greater_than_sign")
            await pilot.pause()
            e = app.current_event()
            assert (e.row, e.col, e.filter) == (3, 4, 2)
            screen = screen_text(app)
            assert "filter 2 at output row 3, col 4" in screen
            assert f"z = Σ products + bias = {num(e.total)} + {e.bias:.4f} = {num(e.pre_activation)}" in screen
            assert f"relu({num(e.pre_activation)}) = {num(e.value)}" in screen

    asyncio.run(run())


def test_the_cnn_app_shows_the_input_picture_with_its_true_label():
    app = tiny_cnn_app()

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            assert "the input picture, true label: ship" in screen_text(app)

    asyncio.run(run())


def test_regression_jump_128_on_the_merge_step_and_unit_10_on_the_softmax():
    """Both crashed the app with an AttributeError; now each is a one-line message."""
    app = tiny_lstm_app()

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("right_square_bracket", "right_square_bracket", "j", *"13", "enter")
            assert app.current_event().kind == "bidirectional_merge"
            await pilot.press("j", *"128", "enter")
            await pilot.pause()
            assert "step 128 is outside bidirectional_1: its steps are 1–13" in screen_text(app)
            await pilot.press("j", *"token 1", "enter")
            await pilot.pause()
            assert "does not step through tokens" in screen_text(app)
            await pilot.press("right_square_bracket", "n", "n", "n")
            assert app.current_event().kind == "softmax"
            await pilot.press("j", *"unit 10", "enter")
            await pilot.pause()
            assert "unit 10 is outside predictions: units are 0–2" in screen_text(app)
            await pilot.press("j", *"-5", "enter")
            await pilot.pause()
            assert "step -5 is outside predictions" in screen_text(app)
            assert app.is_running

    asyncio.run(run())


def test_an_unexpected_error_in_an_action_is_logged_and_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("NNTRACE_STATE", str(tmp_path))
    app = tiny_cnn_app()

    def broken(*_):
        raise RuntimeError("planted failure")

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            monkeypatch.setattr(app.replay, "move_step", broken)
            await pilot.press("n")
            await pilot.pause()
            assert "unexpected error: planted failure" in screen_text(app) and app.is_running

    asyncio.run(run())
    log = (tmp_path / "nntrace.log").read_text()
    assert "Traceback" in log and "RuntimeError: planted failure" in log


def test_an_error_outside_the_guarded_actions_stops_the_app_non_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("NNTRACE_STATE", str(tmp_path))
    app = tiny_cnn_app()
    monkeypatch.setattr(NNTraceApp, "action_help", lambda self: 1 / 0)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()

    with pytest.raises(ZeroDivisionError):
        asyncio.run(run())
    assert app.return_code == 1
    assert "ZeroDivisionError" in (tmp_path / "nntrace.log").read_text()


def test_tensorflow_never_writes_on_the_screen(tmp_path):
    """The real command in a pseudo-terminal, until Keras (TensorFlow) has loaded and compared."""
    model = small_text_model()
    model.save(tmp_path / "t.keras")
    load_scratch(model).save_weights(tmp_path / "t.npz")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # TensorFlow at its loudest
    env.update(NNTRACE_STATE=str(state), TF_CPP_MIN_LOG_LEVEL="0")
    output, _ = run_in_pty(["lstm", "--model", str(tmp_path / "t.npz"), "--text", "enak sekali"], tmp_path, env,
                           b"every layer matches", 120)
    assert b"every layer matches" in output, output[-800:]
    for noise in (b"absl", b"oneDNN", b"tensorflow", b"I0000", b"WARNING"):
        assert noise not in output
    log = (state / "nntrace.log").read_text(errors="replace")
    assert log.strip(), "TensorFlow's messages should be in the log"


def test_control_characters_in_a_sentence_never_reach_the_screen():
    """An OSC title sequence and a clear-screen in the text and description are shown as plain text."""
    from tests.scratch_models import tiny_lstm
    model = tiny_lstm()
    hostile = "enak \x1b]0;pwned\x07 \x1b[2J [/]oops sekali"
    app = NNTraceApp(Session(trace(model, [hostile]), f'"{hostile}"'), model)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            seen = []
            for keys in ([], ["right_square_bracket"], ["right_square_bracket"], ["j", *"step 13", "enter"],
                         ["t", *"ok \x1b[2J", "enter"]):
                await pilot.press(*keys)
                await pilot.pause()
                seen.append(screen_text(app))
            assert all("\x1b" not in s and "\x07" not in s for s in seen)
            assert "[/]oops" in seen[0] or "oops" in seen[0]

    asyncio.run(run())


def run_in_pty(argv: list[str], cwd, env: dict, until: bytes, seconds: float) -> tuple[bytes, int | None]:
    """`python -m nntrace.cli ARGV` in a 120×40 pseudo-terminal: read until `until` appears (or
    `seconds` pass), press q, and wait for the exit. Returns (everything written, exit code or None
    when it did not quit within 30 s)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "nntrace.cli", *argv],
                  {**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    output = b""
    deadline = time.time() + seconds
    while time.time() < deadline and until not in output:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                output += os.read(fd, 65536)
            except OSError:
                break
    os.write(fd, b"q")
    deadline = time.time() + 30
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return output, os.waitstatus_to_exitcode(status)
        if select.select([fd], [], [], 0.2)[0]:
            try:
                output += os.read(fd, 65536)
            except OSError:
                pass
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return output, None
