"""The PNG export draws the pictures the screen shows, with the same scales and axes."""
import numpy as np
from PIL import Image

from nntrace.tracer import trace
from nntrace.views.export import export_png
from nntrace.views.render import Scale
from nntrace.views.replay import Replay
from nntrace.views.step_views import ViewContext, view_for
from tests.scratch_models import tiny_cnn, tiny_lstm


def lstm_context(step: str) -> ViewContext:
    replay = Replay(trace(tiny_lstm(), ["Enak sekali, tidak mahal"]))
    replay.go_layer(replay.names.index("bidirectional_1"))
    replay.jump(step)
    replay.jump("unit 1")
    return ViewContext(replay, replay.event, None, 100)


def test_an_lstm_step_exports_units_by_tokens_heatmaps_with_gate_scales(tmp_path):
    ctx = lstm_context("step 5")  # forward sweep, position 4: a padded (masked) token
    maps = view_for(ctx.event).heatmaps(ctx)
    assert [m.title for m in maps] == ["i", "f", "g", "o", "c", "h"]
    by = {m.title: m for m in maps}
    for gate in "ifo":
        assert by[gate].scale == Scale(0.0, 1.0, "sequential")
    assert by["g"].scale == by["h"].scale == Scale(-1.0, 1.0, "diverging")
    assert by["c"].scale.kind == "diverging" and by["c"].scale.lo == -by["c"].scale.hi
    assert by["i"].col_labels == ["enak", "sekali", "tidak", "mahal", "[pad]", "[pad]"]
    assert by["i"].values.shape == (3, 6) and (by["i"].rows, by["i"].cols) == ("unit", "token")
    assert np.isnan(by["i"].values[:, 4]).all()          # a masked step has no gates
    np.testing.assert_array_equal(by["h"].values[:, 4], ctx.event.h)  # h carried over is shown
    assert np.isnan(by["i"].values[:, 5]).all()          # not read yet
    assert by["i"].mark == (1, 4)
    path = export_png(ctx, tmp_path)
    image = Image.open(path)
    assert path.parent == tmp_path and image.width > 4 * image.height  # six panels side by side
    assert not list(tmp_path.glob("*.tmp"))


def test_a_conv_patch_exports_its_patch_kernel_products_and_the_map_so_far(tmp_path):
    model = tiny_cnn()
    x = (np.arange(8 * 8 * 3).reshape(1, 8, 8, 3) * 5 % 256).astype(np.float32)
    replay = Replay(trace(model, x))
    replay.go_layer(1)
    replay.jump("3 4 2")
    ctx = ViewContext(replay, replay.event, None, 100)
    maps = view_for(ctx.event).heatmaps(ctx)
    assert [m.title for m in maps] == ["patch ch0", "kernel ch0", "products ch0", "filter 2 so far"]
    np.testing.assert_array_equal(maps[2].values, ctx.event.products[..., 0])
    so_far = maps[3].values
    assert np.isfinite(so_far[3, 4]) and np.isnan(so_far[3, 5]) and maps[3].mark == (3, 4)
    assert Image.open(export_png(ctx, tmp_path)).width > 1000
