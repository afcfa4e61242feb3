"""Hostile and broken trace files: each is refused with a TraceFormatError naming the file, what is
wrong and what was expected, or loaded with its text made safe; `save_trace` writes both files or
neither."""
from __future__ import annotations

import errno
import io
import json
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.text import Text

from nntrace.layers.errors import NNTraceError
from nntrace.tracer import trace
from nntrace.tracer.events import EVENT_TYPES
from nntrace.tracer.io import (ADDED_IN_SCHEMA_2, FIELDS, GEOMETRY, RULES, Arr, TraceExistsError,
                               TraceFormatError, TraceWriteError, arrays_path, load_trace, save_trace)
from nntrace.tracer.sanitize import SAFE_NAME, check_layer_name, clean_text, escape_markup
from nntrace.views.replay import Replay
from nntrace.views.step_views import ViewContext, view_for
from tests.scratch_models import tiny_cnn, tiny_lstm

OSC_TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"


# -- helpers --------------------------------------------------------------------------------------
@pytest.fixture
def cnn_file(tmp_path) -> Path:
    x = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    return save_trace(trace(tiny_cnn(), x), tmp_path / "cnn.nntrace", everything=True)


@pytest.fixture
def lstm_file(tmp_path) -> Path:
    return save_trace(trace(tiny_lstm(), ["tidak enak sekali"]), tmp_path / "lstm.nntrace", everything=True)


def read_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def edit(path: Path, change) -> Path:
    """Rewrite the file with `change(lines)` applied to its parsed lines (header first)."""
    lines = read_lines(path)
    change(lines)
    return write_lines(path, lines)


def first(lines: list, kind: str, **match) -> dict:
    return next(line for line in lines[1:] if line.get("kind") == kind
                and all(line.get(k) == v for k, v in match.items()))


def rename_layer(lines: list, old: str, new: str) -> None:
    for layer in lines[0]["layers"]:
        if layer["name"] == old:
            layer["name"] = new
    lines[0]["fine_layers"] = [new if n == old else n for n in lines[0]["fine_layers"]]
    for line in lines[1:]:
        if line.get("layer") == old:
            line["layer"] = new


def set_array(path: Path, key: str, value: np.ndarray) -> None:
    npz = arrays_path(path)
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = value
    with npz.open("wb") as f:
        np.savez(f, **arrays)


def refused(path: Path, *fragments: str) -> str:
    """Load `path`, expect a TraceFormatError whose message names the file and holds `fragments`."""
    with pytest.raises(TraceFormatError) as info:
        load_trace(path)
    message = str(info.value)
    assert str(path.name) in message
    for fragment in fragments:
        assert fragment in message, message
    assert not any(ch in message for ch in "\x1b\x07\x9b\u202e")
    return message


def render_all(t) -> str:
    replay = Replay(t)
    console = Console(file=io.StringIO(), width=100)
    for i in range(len(t.layers)):
        replay.go_layer(i)
        for step in range(replay.step_count() or 1):
            if step:
                replay.go_step(step)
            ctx = ViewContext(replay, replay.event, None, 100)
            console.print(view_for(ctx.event).render(ctx))
    return console.file.getvalue()


# -- sanitize -------------------------------------------------------------------------------------
def test_clean_text_drops_what_a_terminal_would_act_on():
    assert clean_text(f"a{OSC_TITLE}b{CLEAR}c") == "a]0;pwnedb[2Jc"  # ESC and BEL gone: inert text left
    assert clean_text("x\x9b31mred\x85y") == "x31mredy"                 # C1 controls (CSI, NEL)
    assert clean_text("abc\u202edcba\u2066\u2069") == "abcdcba"         # bidi override and isolates
    assert clean_text("zero\u200bwidth\u200d\ufeff") == "zerowidth"
    assert clean_text("tab\tnew\nline\r\x00\x7f") == "tabnewline"
    assert clean_text("lone \ud800 surrogate") == "lone  surrogate"
    assert clean_text("[/]oops [bold]x") == "[/]oops [bold]x"          # markup is plain text here
    assert clean_text("Makanannya enak, ramah!") == "Makanannya enak, ramah!"


