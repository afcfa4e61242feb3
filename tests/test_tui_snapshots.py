"""SVG snapshots of the main screens at 120×40 (pytest-textual-snapshot; `--snapshot-update` to accept)."""
import numpy as np

from tests.scratch_models import tiny_cnn, tiny_lstm
from nntrace.tracer import trace
from nntrace.tui import NNTraceApp, Session


def cnn_app() -> NNTraceApp:
    model = tiny_cnn()
    x = (np.arange(8 * 8 * 3).reshape(1, 8, 8, 3) * 5 % 256).astype(np.float32)
    return NNTraceApp(Session(trace(model, x), "a test pattern"), model)


def lstm_app() -> NNTraceApp:
    model = tiny_lstm()
    return NNTraceApp(Session(trace(model, ["Enak sekali, tidak mahal"]), '"Enak sekali, tidak mahal"'), model)


def test_conv_patch_screen(snap_compare):
    assert snap_compare(cnn_app(), press=["right_square_bracket", "n", "n", "n", "n", "n"], terminal_size=(120, 40))


def test_pooling_screen(snap_compare):
    assert snap_compare(cnn_app(), press=["right_square_bracket"] * 2 + ["n"] * 3, terminal_size=(120, 40))


def test_softmax_screen(snap_compare):
    assert snap_compare(cnn_app(), press=["right_square_bracket"] * 4 + ["n"] * 3, terminal_size=(120, 40))


def test_lstm_gates_screen(snap_compare):
    assert snap_compare(lstm_app(), press=["right_square_bracket"] * 2 + ["n"] * 3, terminal_size=(120, 40))


def test_help_screen(snap_compare):
    assert snap_compare(cnn_app(), press=["question_mark"], terminal_size=(120, 40))
