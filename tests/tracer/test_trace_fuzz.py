"""Whatever is done to a real trace file, `load_trace` returns a Trace or raises NNTraceError; and a
Trace it returns replays and renders every layer's view without an error.

Real files of the tiny CNN and the tiny LSTM are cut, flipped, and edited line by line and field by
field. `HYPOTHESIS_PROFILE=thorough` runs 1,000 examples per file kind and mutation family.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from nntrace.layers.errors import NNTraceError
from nntrace.tracer import trace
from nntrace.tracer.events import EVENT_TYPES
from nntrace.tracer.io import arrays_path, load_trace, save_trace
from nntrace.views.replay import Replay
from nntrace.views.step_views import ViewContext, view_for
from tests.scratch_models import tiny_cnn, tiny_lstm


def examples(test):
    """The loaded profile's example count, or 1,000 under the thorough profile."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "thorough":
        return settings(max_examples=1000)(test)
    return test


def cnn_trace():
    x = np.random.default_rng(3).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    t = trace(tiny_cnn(), x)
    t.context.update(model_input=x, true_label=1)
    return t


def lstm_trace():
    text = "tidak enak sekali kawan"  # "kawan" is out of the vocabulary; two padded positions follow
    t = trace(tiny_lstm(), [text])
    t.context["model_input"] = [text]
    return t


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, tuple[bytes, bytes]]:
    """(JSON lines, npz) bytes of a real trace of each tiny model, every layer's steps included."""
    root = tmp_path_factory.mktemp("originals")
    files = {}
    for kind, make in (("cnn", cnn_trace), ("lstm", lstm_trace)):
        path = save_trace(make(), root / f"{kind}.nntrace", everything=True)
        files[kind] = (path.read_bytes(), arrays_path(path).read_bytes())
    return files


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cases")


def show_everything(t, focus: set[int] = frozenset()) -> str:
    """Go to every layer, count its steps and render its first, last and `focus` steps (the view
    and its heatmaps)."""
    replay = Replay(t)
    console = Console(file=io.StringIO(), width=100)
    for i in range(len(t.layers)):
        replay.go_layer(i)
        assert replay.event is not None or not replay.has_steps()
        n = replay.step_count()
        for step in sorted({0, max(n - 1, 0)} | {s for s in focus if s < n}):
            if n:
                replay.go_step(step)
            ctx = ViewContext(replay, replay.event, None, 100)
            view = view_for(ctx.event)
            console.print(view.render(ctx))
            for heatmap in view.heatmaps(ctx):  # the pictures of the PNG export
                console.print(heatmap.block())
    return console.file.getvalue()


def load_or_refuse(workdir: Path, lines: bytes, arrays: bytes, focus: set[int] = frozenset()) -> None:
    """The property: a Trace that replays, or NNTraceError; any other exception fails the test."""
    path = workdir / "case.nntrace"
    path.write_bytes(lines)
    arrays_path(path).write_bytes(arrays)
    try:
        t = load_trace(path)
    except NNTraceError as exc:
        assert str(exc) and "\x1b" not in str(exc)
        return
    show_everything(t, focus)


@pytest.mark.parametrize("kind,shown", [("cnn", "conv2d_1: filter 0"), ("lstm", "LSTM forward sweep")])
def test_the_original_files_load_and_render(originals, workdir, kind, shown):
    lines, arrays = originals[kind]
    path = workdir / "case.nntrace"
    path.write_bytes(lines)
    arrays_path(path).write_bytes(arrays)
    assert shown in show_everything(load_trace(path))


# -- byte-level damage ------------------------------------------------------------------------------
@st.composite
def damaged(draw, data: bytes) -> bytes:
    """`data` truncated, with bytes flipped, or with a run of bytes removed or repeated."""
    how = draw(st.sampled_from(["truncate", "flip", "cut", "repeat"]))
    n = len(data)
    if how == "truncate":
        return data[:draw(st.integers(0, n - 1))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, n - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    start = draw(st.integers(0, n - 1))
    stop = draw(st.integers(start + 1, min(n, start + 200)))
    return data[:start] + data[stop:] if how == "cut" else data[:stop] + data[start:]


@pytest.mark.parametrize("kind", ["cnn", "lstm"])
@pytest.mark.parametrize("target", ["lines", "arrays"])
@examples
@given(data=st.data())
def test_damaged_bytes_load_or_are_refused(originals, workdir, kind, target, data):
    lines, arrays = originals[kind]
    if target == "lines":
        lines = data.draw(damaged(lines))
    else:
        arrays = data.draw(damaged(arrays))
    load_or_refuse(workdir, lines, arrays)


# -- JSON-level edits -----------------------------------------------------------------------------
HOSTILE_TEXT = ["\x1b]0;pwned\x07", "\x1b[2J", "[/]oops", "[bold]x", "\u202e", "\u200b", "\ud800", "",
                "x" * 300, "max", "average", "None", "concat", "sum", "forward", "backward", "relu", "sigmoid"]


def json_values(array_keys: list[str], names: list[str]):
    """Any JSON value, biased to the ones a trace file holds: array references, indices, names."""
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(-3, 10), st.sampled_from([-1, 2**31, 2**63, 10**30, 10**400]),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(HOSTILE_TEXT), st.text(max_size=8),
        st.sampled_from(names + list(EVENT_TYPES)),
        st.builds(lambda k: {"$array": k}, st.sampled_from(array_keys + ["missing", ""])))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["$array", "name", "class", "x"]), inner, max_size=2), max_leaves=6)