def test_clean_text_cuts_long_text_with_an_ellipsis():
    assert clean_text("a" * 10, 10) == "a" * 10
    assert clean_text("a" * 11, 10) == "a" * 9 + "…" and len(clean_text("b" * 10**6)) == 200
    assert clean_text("\x1b" * 50 + "ok", 5) == "ok"


def test_escape_markup_for_places_that_build_markup():
    console = Console(file=io.StringIO(), width=80)
    console.print(f"[bold]{escape_markup('[/]oops')}[/bold]")
    assert "[/]oops" in console.file.getvalue()


@pytest.mark.parametrize("name,ok", [("conv2d_1", True), ("a/b:c.d-e", True), ("x" * 128, True), ("", False),
                                     ("x" * 129, False), ("conv 1", False), ("[/]oops", False),
                                     (f"conv{OSC_TITLE}", False), ("conv\n", False), ("ünï", False), (7, False)])
def test_check_layer_name(name, ok):
    assert check_layer_name(name) is ok
    assert (isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None) is ok


# -- names and text inside a file -------------------------------------------------------------------
@pytest.mark.parametrize("bad", [f"conv{OSC_TITLE}", f"{CLEAR}conv", "[/]oops", "conv\u202e1", "conv 1"])
def test_unsafe_layer_names_are_refused_without_echoing_them(cnn_file, bad):
    edit(cnn_file, lambda lines: rename_layer(lines, "conv2d_1", bad))
    message = refused(cnn_file, "layers[1].name", "not a safe layer name", "letters, digits")
    assert "pwned" not in message and "[/]" not in message and "oops" not in message
    Console(file=io.StringIO()).print(message)  # safe to print through Rich markup too


def test_unsafe_layer_class_is_refused(cnn_file):
    def change(lines):
        lines[0]["layers"][0]["class"] = "Rescaling\x1b[2J"
        first(lines, "layer_start", layer="rescaling")["layer_class"] = "Rescaling\x1b[2J"
    edit(cnn_file, change)
    refused(cnn_file, "layers[0].class", "U+001B")


def test_context_text_and_tokens_lose_control_characters(lstm_file):
    def change(lines):
        lines[0]["context"]["text"] = f"tidak{OSC_TITLE} enak{CLEAR}\u202e"
        lines[0]["context"]["tokens"][0] = f"tid{OSC_TITLE}ak"
        lines[0]["context"]["labels"][0] = "neg\x9bative"
        first(lines, "embedding_lookup", position=0)["token"] = f"tid{CLEAR}ak"
    edit(lstm_file, change)
    t = load_trace(lstm_file)
    assert t.context["text"] == "tidak]0;pwned enak[2J"
    assert t.context["tokens"][0] == "tid]0;pwnedak" and t.context["labels"][0] == "negative"
    assert t.recorded_steps["embedding"][0].token == "tid[2Jak"
    shown = render_all(t)
    assert "\x1b]" not in shown and "\x07" not in shown and "\u202e" not in shown


def test_markup_in_context_text_stays_plain_text(lstm_file):
    def change(lines):
        lines[0]["context"]["text"] = "[/]oops enak"
        lines[0]["context"]["tokens"][0] = "[/]oops"
        lines[0]["context"]["labels"][0] = "[bold red]neg"
    edit(lstm_file, change)
    t = load_trace(lstm_file)
    assert t.context["text"] == "[/]oops enak" and t.context["tokens"][0] == "[/]oops"
    shown = render_all(t)
    assert "[/]oops" in shown and "[bold red]neg" in shown
    assert Text(t.context["text"]).plain == "[/]oops enak"


def test_context_of_the_wrong_type_is_refused(lstm_file):
    edit(lstm_file, lambda lines: lines[0]["context"].update(tokens="tidak enak"))
    refused(lstm_file, "context.tokens", "a list of strings")


