"""The backward pass in the app: `b` switches to it and back, `l` picks the label, every backward
view is reached by the keys, and every equation it prints is true to its printed digits (the
checker of `test_screen_arithmetic`), at 120×40 and 80×24. The recurrent view's equations are also
checked structurally: the δh it prints is the sum of its printed parts, and the norms chart is
the event's."""
from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from nntrace.tracer import trace
from nntrace.tui import NNTraceApp, Session
from tests.scratch_models import tiny_cnn, tiny_lstm
from tests.views.test_screen_arithmetic import check_equation, panel_lines, wrap_problem

SIZES = [(120, 40), (80, 24)]


def cnn_app():
    model = tiny_cnn()
    x = (np.arange(8 * 8 * 3).reshape(1, 8, 8, 3) * 7 % 256).astype(np.float32)
    t = trace(model, x)
    t.context["model_input"] = x
    return NNTraceApp(Session(t, "a test pattern"), model)


def lstm_app():
    model = tiny_lstm()
    text = "Enak sekali, tidak mahal"
    t = trace(model, [text])
    t.context["model_input"] = [text]
    return NNTraceApp(Session(t, '"Enak sekali"'), model)


def checked_lines(app) -> tuple[int, list[str]]:
    """(how many numeric equations, the problems) of the panel's whole content."""
    count, problems = 0, []
    for line in panel_lines(app):
        if " = " not in line:
            continue
        n, error = check_equation(line)
        count += n >= 2
        if error:
            problems.append(f"{line.strip()}: {error}")
        wrapped = wrap_problem(line)
        if wrapped and "=" in line:
            problems.append(f"{line.strip()}: {wrapped}")
    return count, problems


async def visit(app, pilot, keys: list[str], seen: dict, kinds: set) -> None:
    for key in keys:
        await pilot.press(key)
        await pilot.pause()
        e = app.current_event()
        kind = "summary" if e is None else e.kind
        kinds.add(kind)
        n, problems = checked_lines(app)
        seen["equations"] += n
        seen["problems"] += [f"{app.layer[0]} step {app.step + 1} ({kind}): {p}" for p in problems]


@pytest.mark.parametrize("size", SIZES)
def test_every_backward_view_of_a_cnn_prints_true_equations(size):
    app = cnn_app()
    seen, kinds = {"equations": 0, "problems": []}, set()

    async def run():
        async with app.run_test(size=size) as pilot:
            assert not app.trace.backward
            await visit(app, pilot, ["b"], seen, kinds)
            assert app.trace.backward and app.layer == ("loss", "Loss")
            assert "backward pass against class" in app.message
            await visit(app, pilot, ["down", "down", "right_square_bracket", "n", "down"], seen, kinds)
            assert app.layer[0] == "predictions"
            await visit(app, pilot, ["right_square_bracket"] * 2 + ["n", "right"], seen, kinds)  # pooling
            assert app.current_event().kind == "pool_routing"
            await visit(app, pilot, ["right_square_bracket", "right", "down", "n", "greater_than_sign"], seen, kinds)
            assert app.current_event().kind == "conv_kernel_gradient" and app.current_event().filter == 1
            await visit(app, pilot, ["j"], seen, kinds)
            await pilot.press(*"step 120", "enter")  # past the 4·27 kernel weights: input cells
            await pilot.pause()
            await visit(app, pilot, ["down", "right"], seen, kinds)
            assert app.current_event().kind == "conv_input_gradient"
            await visit(app, pilot, ["right_square_bracket"] * 2 + ["right", "down"], seen, kinds)
            assert app.layer == ("input", "Input") and app.current_event().kind == "saliency"
            await visit(app, pilot, ["b"], seen, kinds)
            assert not app.trace.backward and app.layer[0] == "rescaling"

    asyncio.run(run())
    assert {"loss_gradient", "dense_gradient", "pool_routing", "conv_kernel_gradient", "conv_input_gradient",
            "saliency", "summary"} <= kinds
    assert not seen["problems"], "\n".join(seen["problems"][:10])
    assert seen["equations"] >= 10


@pytest.mark.parametrize("size", SIZES)
def test_backpropagation_through_time_in_the_app(size):
    app = lstm_app()
    seen, kinds = {"equations": 0, "problems": []}, set()

    async def run():
        async with app.run_test(size=size) as pilot:
            await visit(app, pilot, ["b", "right_square_bracket", "right_square_bracket"], seen, kinds)
            assert app.layer[0] == "bidirectional_1"
            assert app.current_event().masked  # the last position is padding: BPTT starts there
            await pilot.press("j")
            await pilot.press(*"token 3", "enter")
            await pilot.pause()
            e = app.current_event()
            assert e.kind == "recurrent_gradient" and e.cell == "lstm"
            lines = "\n".join(panel_lines(app))
            u = app.replay.unit
            dh = re.search(r"δh = from the output \+ from step t\+1 = (\S+) ([+−]) (\S+) = (\S+)", lines)
            assert dh, lines[:800]
            assert float(dh.group(4)) == pytest.approx(float(e.dh[u]), abs=6e-5)
            assert f"{e.norm:.4f}" in lines  # the per-token norm of this step, from the event
            await visit(app, pilot, ["down", "left", "n", "n", "n", "n", "n", "n"], seen, kinds)
            masked = [ev for ev in app.replay.sweep() if ev.masked]
            assert masked  # the sentence is shorter than the sequence: padded steps pass gradients through
            await pilot.press("j")
            await pilot.press(*f"token {masked[0].time}", "enter")
            await pilot.pause()
            assert app.current_event().masked
            assert "pass through unchanged" in " ".join(panel_lines(app))
            await visit(app, pilot, ["l"], seen, kinds)
            await pilot.press(*"2", "enter")
            await pilot.pause()
            assert app.trace.context["label"] == 2
            loss = next(ev for ev in app.trace.events if ev.kind == "loss_gradient")
            assert loss.label == 2 and loss.onehot[2] == 1
            await pilot.press("l")
            await pilot.press(*"7", "enter")
            await pilot.pause()
            assert "outside this model" in app.message and app.trace.context["label"] == 2

    asyncio.run(run())
    assert "recurrent_gradient" in kinds
    assert not seen["problems"], "\n".join(seen["problems"][:10])
    assert seen["equations"] >= 8