def paths(value, prefix=(), depth: int = 3):
    """Every (path) into a JSON value, down to `depth` levels."""
    if depth == 0:
        return
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from paths(child, prefix + (key,), depth - 1)


def parent_of(doc, path):
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def edited(draw, original: bytes) -> tuple[bytes, set[int]]:
    """The file with 1–3 edits: a value replaced, a key deleted or added, a line's kind or layer
    changed, a line deleted or duplicated. Returns the bytes and the step indices of edited lines."""
    lines = [json.loads(text) for text in original.decode().splitlines()]
    header = lines[0]
    names = [layer["name"] for layer in header["layers"]]
    keys = sorted({v["$array"] for line in lines for v in line.values() if isinstance(v, dict) and "$array" in v})
    values = json_values(keys[:50] + keys[-50:], names)
    touched: list[int] = []
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["set", "set", "delete", "add", "kind", "layer", "drop", "repeat"]))
        touched.append(i)
        line = lines[i]
        if op == "drop" and len(lines) > 1:
            lines.pop(i)
        elif op == "repeat":
            lines.insert(i, json.loads(json.dumps(line)))
        elif op == "kind" and isinstance(line, dict):
            line["kind"] = draw(st.sampled_from(list(EVENT_TYPES)))
        elif op == "layer" and isinstance(line, dict):
            line["layer"] = draw(st.sampled_from(names + ["nope", "\x1b[2J"]))
        elif op == "add" and isinstance(line, dict):
            line[draw(st.sampled_from(["extra", "row", "winner", "masked", "context", "fine_layers"]))] = draw(values)
        else:
            where = list(paths(line))
            if not where:
                lines[i] = draw(values)
                continue
            path = draw(st.sampled_from(where))
            parent = parent_of(line, path)
            if op == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(values)
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    return text.encode("utf-8", "surrogatepass"), step_indices(lines, touched)


def step_indices(lines: list, touched: list[int]) -> set[int]:
    """Where the edited lines sit among their layer's steps (to render those steps)."""
    found = set()
    for i in touched:
        if i < len(lines) and isinstance(lines[i], dict):
            layer = lines[i].get("layer")
            found.add(sum(1 for line in lines[1:i] if isinstance(line, dict) and line.get("layer") == layer
                          and line.get("kind") not in ("layer_start", "layer_end")))
    return found


@pytest.mark.parametrize("kind", ["cnn", "lstm"])
@examples
@given(data=st.data())
def test_edited_lines_load_or_are_refused(originals, workdir, kind, data):
    lines, arrays = originals[kind]
    text, focus = data.draw(edited(lines))
    load_or_refuse(workdir, text, arrays, focus)


@pytest.mark.parametrize("kind", ["cnn", "lstm"])
@examples
@given(data=st.data())
def test_edited_lines_with_swapped_arrays_load_or_are_refused(originals, workdir, kind, data):
    """Array references pointed at other arrays of the file: right dtype, often the wrong shape."""
    lines, arrays = originals[kind]
    docs = [json.loads(text) for text in lines.decode().splitlines()]
    refs = [(i, k) for i, doc in enumerate(docs) for k, v in doc.items() if isinstance(v, dict) and "$array" in v]
    keys = sorted({docs[i][k]["$array"] for i, k in refs})
    touched = []
    for _ in range(data.draw(st.integers(1, 4))):
        i, k = data.draw(st.sampled_from(refs))
        docs[i][k] = {"$array": data.draw(st.sampled_from(keys))}
        touched.append(i)
    text = ("\n".join(json.dumps(d) for d in docs) + "\n").encode()
    load_or_refuse(workdir, text, arrays, step_indices(docs, touched))
