"""Own models in the app: every layer of each graph kind opens, steps and moves its cursor, the
layer list marks each layer ✓ against Keras, and no view fails."""
import asyncio
import re

import numpy as np
import pytest

from nntrace.models import load_scratch
from nntrace.tracer import trace
from nntrace.tui import NNTraceApp, Session
from tests.models.test_model_kinds import KINDS
from tests.parity import randomise_weights

KEYS = ["n", "down", "right", "greater_than_sign", "up", "left", "n", "n"]


def screen_text(app) -> str:
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_layer_of_an_own_model_opens_in_the_app(kind, tmp_path):
    build, make_input, _ = KINDS[kind]
    model = build()
    randomise_weights(model, 7)
    x = make_input(np.random.default_rng(9))[1:2]
    model.save(tmp_path / "m.keras")
    scratch = load_scratch(load_scratch(tmp_path / "m.keras").save_weights(tmp_path / "m.npz"))
    t = trace(scratch, x)
    t.context["model_input"] = x
    app = NNTraceApp(Session(t, kind, tmp_path / "m.keras"), scratch)
    size = (120, 40) if kind in ("residual_cnn", "tiny_transformer", "bidirectional_gru") else (80, 24)

    async def run():
        async with app.run_test(size=size) as pilot:
            for _ in range(300):
                if app.keras.outputs is not None or "could not" in app.keras.status:
                    break
                await asyncio.sleep(0.1)
            assert app.keras.outputs is not None, app.keras.status
            assert app.keras.diffs and all(ok for _, ok in app.keras.diffs.values()), app.keras.diffs
            kinds = set()
            for index in range(len(t.layers)):
                app.replay.go_layer(index)
                app.refresh_view()
                await pilot.press(*KEYS)
                await pilot.pause()
                event = app.current_event()
                kinds.add(None if event is None else event.kind)
                screen = screen_text(app)
                assert "cannot show this step" not in screen and "unexpected error" not in screen, screen
            assert kinds - {None}, "no layer had steps"

    asyncio.run(run())


def test_depthwise_steps_name_their_input_channel_and_claim_no_output(tmp_path):
    """A separable conv's depthwise stage has channels of its own, no bias and no activation: its
    steps show the intermediate value, not an `out =` line or a Keras value (Keras's output is the
    pointwise stage's). A depthwise filter with depth multiplier 2 reads input channel f // 2."""
    import keras

    from nntrace.views.view_kit import ViewContext  # noqa: F401 — the views render through the app

    inputs = keras.Input((6, 6, 3))
    dw = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(inputs)
    sep = keras.layers.SeparableConv2D(4, 2, activation="tanh", name="sep")(dw)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(sep)))
    randomise_weights(model, 3)
    model.save(tmp_path / "m.keras")
    scratch = load_scratch(model)
    x = np.random.default_rng(4).uniform(-1, 1, (1, 6, 6, 3)).astype(np.float32)
    t = trace(scratch, x)
    t.context["model_input"] = x
    app = NNTraceApp(Session(t, "noise", tmp_path / "m.keras"), scratch)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(300):
                if app.keras.outputs is not None or "could not" in app.keras.status:
                    break
                await asyncio.sleep(0.1)
            assert app.keras.outputs is not None, app.keras.status
            app.replay.go_to("sep", 0)
            app.refresh_view()
            await pilot.pause()
            e = app.current_event()
            assert e.stage == "depthwise"
            screen = screen_text(app)
            assert "depthwise stage, intermediate channel 0 (from input channel 0)" in screen
            assert f"intermediate d = Σ products = {e.value:+.4f}" in screen
            assert not re.search(r"Keras: [+-]?\d", screen) and "out =" not in screen
            pointwise = next(i for i, ev in enumerate(t.recorded_steps.get("sep") or app.replay.events_until("sep", 1 << 30))
                             if ev.stage == "pointwise")
            app.replay.go_to("sep", pointwise)
            app.refresh_view()
            await pilot.pause()
            assert re.search(r"Keras: [+-]?\d", screen_text(app)) and "out = tanh" in screen_text(app)
            app.replay.go_to("dw", 0)
            app.replay.jump("0 0 3")  # row 0, col 0, filter 3: input channel 1
            app.refresh_view()
            await pilot.pause()
            assert app.current_event().filter == 3
            screen = screen_text(app)
            assert "patch ch1" in screen and "Σ products = ch1 =" in screen and "ch0" not in screen

    asyncio.run(run())


def test_a_merge_step_says_where_its_value_sits_and_marks_it():
    """Add and Concatenate over 3-D maps: the flat index is placed in the result's shape, a
    concatenated value is traced to the input it came from, and the strips show a window around
    the selected value with it marked."""
    import keras

    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    added = keras.layers.Add(name="add")([a, b])
    joined = keras.layers.Concatenate(name="cat")([keras.layers.MaxPooling2D(2)(added),
                                                   keras.layers.AveragePooling2D(2)(added)])
    head = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(joined))
    model = keras.Model(inputs, head)
    randomise_weights(model, 5)
    scratch = load_scratch(model)
    x = np.random.default_rng(1).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
    t = trace(scratch, x)
    app = NNTraceApp(Session(t, "noise"), scratch)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            app.replay.go_to("cat", 0)
            app.refresh_view()
            for _ in range(70):  # value 70 of the 4×4×8 result: (2, 0, 6), the average pooling's channel 2
                await pilot.press("right")
            await pilot.pause()
            assert app.replay.unit == 70
            import io

            from rich.console import Console

            console = Console(width=app.query_one("#view").size.width or 100, record=True, file=io.StringIO(),
                              color_system=None)
            console.print(app.view_renderable)  # the panel alone, not the layer list beside it
            screen = " ".join(console.export_text().split())
            out = np.asarray(t.output("cat"))
            assert f"result[70] = {out[2, 0, 6]:+.4f}" in screen
            assert "result[70] is the value at (2, 0, 6) of the 4×4×8 result" in screen
            assert "this one is input 1's value at (2, 0, 2)" in screen
            shown = re.search(r"values (\d+)–(\d+) of 128 in order; white: the selected one", screen)
            assert shown and int(shown[1]) <= 70 <= int(shown[2]) and int(shown[1]) > 0  # a window around it

    asyncio.run(run())
