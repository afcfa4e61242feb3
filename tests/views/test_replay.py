"""The replay model, driven without Textual: layers, steps counted one way, jumps, the cursor."""
import numpy as np
import pytest

from nntrace.tracer import trace
from nntrace.views.replay import JumpError, Replay
from tests.scratch_models import tiny_cnn, tiny_lstm

SENTENCE = "Enak sekali, tidak mahal"  # 4 tokens of 6 positions: 2 padded, 'mahal' out of vocabulary


@pytest.fixture
def cnn() -> Replay:
    model = tiny_cnn()
    x = (np.arange(8 * 8 * 3).reshape(1, 8, 8, 3) * 5 % 256).astype(np.float32)
    return Replay(trace(model, x))


@pytest.fixture
def lstm() -> Replay:
    return Replay(trace(tiny_lstm(), [SENTENCE]))


def go(replay: Replay, layer: str) -> Replay:
    replay.go_layer(replay.names.index(layer))
    return replay


def test_steps_are_counted_the_same_way_as_the_events(cnn):
    go(cnn, "conv2d_1")
    assert cnn.step == 0 and cnn.known_step_count() is None
    events = list(cnn.trace.steps("conv2d_1"))
    assert cnn.step_count() == len(events) == 8 * 8 * 4
    assert cnn.known_step_count() == len(events)
    cnn.jump("step 7")  # steps count from 1 in the UI: step 7 is index 6
    assert cnn.step == 6 and cnn.event.label == events[6].label
    cnn.jump("12")
    assert cnn.event.label == events[11].label


@pytest.mark.parametrize("target", ["step 0", "step -5", "-5", "0", "step 257", "99999"])
def test_a_step_outside_the_layer_is_refused_with_its_range(cnn, target):
    go(cnn, "conv2d_1")
    cnn.jump("step 3")
    with pytest.raises(JumpError, match=r"outside conv2d_1: its steps are 1–256"):
        cnn.jump(target)
    assert cnn.step == 2  # unchanged


def test_row_col_filter_jumps_and_the_cursor_moves_on_the_grid(cnn):
    go(cnn, "conv2d_1")
    assert cnn.jump("3 4 2") == "row 3, col 4, filter 2"
    e = cnn.event
    assert (e.row, e.col, e.filter) == (3, 4, 2)
    cnn.move_cursor(1, 0)
    assert (cnn.event.row, cnn.event.col, cnn.event.filter) == (4, 4, 2)
    cnn.move_cursor(0, -1)
    assert (cnn.event.row, cnn.event.col, cnn.event.filter) == (4, 3, 2)
    cnn.move_channel(1)
    assert (cnn.event.row, cnn.event.col, cnn.event.filter) == (4, 3, 3)
    with pytest.raises(JumpError, match="filter 4 is outside conv2d_1: filters are 0–3"):
        cnn.move_channel(1)
    cnn.jump("filter 0")
    assert (cnn.event.row, cnn.event.col, cnn.event.filter) == (4, 3, 0)
    cnn.jump("0 0 0")
    with pytest.raises(JumpError, match="row -1 is outside"):
        cnn.move_cursor(-1, 0)
    with pytest.raises(JumpError, match="col 8 is outside"):
        cnn.jump("0 8 0")


def test_the_feature_map_so_far_holds_exactly_the_cells_stepped_through(cnn):
    go(cnn, "conv2d_1")
    cnn.jump("2 3 1")
    seen = cnn.feature_map_so_far()
    out = cnn.trace.output("conv2d_1")[..., 1]
    done = ~np.isnan(seen)
    assert done.sum() == 2 * 8 + 3 + 1  # filter-major, row by row: rows 0–1, then cols 0–3 of row 2
    np.testing.assert_allclose(seen[done], out[done], rtol=1e-5, atol=1e-6)


def test_pooling_cursor_and_channels(cnn):
    go(cnn, "max_pool_1")
    cnn.jump("1 2 3")
    e = cnn.event
    assert (e.row, e.col, e.channel) == (1, 2, 3) and e.kind == "pool_window"
    cnn.move_channel(-1)
    assert cnn.event.channel == 2


