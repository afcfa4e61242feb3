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
        if app.keras_outputs is not None or "could not" in app.keras_status:
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
            assert app.keras_outputs is not None, app.keras_status
            assert all(ok for _, ok in app.keras_diffs.values())
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
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.environ.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
        os.execv(sys.executable, [sys.executable, "-m", "nntrace.cli", "cnn", "--model", str(tmp_path / "m.npz"),
                                  "--image", str(tmp_path / "img.png")])
    output = b""
    deadline = time.time() + 60
    while time.time() < deadline and b"conv" not in output:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                output += os.read(fd, 65536)
            except OSError:
                break
    assert b"conv" in output, output[-500:]
    os.write(fd, b"q")
    deadline = time.time() + 30
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if select.select([fd], [], [], 0.2)[0]:
            try:
                os.read(fd, 65536)
            except OSError:
                pass
    else:
        os.kill(pid, 9)
        pytest.fail("nntrace did not quit on q")
    assert os.waitstatus_to_exitcode(status) == 0


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