def test_a_new_sentence_in_the_backward_pass_retraces_both_passes():
    app = lstm_app()

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("b")
            await pilot.pause()
            first = app.trace
            await pilot.press("t")
            await pilot.press(*"tidak enak", "enter")
            await pilot.pause()
            assert app.trace.backward and app.trace is not first
            assert app.trace.context["text"] == "tidak enak"
            await pilot.press("b")
            await pilot.pause()
            assert not app.trace.backward and app.trace.context["text"] == "tidak enak"

    asyncio.run(run())


def test_a_replayed_trace_without_a_backward_pass_says_so():
    model = tiny_cnn()
    x = np.zeros((1, 8, 8, 3), np.float32)
    t = trace(model, x)
    t.model = None  # as read from a file
    app = NNTraceApp(Session(t, "a file"), None)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("b")
            await pilot.pause()
            assert not app.trace.backward and "no backward pass" in app.message

    asyncio.run(run())


def test_v_shows_the_gradient_per_token_of_the_shipped_simplernn_beside_the_lstm():
    from nntrace.models import load_scratch
    from nntrace.models.backward_trace import trace_backward
    from nntrace.views.gradient_flow import FlowScreen, token_norms
    from tests.views.test_screen_arithmetic import Console

    import io

    app = lstm_app()
    sentence = app.trace.context["text"]

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("v")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, FlowScreen)
            console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
            console.print(screen.text)
            return console.export_text()

    text = asyncio.run(run())
    for kind in ("simple_rnn", "lstm"):
        t = trace_backward(load_scratch(f"models/pretrained/{kind}.npz"), [sentence])
        norms = token_norms(t)
        assert len(norms) == len(t.context["tokens"])
        real = [e for e in norms.values() if t.context["tokens"][e.time]]
        assert len(real) == 4
        for e in real:
            assert f"{e.norm:.4f}" in text
    assert "SimpleRNN" in text and "LSTM" in text


def test_v_on_an_image_model_says_what_it_is_for():
    app = cnn_app()

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("v")
            await pilot.pause()
            return app.message

    assert "text model" in asyncio.run(run())


def test_a_model_whose_backward_pass_is_refused_says_so_in_one_line(monkeypatch):
    from nntrace.layers import Dense
    from nntrace.layers.errors import UnsupportedLayerError

    def refuse(self, *args, **kwargs):
        raise UnsupportedLayerError(self.name, "Dense", ["Conv2D"], "has no backward pass yet")

    monkeypatch.setattr(Dense, "backward_pre_activation", refuse)
    app = cnn_app()

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("b")
            await pilot.pause()
            return app.message, app.trace.backward

    message, backward = asyncio.run(run())
    assert not backward
    assert message.startswith("no backward pass for this model") and "predictions" in message
    assert "unexpected" not in message


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_backward_equations_are_true(reset_after):
    from nntrace.layers import GRU, Dense, Embedding
    from nntrace.models.scratch import ScratchModel

    rng = np.random.default_rng(2)
    emb = Embedding("emb", input_dim=9, output_dim=4, mask_zero=True)
    emb.set_weights([rng.normal(size=(9, 4)).astype(np.float32)])
    gru = GRU("gru", units=3, reset_after=reset_after)
    gru.set_weights([rng.normal(size=(4, 9)).astype(np.float32), rng.normal(size=(3, 9)).astype(np.float32),
                     rng.normal(size=(2, 9) if reset_after else (9,)).astype(np.float32)])
    head = Dense("head", units=3, activation="softmax")
    head.set_weights([rng.normal(size=(3, 3)).astype(np.float32), np.zeros(3, np.float32)])
    model = ScratchModel([emb, gru, head], name="gru")
    x = np.array([[3, 5, 1, 7, 0]], np.int32)
    t = trace(model, x)
    t.context["model_input"] = x
    app = NNTraceApp(Session(t, "ids"), model)
    seen, kinds = {"equations": 0, "problems": []}, set()

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await visit(app, pilot, ["b", "right_square_bracket", "right_square_bracket"], seen, kinds)
            assert app.layer[0] == "gru"
            await visit(app, pilot, ["n", "n", "down", "n", "down", "n"], seen, kinds)
            return " ".join(panel_lines(app))

    text = asyncio.run(run())
    assert "δz = δh·(h_prev − h̃)·σ'" in text and ("δr = δh̃·(h_prev·U_h + rb_h)·σ'" in text) == reset_after
    assert not seen["problems"], "\n".join(seen["problems"][:10])
    assert seen["equations"] >= 12