# -- the file as a whole --------------------------------------------------------------------------
def test_missing_trace_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trace file"):
        load_trace(tmp_path / "nope.nntrace")
    with pytest.raises(NNTraceError):
        load_trace(tmp_path / "nope.nntrace")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nntrace").write_bytes(b"")
    refused(tmp_path / "empty.nntrace", "is empty")


def test_binary_garbage(tmp_path):
    path = tmp_path / "garbage.nntrace"
    path.write_bytes(bytes(range(256)) * 4)
    refused(path, "not UTF-8")
    path.write_bytes(b"\x00\x01PK\x03\x04 not json")
    refused(path, "line 1", "is not JSON")


def test_a_trace_cut_right_after_the_header(cnn_file):
    cnn_file.write_text(cnn_file.read_text().splitlines()[0] + "\n")
    refused(cnn_file, "has no layer_start for layer 'rescaling'", "cut short")


def test_a_layer_start_without_its_layer_end(cnn_file):
    edit(cnn_file, lambda lines: lines.remove(first(lines, "layer_end", layer="predictions")))
    refused(cnn_file, "has no layer_end for layer 'predictions'", "output")


def test_a_layer_end_without_output(cnn_file):
    edit(cnn_file, lambda lines: first(lines, "layer_end", layer="flatten").update(output=None))
    refused(cnn_file, "field 'output' is null")


def test_layer_events_out_of_order_or_twice(cnn_file):
    def change(lines):
        lines[1], lines[2] = lines[2], lines[1]
    edit(cnn_file, change)
    refused(cnn_file, "line 2", "has the layer_end of 'rescaling' before its layer_start")
    edit(cnn_file, change)
    edit(cnn_file, lambda lines: lines.insert(5, lines[4]))
    refused(cnn_file, "line 6", "has a second layer_end of 'conv2d_1'")


@pytest.mark.parametrize("header,fragment", [
    ([1, 2], "is a list; expected the trace header"),
    ("nntrace", "is a string"),
])
def test_header_not_an_object(cnn_file, header, fragment):
    edit(cnn_file, lambda lines: lines.__setitem__(0, header))
    refused(cnn_file, "line 1", fragment)


@pytest.mark.parametrize("key", ["format", "version", "schema", "model", "layers"])
def test_header_missing_a_key(cnn_file, key):
    edit(cnn_file, lambda lines: lines[0].pop(key))
    refused(cnn_file, f"the header has no '{key}'")


def test_header_with_no_layers(cnn_file):
    edit(cnn_file, lambda lines: lines[0].update(layers=[]))
    refused(cnn_file, "has no layers")


@pytest.mark.parametrize("entry,fragment", [("conv", "layers[1] is a string"), ({"name": "conv2d_1"}, "exactly"),
                                            ({"name": ["x"], "class": "Conv2D"}, "it is a list")])
def test_header_layer_entries_that_are_not_layers(cnn_file, entry, fragment):
    edit(cnn_file, lambda lines: lines[0]["layers"].__setitem__(1, entry))
    refused(cnn_file, fragment)


def test_unknown_layer_classes_are_fine(cnn_file):
    def change(lines):
        lines[0]["layers"][0]["class"] = "MyScaling"
        for line in lines[1:3]:
            line["layer_class"] = "MyScaling"
    edit(cnn_file, change)
    assert load_trace(cnn_file).layers[0] == ("rescaling", "MyScaling")


# -- event lines ----------------------------------------------------------------------------------
@pytest.mark.parametrize("line,fragment", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "is a list; expected an event"),
    ('{"kind": "teleport", "layer": "flatten"}', "unknown kind 'teleport'"),
    ('{"kind": "dropout", "layer": "conv\\u001b[2J", "rate": 0.1, "training": false}', "not in the header's layers"),
    ("[" * 100000, "is not JSON"),
    ('{"kind": "dropout", "layer": "flatten", "rate": ' + "9" * 5000 + ', "training": false}', "is not JSON"),
])
def test_event_lines_that_are_not_events(cnn_file, line, fragment):
    cnn_file.write_text(cnn_file.read_text() + line + "\n")
    refused(cnn_file, fragment)


