"""The backward section of a trace file: `save_trace(…, backward=)` writes it, `load_traces` reads
it back event by event, the app replays it with `b`, every hostile edit of a backward field is
refused with the reader's one-line TraceFormatError, and `nntrace trace --backward` records it."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from nntrace import cli
from nntrace.models.backward_trace import trace_backward
from nntrace.tracer import trace
from nntrace.tracer.events import event_fields
from nntrace.tracer.io import (BACKWARD_KINDS, TraceExistsError, TraceFormatError, arrays_path, load_trace,
                               load_traces, save_trace)
from tests.scratch_models import tiny_cnn, tiny_lstm

IMAGE = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
TEXT = ["tidak enak sekali"]


def pair(kind: str):
    model, x = (tiny_cnn(), IMAGE) if kind == "cnn" else (tiny_lstm(), TEXT)
    return trace(model, x), trace_backward(model, x, label=1)


@pytest.fixture
def cnn_file(tmp_path) -> Path:
    forward, backward = pair("cnn")
    return save_trace(forward, tmp_path / "cnn.nntrace", everything=True, backward=backward)


@pytest.fixture
def lstm_file(tmp_path) -> Path:
    forward, backward = pair("lstm")
    return save_trace(forward, tmp_path / "lstm.nntrace", everything=True, backward=backward)


def read_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def edit(path: Path, change) -> Path:
    lines = read_lines(path)
    change(lines)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def backward_line(lines: list, kind: str, **match) -> dict:
    return next(line for line in lines[1:] if line.get("pass") == "backward" and line["kind"] == kind
                and all(line.get(k) == v for k, v in match.items()))


def set_array(path: Path, key: str, value: np.ndarray) -> None:
    npz = arrays_path(path)
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = value
    with npz.open("wb") as f:
        np.savez(f, **arrays)


def array_of(path: Path, line: dict, name: str) -> tuple[str, np.ndarray]:
    key = line[name]["$array"]
    with np.load(arrays_path(path)) as data:
        return key, data[key]


def same_event(a, b) -> None:
    assert type(a) is type(b)
    fa, fb = event_fields(a), event_fields(b)
    assert fa.keys() == fb.keys()
    for name, value in fa.items():
        other = fb[name]
        if isinstance(value, np.ndarray):
            assert isinstance(other, np.ndarray) and value.shape == other.shape, (a.kind, name)
            assert value.dtype == other.dtype and np.array_equal(value, other, equal_nan=True), (a.kind, name)
        elif isinstance(value, tuple):
            assert tuple(other) == value, (a.kind, name)
        else:
            assert other == value, (a.kind, name)


# -- round trip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cnn", "lstm"])
def test_round_trip_field_by_field(kind, tmp_path):
    forward, backward = pair(kind)
    path = save_trace(forward, tmp_path / "run.nntrace", everything=True, backward=backward)
    f, b = load_traces(path)
    assert f.direction == "forward" and f.layers == forward.layers
    assert b.backward and b.model is None and b.layers == backward.layers
    assert b.context["label"] == 1 and b.context["loss"] == pytest.approx(backward.context["loss"])
    assert b.context["labels"] == forward.context["labels"]
    assert len(b.events) == len(backward.events)
    for a, c in zip(backward.events, b.events):
        same_event(a, c)
    expected = [n for n, _ in backward.layers if backward.has_steps(n)]
    assert list(b.recorded_steps) == expected
    for name in expected:
        mine, theirs = list(backward.steps(name)), list(b.steps(name))
        assert len(mine) == len(theirs) > 0
        for a, c in zip(mine, theirs):
            same_event(a, c)
    kinds = {e.kind for steps in b.recorded_steps.values() for e in steps}
    want = {"loss_gradient", "dense_gradient", "pool_routing", "conv_kernel_gradient", "conv_input_gradient",
            "saliency"} if kind == "cnn" else {"loss_gradient", "dense_gradient", "recurrent_gradient"}
    assert kinds == want
    assert load_trace(path).layers == forward.layers  # load_trace reads (and checks) the whole file


def test_default_backward_steps_are_the_first_conv_layers(tmp_path):
    forward, backward = pair("cnn")
    path = save_trace(forward, tmp_path / "run.nntrace", backward=backward)
    header = read_lines(path)[0]
    assert header["fine_layers"] == ["conv2d_1"] and header["backward"]["fine_layers"] == ["conv2d_1"]
    _, b = load_traces(path)
    assert list(b.recorded_steps) == ["loss", "conv2d_1", "input"]
    # a chosen layer without backward steps is simply not in the backward section
    path = save_trace(forward, tmp_path / "flat.nntrace", layers=["flatten"], backward=backward)
    assert read_lines(path)[0]["backward"]["fine_layers"] == []


def test_a_file_without_backward_section_loads_none(tmp_path):
    forward, _ = pair("cnn")
    assert load_traces(save_trace(forward, tmp_path / "f.nntrace"))[1] is None


def test_save_refuses_to_overwrite_and_swapped_traces(tmp_path):
    forward, backward = pair("cnn")
    path = save_trace(forward, tmp_path / "run.nntrace", backward=backward)
    before = path.read_bytes()
    with pytest.raises(TraceExistsError):
        save_trace(forward, path, backward=backward)
    assert path.read_bytes() == before
    with pytest.raises(ValueError):
        save_trace(backward, tmp_path / "other.nntrace")
    with pytest.raises(ValueError):
        save_trace(forward, tmp_path / "other.nntrace", backward=forward)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.nntrace", "run.nntrace.npz"]


# -- the app --------------------------------------------------------------------------------------
def screen_text(app) -> str:
    return "\n".join("".join(s.text for s in strip) for strip in app.screen._compositor.render_strips())


@pytest.mark.parametrize("kind", ["cnn", "lstm"])
def test_recorded_backward_pass_replays_with_b(kind, tmp_path):
    from nntrace.tui import NNTraceApp, Session

    forward, backward = pair(kind)
    f, b = load_traces(save_trace(forward, tmp_path / "run.nntrace", everything=True, backward=backward))
    app = NNTraceApp(Session(f, "replay", None, "replaying", backward_trace=b))

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("b")
            await pilot.pause()
            assert app.trace is b and "backward pass against class 1" in app.message
            for name, _ in b.layers:
                if b.has_steps(name):
                    app.replay.go_to(name, 0)
                    app.refresh_view()
                    await pilot.press("n")
                    await pilot.pause()
                    assert "unexpected error" not in (app.message or "")
                    assert "cannot show this step" not in screen_text(app)
            await pilot.press("b")
            await pilot.pause()
            assert app.trace is f

    asyncio.run(run())


def test_b_without_a_backward_section_says_so(tmp_path):
    from nntrace.tui import NNTraceApp, Session

    forward, _ = pair("cnn")
    app = NNTraceApp(Session(load_trace(save_trace(forward, tmp_path / "f.nntrace")), "replay"))

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("b")
            await pilot.pause()
            assert "holds no backward pass" in app.message and not app.trace.backward

    asyncio.run(run())


# -- hostile edits --------------------------------------------------------------------------------
def refused(path: Path, *words: str) -> str:
    with pytest.raises(TraceFormatError) as caught:
        load_traces(path)
    message = str(caught.value)
    assert message.startswith(f"'{path}'") and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def change_field(kind: str, name: str, value, **match):
    def change(lines):
        backward_line(lines, kind, **match)[name] = value
    return change


SCALAR_EDITS = [
    ("loss_gradient", "label", 3, "label 3"),
    ("loss_gradient", "label", -1, "field 'label'"),
    ("loss_gradient", "label", 1.0, "field 'label'"),
    ("loss_gradient", "loss", "NaN", "field 'loss'"),
    ("loss_gradient", "loss", -1.0, "loss ≥ 0"),
    ("loss_gradient", "from_logits", 0, "field 'from_logits'"),
    ("layer_gradient", "layer_class", "Conv2D", "says class Conv2D"),
    ("layer_gradient", "norm", -2.0, "norm ≥ 0"),
    ("layer_gradient", "weight_norms", {"kernel": "big"}, "field 'weight_norms'"),
    ("layer_gradient", "weight_norms", {"kernel": -1.0}, "field 'weight_norms'"),
    ("layer_gradient", "weight_norms", {"\x1b[2J": 1.0}, "field 'weight_norms'"),
    ("layer_gradient", "weight_norms", [1.0], "field 'weight_norms'"),
    ("layer_gradient", "output_gradient", None, None),  # allowed: null where there is no gradient
    ("dense_gradient", "unit", 3, "unit 3"),
    ("dense_gradient", "n_inputs", 5, "n_inputs"),
    ("dense_gradient", "delta", 1e400, "field 'delta'"),
    ("dense_gradient", "from_loss", False, "output_gradient"),
    ("dense_gradient", "activation", "[red]x[/red]", "field 'activation'"),
    ("conv_kernel_gradient", "filter", 4, "filter 4"),
    ("conv_kernel_gradient", "tap", [0, 0, 3], "tap channel 3"),
    ("conv_kernel_gradient", "tap", [0, 0], "field 'tap'"),
    ("conv_kernel_gradient", "total", None, "field 'total'"),
    ("conv_input_gradient", "row", 8, "outside the layer's input"),
    ("conv_input_gradient", "channel", 3, "outside the layer's input"),
    ("pool_routing", "channel", 4, "channel 4"),
    ("pool_routing", "mode", "average", "field 'winner'"),
    ("pool_routing", "mode", "min", "field 'mode'"),
    ("pool_routing", "winner", [5, 0], "winner"),
    ("pool_routing", "origin", [0], "field 'origin'"),
    ("saliency", "layer", "conv2d_1", "saliency"),
    ("loss_gradient", "layer", "predictions", "loss_gradient of 'predictions'"),
    ("layer_gradient", "layer", "nowhere", "not in the header's backward section's layers"),
    ("layer_gradient", "kind", "layer_end", "has a layer_end event in the backward section"),
    ("dense_gradient", "kind", "conv_kernel_gradient", "conv_kernel_gradient"),
    ("dense_gradient", "surprise", 1, "unknown fields"),
    ("dense_gradient", "pass", "sideways", "field 'pass'"),
]


@pytest.mark.parametrize("kind,name,value,words", SCALAR_EDITS, ids=[f"{k}.{n}={v!r}" for k, n, v, _ in SCALAR_EDITS])
def test_scalar_edits_are_refused(cnn_file, kind, name, value, words):
    edit(cnn_file, change_field(kind, name, value))
    if words is None:
        load_traces(cnn_file)
    else:
        refused(cnn_file, words)


RECURRENT_EDITS = [
    ("cell", "gru", "gate rows"),
    ("cell", "tanh", "field 'cell'"),
    ("direction", "up", "field 'direction'"),
    ("time", 6, "time 6"),
    ("dz", None, "needs its gate gradients"),
    ("c", None, "must be set"),
]


@pytest.mark.parametrize("name,value,words", RECURRENT_EDITS)
def test_recurrent_edits_are_refused(lstm_file, name, value, words):
    edit(lstm_file, change_field("recurrent_gradient", name, value, masked=False))
    refused(lstm_file, words)


def test_masked_recurrent_step_carries_no_gate_values(lstm_file):
    def change(lines):
        real = backward_line(lines, "recurrent_gradient", masked=False)
        backward_line(lines, "recurrent_gradient", masked=True)["dz"] = real["dz"]
    refused(edit(lstm_file, change), "a masked step", "dz")


ARRAY_EDITS = [
    ("loss_gradient", "onehot", lambda a: np.roll(a, 1), "onehot"),
    ("loss_gradient", "probabilities", lambda a: a * 2, "probabilities"),
    ("loss_gradient", "logits", lambda a: a[:2], "shape"),
    ("loss_gradient", "gradient", lambda a: np.full_like(a, np.nan), "NaN"),
    ("layer_gradient", "output_gradient", lambda a: a[:-1], "output_gradient"),
    ("layer_gradient", "input_gradient", lambda a: a.reshape(-1), "input_gradient"),
    ("layer_gradient", "input_gradient", lambda a: a.astype(str), "dtype"),
    ("dense_gradient", "inputs", lambda a: a - 100, "negative"),
    ("dense_gradient", "x", lambda a: a[:-1], "shape"),
    ("conv_kernel_gradient", "running", lambda a: a[:, :-1], "shape"),
    ("conv_kernel_gradient", "inputs", lambda a: a[:-1, :-1], "shape"),
    ("conv_input_gradient", "cells", lambda a: a + 8, "outside"),
    ("conv_input_gradient", "weights", lambda a: a[:, :2], "shape"),
    ("pool_routing", "window", lambda a: np.full_like(a, np.inf), "window"),
    ("pool_routing", "routed", lambda a: a.astype(bool), "dtype"),
    ("saliency", "saliency", lambda a: -a - 1, "negative"),
    ("saliency", "gradient", lambda a: a[:4], "shape"),
]


@pytest.mark.parametrize("kind,name,change,words", ARRAY_EDITS, ids=[f"{k}.{n}" for k, n, _, _ in ARRAY_EDITS])
def test_array_edits_are_refused(cnn_file, kind, name, change, words):
    lines = read_lines(cnn_file)
    line = backward_line(lines, kind, **({"layer": "conv2d_1"} if kind == "layer_gradient" else {}))
    key, array = array_of(cnn_file, line, name)
    set_array(cnn_file, key, change(array))
    refused(cnn_file, words)


def test_padding_cells_routed_nothing(tmp_path):
    from nntrace.layers import AveragePooling2D, Dense, Flatten
    from nntrace.models.scratch import ScratchModel

    dense = Dense("head", units=2, activation="softmax")
    dense.set_weights([np.ones((8, 2), np.float32), np.zeros(2, np.float32)])
    model = ScratchModel([AveragePooling2D("pool", pool_size=2, strides=2, padding="same"), Flatten("flat"), dense],
                         name="pad")
    x = np.arange(18, dtype=np.float32).reshape(1, 3, 3, 2)
    path = save_trace(trace(model, x), tmp_path / "p.nntrace", everything=True, backward=trace_backward(model, x))
    load_traces(path)
    lines = read_lines(path)
    line = next(ln for ln in lines[1:] if ln["kind"] == "pool_routing" and ln.get("pass") == "backward"
                and not array_of(path, ln, "real")[1].all())
    key, routed = array_of(path, line, "routed")
    set_array(path, key, np.ones_like(routed))
    refused(path, "padding cells")


STRUCTURE_EDITS = {
    "no loss": lambda lines: lines.remove(backward_line(lines, "loss_gradient")),
    "two losses": lambda lines: lines.append(backward_line(lines, "loss_gradient")),
    "no saliency": lambda lines: lines.remove(backward_line(lines, "saliency")),
    "layer missing": lambda lines: lines.remove(backward_line(lines, "layer_gradient", layer="flatten")),
    "forward after backward": lambda lines: lines.append({k: v for k, v in lines[1].items()}),
    "backward without section": lambda lines: lines[0].pop("backward"),
    "backward kind in forward pass": lambda lines: backward_line(lines, "dense_gradient").pop("pass"),
    "schema 2 with section": lambda lines: lines[0].update(schema=2),
    "section not an object": lambda lines: lines[0].update(backward=[1]),
    "section unknown key": lambda lines: lines[0]["backward"].update(extra=1),
    "loss not first": lambda lines: lines[0]["backward"]["layers"].reverse(),
    "layer not forward": lambda lines: lines[0]["backward"]["layers"].insert(1, {"name": "ghost", "class": "Dense"}),
    "class not forward": lambda lines: lines[0]["backward"]["layers"][1].update({"class": "Conv2D"}),
    "fine names the loss": lambda lines: lines[0]["backward"]["fine_layers"].append("loss"),
    "fine not listed": lambda lines: lines[0]["backward"]["fine_layers"].remove("predictions"),
    "steps of flatten": lambda lines: lines.append({**backward_line(lines, "pool_routing"), "layer": "flatten"}),
}


@pytest.mark.parametrize("what", STRUCTURE_EDITS)
def test_structure_edits_are_refused(cnn_file, what):
    def change(lines):
        if what == "steps of flatten":
            lines[0]["backward"]["fine_layers"].append("flatten")
        STRUCTURE_EDITS[what](lines)
    refused(edit(cnn_file, change))


def test_every_backward_kind_is_in_the_file(cnn_file, lstm_file):
    kinds = {ln["kind"] for path in (cnn_file, lstm_file) for ln in read_lines(path)[1:] if ln.get("pass")}
    assert kinds == BACKWARD_KINDS


def test_old_schemas_still_load(tmp_path):
    forward, _ = pair("cnn")
    path = save_trace(forward, tmp_path / "f.nntrace", everything=True)
    for schema in (1, 2):
        edit(path, lambda lines: lines[0].update(schema=schema))
        t, b = load_traces(path)
        assert b is None and t.layers == forward.layers


# -- the command ----------------------------------------------------------------------------------
@pytest.fixture
def cnn_files(tmp_path):
    from nntrace.models import load_scratch
    from tests.keras_models import small_cnn

    model = small_cnn()
    model.save(tmp_path / "m.keras")
    load_scratch(model).save_weights(tmp_path / "m.npz")
    return tmp_path / "m.npz"


def test_trace_backward_command_end_to_end(tmp_path, cnn_files, capsys):
    from PIL import Image

    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "img.png")
    out = tmp_path / "run.nntrace"
    argv = ["trace", str(cnn_files), "--image", str(tmp_path / "img.png"), "-o", str(out), "--backward"]
    assert cli.main(argv + ["--label", "2"]) == 0
    assert "backward pass against class 2" in capsys.readouterr().out
    t, b = load_traces(out)
    assert list(t.recorded_steps) == ["conv"] and b is not None and b.context["label"] == 2
    assert list(b.recorded_steps) == ["loss", "conv", "input"]
    assert isinstance(t.context["model_input"], np.ndarray)
    before = out.read_bytes()
    assert cli.main(argv) == 2  # nothing is overwritten without --overwrite
    assert out.read_bytes() == before
    assert cli.main(argv + ["--overwrite", "--all"]) == 0
    _, b = load_traces(out)
    assert list(b.recorded_steps) == ["loss", "out", "pool", "conv", "input"]
    assert cli.main(argv + ["--overwrite", "--label", "99"]) == 2
    assert "--label 99" in capsys.readouterr().err
    assert cli.main(["trace", str(cnn_files), "-o", str(tmp_path / "x.nntrace"), "--label", "1"]) == 2
    assert "--backward" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["h_in", "h_prev", "dc_prev"])
def test_a_masked_recurrent_step_may_leave_out_its_null_fields_not_its_set_ones(lstm_file, field):
    """A field a masked step leaves null may also be left out (it raised KeyError); one it sets
    (an LSTM's dc_prev) is missing and named."""
    def drop(lines):
        backward_line(lines, "recurrent_gradient", masked=True).pop(field, None)

    edit(lstm_file, drop)
    if field == "dc_prev":
        with pytest.raises(TraceFormatError, match="recurrent_gradient of 'bidirectional_1' lacks the fields dc_prev"):
            load_traces(lstm_file)
        return
    _, backward = load_traces(lstm_file)
    steps = [e for es in backward.recorded_steps.values() for e in es if e.kind == "recurrent_gradient" and e.masked]
    assert steps and all(getattr(e, field) is None for e in steps)