def test_softmax_selection_and_the_regression_jump_past_the_classes(cnn):
    go(cnn, "predictions")
    while cnn.event.kind != "softmax":
        cnn.move_step(1)
    assert cnn.select_unit(2) == "unit 2" and cnn.unit == 2
    with pytest.raises(JumpError, match="unit 10 is outside predictions: units are 0–2"):
        cnn.jump("unit 10")
    with pytest.raises(JumpError):
        cnn.jump("10")  # a step number past the last step
    cnn.move_cursor(-1, 0)
    assert cnn.unit == 1


def test_dense_units_are_steps(cnn):
    go(cnn, "predictions")
    cnn.jump("unit 2")
    assert cnn.event.kind == "dense_neuron" and cnn.event.unit == 2
    cnn.move_cursor(-1, 0)
    assert cnn.event.unit == 1


def test_recurrent_tokens_units_and_masked_steps(lstm):
    go(lstm, "bidirectional_1")
    assert lstm.jump("token tidak") == "token 2 'tidak'"
    e = lstm.event
    assert e.kind == "lstm_step" and e.time == 2 and e.direction == "forward"
    lstm.jump("unit 2")
    assert lstm.unit == 2
    with pytest.raises(JumpError, match="unit 3 is outside bidirectional_1: units are 0–2"):
        lstm.jump("unit 3")
    lstm.move_cursor(0, 1)
    assert lstm.event.time == 3 and lstm.unit == 2
    lstm.move_cursor(0, 1)
    assert lstm.event.masked and lstm.event.i is None  # position 4 is padding
    with pytest.raises(JumpError, match="'pizza' is not a token"):
        lstm.jump("token pizza")
    with pytest.raises(JumpError, match="positions are 0–5"):
        lstm.jump("token 6")


def test_the_backward_sweep_moves_by_token_position(lstm):
    go(lstm, "bidirectional_1")
    lstm.jump("step 7")  # the backward sweep's first step reads the last position
    e = lstm.event
    assert e.direction == "backward" and e.time == 5
    lstm.move_cursor(0, -1)
    assert lstm.event.direction == "backward" and lstm.event.time == 4
    assert [ev.time for ev in lstm.sweep()] == [5, 4, 3, 2, 1, 0]


def test_regression_jump_on_the_merge_step_is_a_message_not_a_crash(lstm):
    go(lstm, "bidirectional_1")
    lstm.jump("step 13")
    assert lstm.event.kind == "bidirectional_merge"
    with pytest.raises(JumpError, match="does not step through tokens"):
        lstm.jump("token 2")
    with pytest.raises(JumpError, match="unit 128 is outside"):
        lstm.jump("unit 128")
    with pytest.raises(JumpError, match="outside bidirectional_1: its steps are 1–13"):
        lstm.jump("128")
    assert lstm.select_unit(5) == "unit 5"  # concat of 3 + 3 units


@pytest.mark.parametrize("text", ["", "row", "1 2 3 4", "unit x", "token"])
def test_unreadable_jumps_say_what_to_type(cnn, text):
    go(cnn, "conv2d_1")
    with pytest.raises(JumpError):
        cnn.jump(text)


def test_next_runs_into_the_next_layer_and_previous_stops_at_the_first_step(cnn):
    go(cnn, "flatten")
    assert cnn.event.kind == "flatten_map"
    assert cnn.move_step(1) is None and cnn.layer[0] == "predictions" and cnn.step == 0
    assert "first step" in cnn.move_step(-1)
    assert cnn.layer[0] == "predictions"


def test_a_new_sentence_keeps_the_layer_and_restarts_its_steps(lstm):
    go(lstm, "bidirectional_1")
    lstm.jump("step 3")
    lstm.set_trace(trace(tiny_lstm(), ["tidak enak"]))
    assert lstm.layer[0] == "bidirectional_1" and lstm.step == 0
    assert lstm.event.time == 0 and lstm.trace.context["tokens"][0] == "tidak"