def test_unknown_and_missing_fields(cnn_file, tmp_path):
    edit(cnn_file, lambda lines: first(lines, "conv_patch").update(colour="red"))
    refused(cnn_file, "unknown fields 'colour'", "expected row, col, filter")
    edit(cnn_file, lambda lines: first(lines, "conv_patch").pop("colour"))
    edit(cnn_file, lambda lines: first(lines, "conv_patch").pop("kernel"))
    refused(cnn_file, "conv_patch of 'conv2d_1' lacks the fields kernel")


@pytest.mark.parametrize("kind,field,value,fragment", [
    ("conv_patch", "patch", "abc", "field 'patch' is a string; expected an array reference"),
    ("conv_patch", "patch", [[1.0, 2.0]], "field 'patch' is a list; expected an array reference"),
    ("conv_patch", "activation", ["relu"], "field 'activation' is a list"),
    ("conv_patch", "row", 1.0, "field 'row' is the number 1.0; expected an integer"),
    ("conv_patch", "row", True, "field 'row' is a boolean"),
    ("conv_patch", "row", "3", "field 'row' is a string"),
    ("conv_patch", "row", float("nan"), "field 'row' is the number nan"),
    ("conv_patch", "row", -1, "field 'row' is the integer -1"),
    ("conv_patch", "row", 2**40, "field 'row' is the integer 1099511627776"),
    ("conv_patch", "row", 8, "row 8 is outside the layer's output of shape (8, 8, 4)"),
    ("conv_patch", "total", float("inf"), "field 'total' is the number inf; expected a finite number"),
    ("conv_patch", "total", 10**400, "field 'total' is the integer 1000"),
    ("conv_patch", "origin", [1], "field 'origin' is a list; expected a list of two integers"),
    ("pool_window", "winner", [5, 0], "field 'winner' [5, 0] is not a real cell of the 2×2 window"),
    ("pool_window", "winner", None, "field 'winner' must be a cell for mode max"),
    ("pool_window", "mode", "median", "field 'mode' is a string; expected one of average, max"),
    ("dense_neuron", "unit", 3, "unit 3 is outside the layer's output of shape (3,)"),
])
def test_event_fields_of_the_wrong_type_or_range(cnn_file, kind, field, value, fragment):
    edit(cnn_file, lambda lines: first(lines, kind).update({field: value}))
    refused(cnn_file, fragment)


def test_array_references_to_missing_arrays(cnn_file):
    edit(cnn_file, lambda lines: first(lines, "conv_patch").update(kernel={"$array": "a99999"}))
    refused(cnn_file, "field 'kernel' refers to array 'a99999'", "does not hold")


@pytest.mark.parametrize("value,fragment", [
    (np.array([["a", "b", "c"]] * 3), "dtype <U1; expected number"),
    (np.ones((3, 3, 3), bool), "dtype bool; expected number"),
    (np.ones((3, 3, 3), complex), "dtype complex128"),
    (np.full((3, 3, 3), np.nan, np.float32), "NaN or infinite"),
    (np.ones((3, 3), np.float32), "has shape (3, 3); expected 3 dimensions (kh kw cin)"),
    (np.ones((3, 3, 2), np.float32), "has shape (3, 3, 2); expected (kh, kw, cin) with cin = 3"),
])
def test_arrays_of_the_wrong_dtype_or_shape(cnn_file, value, fragment):
    key = first(read_lines(cnn_file), "conv_patch")["products"]["$array"]
    set_array(cnn_file, key, value)
    refused(cnn_file, "field 'products'", fragment)


def test_object_arrays_are_refused(cnn_file):
    key = first(read_lines(cnn_file), "conv_patch")["products"]["$array"]
    set_array(cnn_file, key, np.array([{"x": 1}], dtype=object))
    refused(cnn_file, ".npz", "cannot be read", "Object arrays")


