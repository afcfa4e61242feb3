"""The trace file format: JSON lines (`run.nntrace`) plus an `.npz` of arrays beside it (no pickle).

See docs/trace-format.md. Line 1 is a header; every other line is one event whose array fields are
`{"$array": "a<N>"}` references into `<file>.npz`.
"""
from __future__ import annotations

import json
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nntrace.layers.errors import NNTraceError
from nntrace.tracer.events import EVENT_TYPES, READABLE_SCHEMAS, SCHEMA_VERSION, Event, event_fields
from nntrace.tracer.trace import Trace

FORMAT = "nntrace-trace"
FORMAT_VERSION = 1


class TraceFormatError(NNTraceError, ValueError):
    """A trace file that cannot be read: wrong format, unknown version, missing arrays."""


def arrays_path(path: Path) -> Path:
    return path.with_name(path.name + ".npz")


def save_trace(trace: Trace, path: str | Path, layers: Iterable[str] | None = None, everything: bool = False,
               overwrite: bool = False) -> Path:
    """Write every layer-level event and the fine-grained steps of `layers` (default: the first conv
    or recurrent layer; `everything`: all layers)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists; choose another name or pass overwrite")
    if everything:
        fine = [name for name, _ in trace.layers]
    else:
        fine = list(layers) if layers else [n for n in [trace.default_fine_layer()] if n]
    for name in fine:
        if name not in dict(trace.layers):
            raise KeyError(f"no layer named '{name}'; layers: {', '.join(n for n, _ in trace.layers)}")
    arrays: dict[str, np.ndarray] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {"$array": key}
        if isinstance(value, (np.floating, np.integer, np.bool_)):
            return value.item()
        if isinstance(value, tuple):
            return [encode(v) for v in value]
        return value

    def line(event: Event) -> str:
        return json.dumps({"kind": event.kind, **{k: encode(v) for k, v in event_fields(event).items()}})

    header = {"format": FORMAT, "version": FORMAT_VERSION, "schema": SCHEMA_VERSION, "model": trace.model_name,
              "layers": [{"name": n, "class": c} for n, c in trace.layers], "fine_layers": fine,
              "context": {k: encode(v) for k, v in trace.context.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for event in trace.events:
            f.write(line(event) + "\n")
        for name in fine:
            for event in trace.steps(name):
                f.write(line(event) + "\n")
    np.savez(arrays_path(path), **arrays)
    return path


def _tuple_fields(cls: type) -> set[str]:
    hints = typing.get_type_hints(cls)
    return {f.name for f in fields(cls) if "tuple" in str(hints.get(f.name, ""))}


def load_trace(path: str | Path) -> Trace:
    """Read a trace file written by `save_trace`; the Trace replays without the model."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no trace file at '{path}'")
    with path.open(encoding="utf-8") as f:
        try:
            header = json.loads(f.readline())
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"'{path}' is not an nntrace trace file (first line is not JSON)") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise TraceFormatError(f"'{path}' is not an nntrace trace file")
        if header.get("version") != FORMAT_VERSION or header.get("schema") not in READABLE_SCHEMAS:
            raise TraceFormatError(
                f"'{path}' is trace format version {header.get('version')} (schema {header.get('schema')}); "
                f"this nntrace reads version {FORMAT_VERSION} (schemas {', '.join(map(str, READABLE_SCHEMAS))})")
        lines = [json.loads(l) for l in f if l.strip()]
    npz = arrays_path(path)
    if not npz.exists():
        raise TraceFormatError(f"'{path}' needs its arrays file '{npz}' beside it")
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}

    def decode(value: Any) -> Any:
        if isinstance(value, dict) and "$array" in value:
            if value["$array"] not in arrays:
                raise TraceFormatError(f"'{npz}' lacks array {value['$array']}")
            return arrays[value["$array"]]
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    events, steps = [], {}
    for raw in lines:
        cls = EVENT_TYPES.get(raw.pop("kind", None))
        if cls is None:
            raise TraceFormatError(f"'{path}' has an event of unknown kind")
        tuples = _tuple_fields(cls)
        kwargs = {k: (tuple(decode(v)) if k in tuples and v is not None else decode(v)) for k, v in raw.items()}
        event = cls(**kwargs)
        if cls.KIND in ("layer_start", "layer_end"):
            events.append(event)
        else:
            steps.setdefault(event.layer, []).append(event)
    context = {k: decode(v) for k, v in header.get("context", {}).items()}
    return Trace(header["model"], [(l["name"], l["class"]) for l in header["layers"]], events, context,
                 recorded_steps=steps)
