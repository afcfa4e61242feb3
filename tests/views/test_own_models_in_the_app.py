"""Own models in the app: every layer of each graph kind opens, steps and moves its cursor, the
layer list marks each layer ✓ against Keras, and no view fails."""
import asyncio

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