def test_lstm_vectors_of_different_lengths(lstm_file):
    key = first(read_lines(lstm_file), "lstm_step", masked=False)["c"]["$array"]
    set_array(lstm_file, key, np.zeros(4, np.float32))
    refused(lstm_file, "field 'c' has shape (4,); expected (u) with u = 3")


def test_lstm_units_must_agree_across_the_layer(lstm_file):
    def change(lines):
        step = first(lines, "lstm_step", masked=True)
        for name in ("c_prev", "c", "h_prev", "h"):
            step[name] = first(lines, "embedding_lookup")["vector"]  # 4 values where the layer has 3 units
    edit(lstm_file, change)
    refused(lstm_file, "has 4 units; the layer's earlier steps have 3")


def test_masked_steps_carry_no_gates_and_real_steps_need_them(lstm_file):
    fresh = first(read_lines(lstm_file), "lstm_step", masked=False)["i"]
    edit(lstm_file, lambda lines: first(lines, "lstm_step", masked=True).update(i=fresh))
    refused(lstm_file, "a masked step carries no fresh values, but i are set")
    edit(lstm_file, lambda lines: first(lines, "lstm_step", masked=True).update(i=None))
    edit(lstm_file, lambda lines: first(lines, "lstm_step", masked=False).update(g=None))
    refused(lstm_file, "needs g")


def test_merge_shapes_follow_the_merge_mode(lstm_file):
    edit(lstm_file, lambda lines: first(lines, "bidirectional_merge").update(merge_mode="sum"))
    refused(lstm_file, "field 'merged' has shape (6,); expected (3,) for merge_mode sum")


def test_conv_geometry_must_give_the_output_size(cnn_file):
    edit(cnn_file, lambda lines: first(lines, "conv_patch").update(strides=[2, 2]))
    refused(cnn_file, "strides [2, 2]", "does not give output_size [8, 8]")
    edit(cnn_file, lambda lines: first(lines, "conv_patch").update(strides=[0, 1]))
    refused(cnn_file, "strides (≥ 1)")
    edit(cnn_file, lambda lines: [first(lines, "conv_patch").pop(k) for k in ("strides", "pad")])
    refused(cnn_file, "pad [0, 0]", "does not give")  # left out: the defaults, stride 1 and no padding
    edit(cnn_file, lambda lines: [first(lines, "conv_patch").pop(k) for k in ("input_size", "output_size")])
    assert load_trace(cnn_file).recorded_steps["conv2d_1"][0].input_size == ()


def test_pool_window_nan_only_on_padding(cnn_file):
    key = first(read_lines(cnn_file), "pool_window")["window"]["$array"]
    set_array(cnn_file, key, np.array([[np.nan, 1], [2, 3]], np.float32))
    refused(cnn_file, "NaN exactly on padding cells")


def test_steps_of_a_layer_not_in_fine_layers(cnn_file):
    edit(cnn_file, lambda lines: lines[0]["fine_layers"].remove("flatten"))
    refused(cnn_file, "flatten_map step of 'flatten', which the header's 'fine_layers' does not list")


def test_steps_of_the_wrong_kind_for_the_layer(cnn_file):
    edit(cnn_file, lambda lines: first(lines, "dense_neuron").update(kind="softmax"))
    refused(cnn_file, "softmax of 'predictions' has unknown fields 'activation'", "expected logits, exps")


def test_steps_of_a_kind_the_layer_class_does_not_produce(cnn_file):
    edit(cnn_file, lambda lines: first(lines, "flatten_map").update(layer="max_pool_1"))
    refused(cnn_file, "flatten_map step of 'max_pool_1', a MaxPooling2D layer, whose steps are pool_window")


def test_a_second_single_step(cnn_file):
    edit(cnn_file, lambda lines: lines.append(first(lines, "softmax")))
    refused(cnn_file, "a second softmax step of 'predictions'")


def merge_trace() -> "Trace":
    """A hand-made trace of an Add layer over two inputs (a merge step has a tuple of arrays)."""
    from nntrace.tracer.events import LayerEnd, LayerStart, MergeStep
    from nntrace.tracer.trace import Trace
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.float32)
    events = [LayerStart("add", layer_class="Add", input_shape=(1, 2, 3)),
              LayerEnd("add", layer_class="Add", output_shape=(1, 2, 3), output=a + b)]
    step = MergeStep("add", mode="add", operands=(a, b), result=a + b, masks=(None, np.array([True, False])))
    return Trace("merger", [("add", "Add")], events, {}, recorded_steps={"add": [step]})


def test_merge_steps_round_trip_and_are_checked(tmp_path):
    path = save_trace(merge_trace(), tmp_path / "m.nntrace", everything=True)
    step = load_trace(path).recorded_steps["add"][0]
    assert len(step.operands) == 2 and step.masks[0] is None and step.masks[1].dtype == bool
    np.testing.assert_array_equal(step.result, step.operands[0] + step.operands[1])
    render_all(load_trace(path))
    edit(path, lambda lines: first(lines, "merge").update(operands=[{"$array": "a2"}, "x"]))
    refused(path, "field 'operands' is a list; expected a list of array references (number)")
    edit(path, lambda lines: first(lines, "merge").update(operands=[{"$array": "a2"}], masks=[None, None]))
    refused(path, "has 1 operands and 2 masks")
    set_array(path, "short", np.zeros(2, np.float32))
    edit(path, lambda lines: first(lines, "merge").update(operands=[{"$array": "a1"}], masks=[],
                                                          result={"$array": "short"}))
    refused(path, "field 'result' has shape (2,); the layer's output has (2, 3)")


# -- the arrays file ------------------------------------------------------------------------------
def test_missing_npz(cnn_file):
    arrays_path(cnn_file).unlink()
    refused(cnn_file, "needs its arrays file")


def test_empty_npz(cnn_file):
    arrays_path(cnn_file).write_bytes(b"")
    with pytest.raises(TraceFormatError, match="cnn.nntrace.npz' is empty"):
        load_trace(cnn_file)


@pytest.mark.parametrize("keep", [0.5, 0.99, 30])
def test_truncated_npz(cnn_file, keep):
    npz = arrays_path(cnn_file)
    data = npz.read_bytes()
    npz.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(TraceFormatError, match="is damaged: it cannot be read as the .npz of arrays"):
        load_trace(cnn_file)


def test_npz_that_is_not_a_zip(cnn_file):
    npz = arrays_path(cnn_file)
    npz.write_text("just text")
    with pytest.raises(TraceFormatError, match=r"is not a .npz file \(a zip of .npy arrays\)"):
        load_trace(cnn_file)
    with npz.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(TraceFormatError, match="holds a single array"):
        load_trace(cnn_file)


def test_npz_members_that_are_not_arrays(cnn_file):
    import zipfile
    with zipfile.ZipFile(arrays_path(cnn_file), "a") as z:
        z.writestr("note.txt", b"\x1b]0;pwned\x07 hello")
    refused(cnn_file, ".npz' holds 'note.txt', which is not a NumPy array")
    with zipfile.ZipFile(arrays_path(cnn_file), "w") as z:
        z.writestr("a0.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'")
    refused(cnn_file, "is damaged")


def test_malformed_array_references(cnn_file):
    edit(cnn_file, lambda lines: first(lines, "conv_patch").update(kernel={"$array": 5}))
    refused(cnn_file, "field 'kernel' is an object; expected an array reference")


# -- saving ---------------------------------------------------------------------------------------
def small_trace():
    return trace(tiny_cnn(), np.zeros((1, 8, 8, 3), np.float32))


def test_save_refuses_an_existing_npz_alone(tmp_path):
    npz = tmp_path / "run.nntrace.npz"
    npz.write_bytes(b"precious")
    with pytest.raises(TraceExistsError, match="run.nntrace.npz' exists") as info:
        save_trace(small_trace(), tmp_path / "run.nntrace")
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, NNTraceError)
    assert npz.read_bytes() == b"precious" and not (tmp_path / "run.nntrace").exists()
    save_trace(small_trace(), tmp_path / "run.nntrace", overwrite=True)
    assert load_trace(tmp_path / "run.nntrace").layers[1] == ("conv2d_1", "Conv2D")


def test_a_failed_npz_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(TraceWriteError, match="could not write the trace '.*run.nntrace': No space left") as info:
        save_trace(small_trace(), tmp_path / "run.nntrace")
    assert isinstance(info.value, NNTraceError)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_leaves_nothing_behind(tmp_path, monkeypatch):
    import os
    real = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(TraceWriteError, match="Input/output error"):
        save_trace(small_trace(), tmp_path / "run.nntrace")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(TraceWriteError, match="could not write the trace '.*file/sub/run.nntrace'"):
        save_trace(small_trace(), blocker / "sub" / "run.nntrace")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_save_refuses_unsafe_layer_names(tmp_path):
    t = small_trace()
    t.layers[1] = (f"conv{OSC_TITLE}", "Conv2D")
    with pytest.raises(TraceFormatError, match="layer 1's name is not a safe name .character U.001B"):
        save_trace(t, tmp_path / "run.nntrace", layers=[])
    assert list(tmp_path.iterdir()) == []


def test_saved_context_strings_come_back_clean(tmp_path):
    t = trace(tiny_lstm(), ["tidak enak"])
    t.context["text"] = f"tidak{OSC_TITLE} enak"
    again = load_trace(save_trace(t, tmp_path / "t.nntrace"))
    assert again.context["text"] == "tidak]0;pwned enak"


# -- schema 1 -------------------------------------------------------------------------------------
def downgrade(path: Path) -> Path:
    """The file as schema 1 wrote it: without the fields schema 2 added."""
    def change(lines):
        lines[0]["schema"] = 1
        for line in lines[1:]:
            for name in ADDED_IN_SCHEMA_2.get(line["kind"], set()) | set(GEOMETRY):
                line.pop(name, None)
    return edit(path, change)


def test_schema_1_cnn_loads_and_renders(cnn_file):
    new = load_trace(cnn_file)
    old = load_trace(downgrade(cnn_file))
    a, b = new.recorded_steps["conv2d_1"][5], old.recorded_steps["conv2d_1"][5]
    np.testing.assert_allclose(b.channel_totals, a.channel_totals, rtol=1e-6)
    assert b.activation == "activation"
    d_new, d_old = new.recorded_steps["predictions"][0], old.recorded_steps["predictions"][0]
    assert d_old.n_inputs == d_new.n_inputs == 64 and d_old.rest == pytest.approx(d_new.rest, abs=1e-6)
    assert "activation(" in render_all(old)


def test_schema_1_lstm_loads(lstm_file):
    def gates_on_masked_steps(lines):  # schema 1 kept the gates of masked steps
        real = first(lines, "lstm_step", masked=False)
        for line in lines[1:]:
            if line["kind"] == "lstm_step" and line["masked"]:
                line.update({g: real[g] for g in "ifgo"})
    edit(downgrade(lstm_file), gates_on_masked_steps)
    t = load_trace(lstm_file)
    steps = [s for s in t.recorded_steps["bidirectional_1"] if s.kind == "lstm_step"]
    assert all(s.i is None for s in steps if s.masked) and all(s.i is not None for s in steps if not s.masked)
    assert steps[0].recurrent_activation == "recurrent_activation"


def test_schema_1_lstm_renders(lstm_file):
    render_all(load_trace(downgrade(lstm_file)))


# -- the rules table ------------------------------------------------------------------------------
def test_rules_cover_every_event_field():
    for kind, cls in EVENT_TYPES.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name == "layer":
                continue
            base, _ = FIELDS[kind][f.name]
            rule = RULES.get(kind, {}).get(f.name)
            if base is np.ndarray:
                assert isinstance(rule, Arr), (kind, f.name, hints[f.name])
            elif base in (str, tuple):
                assert rule is not None, (kind, f.name)
