"""Guided lessons: load and validate lesson files, resolve their positions against a trace, check
answers and open tasks, and keep honest scores in the user's state directory.

A lesson file (TOML) names a shipped model and an input, then steps. A step has Markdown `text`, an
optional `goto` (a layer selector such as `first:Conv2D`, a position rule such as
`{filter = "most_active", cell = "max_interior"}`, and the selected `unit`), and either a
`question` or an open `task`.

A question is **compute** (the learner computes the answer from `operands` printed on screen; the
lesson's `formula` says how) or **predict** (asked before the screen shows the result). Its answer
is read from the traced numbers, never typed into the file, and the quantities named in `hide` are
withheld on screen until it is answered. A task is checked against the learner's own trace and
cursor (a sentence that flips the prediction, a token where the forget gate closes, the patch where
a filter fires most).
"""
from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrace.layers.errors import NNTraceError

LESSON_DIR = Path(__file__).resolve().parent
MAX_TRIES = 3
KINDS = ("compute", "predict")
#: The shipped models a lesson can name.
MODELS = ("cnn", "rnn", "lstm", "gru", "attention")
#: Open tasks: a sentence that flips the prediction; the unit and token where the forget gate closes
#: most (the lowest f of the sweep); the patch where a filter fires most.
TASKS = ("flip_prediction", "forget_closes", "max_patch")


class LessonError(NNTraceError, ValueError):
    """A lesson file with a mistake; the message names the file and the step."""


@dataclass
class Question:
    prompt: str
    answer: dict                     # how to read the answer from the trace
    kind: str = "compute"            # compute | predict
    options: list[str] | str | None = None  # choices, or "labels" / "variants"
    tolerance: float = 1e-3          # absolute (relative above 1), for numbers
    hint: str = ""
    operands: dict[str, str] = field(default_factory=dict)  # name → event field, e.g. "f[unit]"
    formula: str | None = None       # how the operands give the answer, e.g. "f * c_prev + i * g"
    hide: list[str] = field(default_factory=list)           # withheld on screen until answered


@dataclass
class Task:
    kind: str                        # one of TASKS
    prompt: str
    hint: str = ""


@dataclass
class Step:
    text: str
    goto: dict | None = None
    question: Question | None = None
    task: Task | None = None
    report: str | None = None        # an experiment group to show instead of a trace step
    sgd: dict | None = None          # one SGD step on a copy of the model: {learning_rate = …}
    hide: list[str] = field(default_factory=list)  # withheld for the whole step (a later question's answer)


@dataclass
class Lesson:
    number: int
    title: str
    model: str                       # one of MODELS
    input: dict
    steps: list[Step]
    path: Path
    needs_report: bool = False

    @property
    def id(self) -> str:
        return self.path.stem

    @property
    def questions(self) -> list[int]:
        """Indices of the steps that are scored (questions and tasks)."""
        return [i for i, s in enumerate(self.steps) if s.question or s.task]


def fail(path: Path, step: int | None, message: str) -> LessonError:
    where = f"{path.name}" + (f", step {step + 1}" if step is not None else "")
    return LessonError(f"lesson {where}: {message}")


def parse_question(path: Path, i: int, q: dict) -> Question:
    if not isinstance(q, dict) or "prompt" not in q or "answer" not in q:
        raise fail(path, i, "a question needs 'prompt' and 'answer'")
    unknown = set(q) - {"prompt", "answer", "kind", "options", "tolerance", "hint", "operands", "formula", "hide"}
    if unknown:
        raise fail(path, i, f"unknown question keys {sorted(unknown)}")
    kind = q.get("kind", "predict" if q.get("options") else "compute")
    if kind not in KINDS:
        raise fail(path, i, f"question kind must be one of {KINDS}, got '{kind}'")
    if kind == "compute" and not (q.get("operands") and q.get("formula")):
        raise fail(path, i, "a compute question names its 'operands' and the 'formula' that combines them")
    return Question(q["prompt"], q["answer"], kind, q.get("options"), float(q.get("tolerance", 1e-3)),
                    q.get("hint", ""), dict(q.get("operands", {})), q.get("formula"), list(q.get("hide", [])))


def parse_lesson(path: Path) -> Lesson:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise fail(path, None, f"not valid TOML ({exc})") from exc
    for key in ("title", "model", "steps"):
        if key not in data:
            raise fail(path, None, f"missing '{key}'")
    if data["model"] not in MODELS:
        raise fail(path, None, f"model must be one of {', '.join(MODELS)}, got '{data['model']}'")
    steps = []
    for i, raw in enumerate(data["steps"]):
        unknown = set(raw) - {"text", "goto", "question", "task", "report", "sgd", "hide"}
        if unknown or "text" not in raw:
            raise fail(path, i, f"a step needs 'text' and may have 'goto', 'question', 'task', 'report', 'sgd' "
                                f"and 'hide' (unknown: {sorted(unknown)})")
        if not isinstance(raw.get("hide", []), list):
            raise fail(path, i, "a step's 'hide' is a list of quantities, e.g. hide = [\"loss\"]")
        question = parse_question(path, i, raw["question"]) if "question" in raw else None
        task = None
        if "task" in raw:
            t = raw["task"]
            if t.get("kind") not in TASKS or "prompt" not in t:
                raise fail(path, i, f"a task needs 'prompt' and a 'kind' among {TASKS}")
            task = Task(t["kind"], t["prompt"], t.get("hint", ""))
        if question and task:
            raise fail(path, i, "a step has a question or a task, not both")
        if "sgd" in raw and not (isinstance(raw["sgd"], dict) and "learning_rate" in raw["sgd"]):
            raise fail(path, i, "an 'sgd' step names its 'learning_rate'")
        steps.append(Step(raw["text"], raw.get("goto"), question, task, raw.get("report"), raw.get("sgd"),
                          list(raw.get("hide", []))))
    number = int(path.stem.split("-")[0]) if path.stem.split("-")[0].isdigit() else 0
    return Lesson(number, data["title"], data["model"], data.get("input", {}), steps, path,
                  bool(data.get("needs_report", False)))


def load_lessons(directory: Path = LESSON_DIR) -> list[Lesson]:
    return sorted((parse_lesson(p) for p in directory.glob("*.toml")), key=lambda l: l.number)


# -- resolving positions against a trace -------------------------------------------------------
def resolve_layer(selector: str, trace) -> str:
    names = [n for n, _ in trace.layers]
    if selector in names:
        return selector
    parts = selector.split(":")
    if len(parts) in (2, 3) and parts[0] in ("first", "last", "nth"):
        matches = [n for n, c in trace.layers if c == parts[1]]
        if parts[0] == "nth":
            k = int(parts[2]) - 1 if len(parts) == 3 else 0
            if 0 <= k < len(matches):
                return matches[k]
        elif matches:
            return matches[0] if parts[0] == "first" else matches[-1]
    raise KeyError(f"no layer matches '{selector}' (layers: {', '.join(f'{n} ({c})' for n, c in trace.layers)})")


def most_active_filter(trace, layer: str) -> int:
    """The filter whose output rises highest anywhere on the picture (a detector that fires)."""
    return int(np.argmax(trace.output(layer).max(axis=(0, 1))))


def strongest_interior_cell(trace, layer: str, event) -> tuple[int, int]:
    """The output cell of the event's filter with the largest value whose patch has no padding."""
    out = trace.output(layer)[..., event.filter]
    kh, kw = event.patch.shape[:2]
    (h, w), (sh, sw), (ph, pw) = event.input_size, event.strides, event.pad
    best, where = -np.inf, (0, 0)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            top, left = r * sh - ph // 2, c * sw - pw // 2
            if top >= 0 and left >= 0 and top + kh <= h and left + kw <= w and out[r, c] > best:
                best, where = out[r, c], (r, c)
    return where


def step_matches(event, at: dict, trace, layer: str) -> bool:
    for key, want in at.items():
        if key == "kind":
            if event.kind != want:
                return False
        elif key == "filter" and want == "most_active":
            if getattr(event, "filter", None) != most_active_filter(trace, layer):
                return False
        elif key == "cell" and want in ("max", "max_interior"):
            out = trace.output(layer)
            if want == "max":
                r, c = np.unravel_index(int(np.argmax(out[..., event.filter])), out.shape[:2])
            else:
                r, c = strongest_interior_cell(trace, layer, event)
            if (event.row, event.col) != (int(r), int(c)):
                return False
        elif key == "window" and want == "distinct":  # real values all different, none zero
            real = event.window[event.real]
            if real.size < 2 or len(np.unique(real)) != real.size or np.any(real == 0):
                return False
        elif key == "unit" and want in ("predicted", "largest_bias", "label"):
            if want == "predicted":
                target = int(np.argmax(trace.probabilities))
            elif want == "label":  # a backward pass: the class its loss is taken against
                target = int(trace.context["label"])
            else:
                target = int(np.argmax(np.abs(trace.model.layer(layer).weights["bias"])))
            if getattr(event, "unit", None) != target:
                return False
        elif key == "winner" and want == "not_first":  # max pooling: the winner is not window cell (0, 0)
            if getattr(event, "winner", None) is None or tuple(event.winner) == (0, 0):
                return False
        elif key == "masked" and want is False:
            if getattr(event, "masked", True):
                return False
        elif key == "token":
            tokens = trace.context.get("tokens") or []
            t = getattr(event, "time", getattr(event, "position", getattr(event, "query", None)))
            if want == "last_real":
                want_t = len([x for x in tokens if x]) - 1
                if t != want_t:
                    return False
            elif t is None or t >= len(tokens) or tokens[t] != want:
                return False
        elif getattr(event, key, object()) != want:
            return False
    return True


def resolve_goto(goto: dict, trace) -> tuple[str, int]:
    """(layer name, index of the step event) for a step's `goto`. `at = {largest = FIELD}` picks,
    among the steps matching the rest of `at`, the one whose |FIELD| is largest."""
    layer = resolve_layer(goto["layer"], trace)
    at = dict(goto.get("at") or {})
    if not at:
        return layer, 0
    if "step" in at and len(at) == 1:
        return layer, int(at["step"])
    if not trace.has_steps(layer):
        raise KeyError(f"layer '{layer}' has no fine-grained steps in this trace")
    largest = at.pop("largest", None)
    if largest is not None:
        best, where = -1.0, None
        for i, event in enumerate(trace.steps(layer)):
            if step_matches(event, at, trace, layer) and getattr(event, largest, None) is not None:
                size = float(np.max(np.abs(np.asarray(getattr(event, largest), np.float64))))
                if size > best:
                    best, where = size, i
        if where is None:
            raise KeyError(f"no step of '{layer}' matches {at} with a field '{largest}'")
        return layer, where
    for i, event in enumerate(trace.steps(layer)):
        if step_matches(event, at, trace, layer):
            return layer, i
    raise KeyError(f"no step of '{layer}' matches {at}")


def resolve_unit(goto: dict | None, trace, event) -> int:
    """The unit (or class, or key) a step selects: a number (default 0), `predicted`, `second`,
    `largest_h`, `first_masked` (an attention step's first masked key), or `max:FIELD` / `min:FIELD`
    (where the step's field is largest or smallest, e.g. `max:weights`, `min:z`)."""
    want = (goto or {}).get("unit", 0)
    if want == "label":  # a backward pass: the class its loss is taken against
        return int(trace.context["label"])
    if want == "predicted":
        return int(np.argmax(trace.probabilities))
    if want == "second":  # the runner-up class
        return int(np.argsort(trace.probabilities)[-2])
    if want == "largest_h":  # the unit the step moves most
        return int(np.argmax(np.abs(event.h)))
    if want == "first_masked":  # attention: the first key the query may not read (padding)
        if event.mask is None or event.mask.all():
            raise KeyError(f"'{event.label}' reads every key: no key is masked")
        return int(np.argmin(event.mask))
    if want == "last":  # the last output cell of a kernel gradient (its running sum is the total)
        return int(np.size(event.products)) - 1
    if isinstance(want, str) and want.split(":")[0] in ("max", "min", "maxabs"):  # e.g. max:weights, min:z
        how, name = want.split(":", 1)
        if event is None or getattr(event, name, None) is None:
            raise KeyError(f"unit '{want}': the step has no field '{name}'")
        values = np.asarray(getattr(event, name), np.float64)
        if how == "maxabs":  # e.g. maxabs:products (a flat cell index), maxabs:dc
            return int(np.argmax(np.abs(values)))
        return int(np.argmax(values) if how == "max" else np.argmin(values))
    return int(want)


def event_at(trace, layer: str, index: int):
    for i, event in enumerate(trace.steps(layer)):
        if i == index:
            return event
    return None


def previous_output(trace, layer: str) -> np.ndarray:
    names = [n for n, _ in trace.layers]
    i = names.index(layer)
    if i == 0:
        raise KeyError(f"'{layer}' is the first layer: it has no previous layer's output")
    return trace.output(names[i - 1])


def pick(values: Any, index: Any, unit: int = 0) -> Any:
    arr = np.asarray(values)
    if index is None:
        return arr.item() if arr.size == 1 else arr
    if index == "unit":
        return arr[unit].item()
    if index == "cell":  # a grid's cell by its flat (row-major) index, the selected unit
        return arr.reshape(-1)[unit].item()
    reducers = {"max": lambda a: float(a.max()), "argmax": lambda a: int(a.argmax()), "min": lambda a: float(a.min()),
                "sum": lambda a: float(a.sum()), "count_true": lambda a: int(a.sum()),
                "count_zero": lambda a: int((a == 0).sum()), "size": lambda a: int(a.size),
                "mean": lambda a: float(np.nanmean(a))}
    if isinstance(index, str) and index in reducers:
        return reducers[index](arr)
    if isinstance(index, list):
        index = tuple(unit if i == "unit" else i for i in index)
    return arr[index].item()


# -- operands and formulas ---------------------------------------------------------------------
OPERAND = re.compile(r"^(?P<field>[a-z_]+)(?:\[(?P<index>[^\]]*)\])?$")


def parse_index(text: str, unit: int) -> tuple:
    parts = []
    for raw in text.split(","):
        raw = raw.strip()
        if raw == ":":
            parts.append(slice(None))
        elif raw == "unit":
            parts.append(unit)
        else:
            parts.append(int(raw))
    return tuple(parts)


def report_value(index: str, report: list[dict] | None) -> float:
    """`report[group, label, stat]`: a statistic of one variant over its seeds (see variant_stats)."""
    from nntrace.models.experiments import variant_stats

    group, label, stat = (part.strip() for part in index.split(","))
    stats = variant_stats([r for r in report or [] if r["group"] == group])
    for s in stats:
        if s["label"] == label:
            return float(s[stat])
    raise KeyError(f"the experiment report has no variant '{label}' in '{group}'")


def operand_value(spec: str, trace, event, unit: int, layer: str | None = None,
                  report: list[dict] | None = None) -> float | np.ndarray:
    """An operand as the lesson names it: an event field (`f[unit]`, `patch[:, :, 0]`, `bias`),
    `input[...]` (the previous layer's output), `output[...]` (this layer's output), `pixels[...]`
    (the model input), `patch_rows` / `window_rows` (a kernel's height) or `report[group, label, stat]`.
    `field[read]` keeps an attention step's values at the keys its query may read."""
    m = OPERAND.match(spec.replace(" ", ""))
    if spec.replace(" ", "").startswith("report["):
        return report_value(spec.strip()[len("report["):-1], report)
    if not m:
        raise KeyError(f"cannot read operand '{spec}'")
    name, index = m.group("field"), m.group("index")
    if name in ("patch_rows", "window_rows"):
        return float(np.shape(getattr(event, name.split("_")[0]))[0])
    if name == "input":
        values = previous_output(trace, layer)
    elif name == "output":
        values = trace.output(layer)
    elif name == "pixels":
        values = np.asarray(trace.context["model_input"])[0]
    else:
        if event is None or not hasattr(event, name):
            raise KeyError(f"operand '{spec}': the step has no field '{name}'")
        values = getattr(event, name)
    arr = np.asarray(values, dtype=np.float64)
    if index in ("max", "min"):
        return float(arr.max() if index == "max" else arr.min())
    if index in ("cell", "prev_cell"):  # a grid's selected cell (flat, row-major), or the one before it
        k = unit - (index == "prev_cell")
        if not 0 <= k < arr.size:
            raise KeyError(f"operand '{spec}': no cell {k}")
        return float(arr.reshape(-1)[k])
    if index == "read":
        mask = getattr(event, "mask", None)
        return arr if mask is None else arr[np.asarray(mask, bool)]
    out = arr if index is None else arr[parse_index(index, unit)]
    return float(out) if np.ndim(out) == 0 else out


FUNCTIONS = {"sum": np.sum, "exp": np.exp, "log": np.log, "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
             "relu": lambda z: np.maximum(z, 0), "max": np.max, "min": np.min, "mean": np.mean,
             "floor": np.floor, "abs": np.abs, "count": lambda a: float(np.asarray(a).size)}


def evaluate(formula: str, operands: dict[str, Any]) -> float:
    """The lesson's formula over operand values (names, arithmetic and FUNCTIONS only)."""
    if not re.fullmatch(r"[\w\s+\-*/().,]*", formula) or "__" in formula:
        raise KeyError(f"formula '{formula}' may use names, numbers, + - * / and ( ) only")
    return float(eval(formula, {"__builtins__": {}}, {**FUNCTIONS, **operands}))  # noqa: S307 — checked above


# -- answers -----------------------------------------------------------------------------------
def expected_answer(question: Question, trace, event, report: list[dict] | None = None, unit: int = 0,
                    layer: str | None = None) -> float | str:
    """Read the answer from the trace (or the experiment report); never from the lesson file."""
    spec = question.answer
    if "experiment" in spec:
        return experiment_answer(spec, report)
    if "output" in spec:
        value = pick(trace.output(resolve_layer(spec["output"], trace)), spec.get("index"), unit)
    elif "field" in spec:
        if event is None:
            raise KeyError("the answer reads a step field but the step has no 'goto' position")
        if not hasattr(event, spec["field"]):
            raise KeyError(f"a {event.kind} step has no field '{spec['field']}'")
        value = pick(getattr(event, spec["field"]), spec.get("index"), unit)
    elif "prediction" in spec:
        probs = trace.probabilities
        return (trace.context.get("labels") or [str(i) for i in range(len(probs))])[int(np.argmax(probs))]
    elif "formula" in spec:  # a what-if the trace does not hold (e.g. dropout in training)
        value = evaluate(question.formula, {k: operand_value(v, trace, event, unit, layer, report)
                                            for k, v in question.operands.items()})
    elif "same_as_input" in spec:  # does a layer pass its input through unchanged?
        name = resolve_layer(spec["same_as_input"], trace)
        same = np.array_equal(trace.output(name), previous_output(trace, name))
        return spec.get("names", ["yes", "no"])[0 if same else 1]
    elif "nearer" in spec:  # which of two fields is the first one closer to, e.g. h: h_prev or h̃?
        v = float(pick(getattr(event, spec["nearer"]), spec.get("index"), unit))
        a, b = (float(pick(getattr(event, f), spec.get("index"), unit)) for f in spec["of"])
        names = spec.get("names", list(spec["of"]))
        if abs(abs(v - a) - abs(v - b)) <= 1e-6:
            raise KeyError(f"'{spec['nearer']}' is as close to {spec['of'][0]} as to {spec['of'][1]}: no answer")
        return names[0] if abs(v - a) < abs(v - b) else names[1]
    elif "sweep" in spec:  # the real token whose step of this sweep has the largest FIELD (e.g. norm)
        steps = [e for e in trace.steps(layer) if getattr(e, "direction", None) == event.direction and not e.masked]
        best = max(steps, key=lambda e: float(getattr(e, spec["sweep"])))
        return (trace.context.get("tokens") or [])[best.time]
    elif "cell" in spec:  # a window cell, as "row i col j"
        i, j = getattr(event, spec["cell"])
        return f"row {int(i)} col {int(j)}"
    elif "compare" in spec:  # e.g. max vs average of a pooling window
        a, b = (float(pick(getattr(event, f), i, unit)) for f, i in spec["compare"])
        names = spec.get("names", ["first", "second", "equal"])
        return names[0] if a > b + 1e-9 else names[1] if b > a + 1e-9 else names[2]
    else:
        raise KeyError(f"unknown answer {spec}")
    if spec.get("as") == "label":
        return (trace.context.get("labels") or [])[int(value)]
    if spec.get("as") == "yes_no":
        return "yes" if bool(value) else "no"
    if spec.get("as") == "changes":
        return "no" if bool(value) else "yes"
    if spec.get("as") == "sign":  # names for positive, negative, zero
        names = spec.get("names", ["positive", "negative", "zero"])
        return names[0] if value > 0 else names[1] if value < 0 else names[2]
    return float(value) if not isinstance(value, str) else value


def experiment_answer(spec: dict, report: list[dict] | None) -> str:
    from nntrace.models.experiments import spread_reading, variant_stats

    rows = [r for r in report or [] if r["group"] == spec["experiment"]]
    if not rows:
        raise KeyError(f"the experiment report has no group '{spec['experiment']}'")
    stats = variant_stats(rows)
    if spec.get("by") == "spread":  # is the best variant's lead inside the seed-to-seed spread?
        best = max(stats, key=lambda s: s["val_mean"])
        other = next(s for s in stats if s is not best)
        return "noise" if abs(best["test_mean"] - other["test_mean"]) <= best["test_sd"] + other["test_sd"] \
            else "real"
    key = {"keras_f1": "test_mean", "val": "val_mean"}.get(spec.get("by", "keras_f1"), "test_mean")
    return max(stats, key=lambda s: s[key])["label"]


def options_for(question: Question, trace, report: list[dict] | None = None) -> list[str] | None:
    if question.options == "labels":
        return list(trace.context.get("labels") or [])
    if question.options == "tokens":  # the sentence's real tokens
        return list(dict.fromkeys(t for t in trace.context.get("tokens") or [] if t))
    if question.options == "variants":
        return list(dict.fromkeys(r["label"] for r in report or [] if r["group"] == question.answer.get("experiment")))
    return question.options


def normalise(text: str) -> str:
    """Lower case, single spaces, and `x` for `×` (what a keyboard types for "kernel 3×3")."""
    return " ".join(text.replace("×", "x").lower().split())


def decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def check_answer(given: str, expected: float | str, tolerance: float, options: list[str] | None = None) -> bool:
    """Text as typed or, with options, by its number. A number within `tolerance` (relative above
    1), or typed to 2 or more decimals that the expected value rounds to (0.95 for 0.9512)."""
    given = given.strip().replace("−", "-").replace(",", ".")
    if isinstance(expected, str):
        if options and given.isdigit() and 1 <= int(given) <= len(options):
            given = options[int(given) - 1]
        return normalise(given) == normalise(expected)
    try:
        value = float(given)
    except ValueError:
        return False
    if not math.isfinite(value):
        return False
    if abs(value - expected) <= tolerance * max(1.0, abs(expected)):
        return True
    d = decimals(given.lstrip("+-"))
    return d >= 2 and abs(value - expected) <= 0.5 * 10 ** -d + 1e-12


def pass_trace(goto: dict | None, trace, cache: dict):
    """The trace a step's goto reads: the forward trace or, with `pass = "backward"`, the backward
    pass against `label` (`predicted` by default, `second` for the runner-up class, or a class
    number), built once per label into `cache`."""
    if not goto or goto.get("pass", "forward") != "backward":
        return trace
    want = goto.get("label", "predicted")
    order = np.argsort(trace.probabilities)
    label = int(order[-1]) if want == "predicted" else int(order[-2]) if want == "second" else int(want)
    if label not in cache:
        from nntrace.models.backward_trace import trace_backward

        made = trace_backward(trace.model, trace.context.get("model_input"), label)
        made.context.setdefault("model_input", trace.context.get("model_input"))
        made.context.setdefault("true_label", trace.context.get("true_label"))
        cache[label] = made
    return cache[label]


@dataclass
class SGDStep:
    """One plain SGD step of the whole model (on a copy), seen at one dense unit's bias: its value,
    its gradient (the backward step's ∂L/∂b), the learning rate, its value after the model's step,
    and the loss before and after (the model's `train_step`)."""

    layer: str
    unit: int
    weight: float
    gradient: float
    learning_rate: float
    new_weight: float
    loss_before: float
    loss_after: float
    kind: str = "sgd_step"


def sgd_step(spec: dict, trace, event, layer: str | None) -> SGDStep:
    import copy

    from nntrace.models.gradients import train_step

    if event is None or event.kind != "dense_gradient" or event.bias_gradient is None:
        raise KeyError("an 'sgd' step goes to a dense unit's backward step (a unit with a bias)")
    lr = float(spec["learning_rate"])
    model = copy.deepcopy(trace.model)
    done = train_step(model, trace.context["model_input"], np.array([trace.context["label"]]), "sgd", lr)
    before, after = trace.model.layer(layer).weights["bias"], model.layer(layer).weights["bias"]
    return SGDStep(layer, event.unit, float(before[event.unit]), float(event.bias_gradient), lr,
                   float(after[event.unit]), float(done.loss_before), float(done.loss_after))


def validate(lesson: Lesson, trace, report: list[dict] | None = None) -> None:
    """Resolve every goto, operand and answer against `trace`; check that each compute question's
    formula over its operands gives its answer. LessonError naming the file and step."""
    event, layer, forward, cache = None, None, trace, {}
    for i, step in enumerate(lesson.steps):
        try:
            if step.goto:
                trace = pass_trace(step.goto, forward, cache)
                layer, index = resolve_goto(step.goto, trace)
                event = event_at(trace, layer, index) if trace.has_steps(layer) else None
            sgd = sgd_step(step.sgd, trace, event, layer) if step.sgd else None
            if step.report and report is not None and not any(r["group"] == step.report for r in report):
                raise KeyError(f"the experiment report has no group '{step.report}'")
            q = step.question
            if q:
                unit = resolve_unit(step.goto, trace, event)
                answer = expected_answer(q, trace, sgd or event, report, unit, layer)
                options = options_for(q, trace, report)
                if options is not None and str(answer) not in options:
                    raise KeyError(f"the answer '{answer}' is not among the options {options}")
                if q.kind == "compute" and not isinstance(answer, str):
                    values = {k: operand_value(v, trace, sgd or event, unit, layer, report)
                              for k, v in q.operands.items()}
                    computed = evaluate(q.formula, values)
                    if not check_answer(f"{computed:.6f}", float(answer), q.tolerance):
                        raise KeyError(f"the formula '{q.formula}' gives {computed:.6f}, the trace {answer:.6f}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise fail(lesson.path, i, str(exc).strip("'\"")) from exc


# -- progress ------------------------------------------------------------------------------------
OUTCOMES = ("first_try", "after_hint", "revealed")


def state_file() -> Path:
    from nntrace.views.app_log import state_dir

    return state_dir() / "lessons.json"


@dataclass
class Progress:
    """Per lesson: the next step, whether it was finished, and how each question was answered.
    Saved on every change; a progress file that cannot be read is moved aside, never lost."""

    path: Path = field(default_factory=state_file)
    data: dict = field(default_factory=dict)
    note: str = ""                   # what happened to an unreadable file, or why saving failed

    @classmethod
    def load(cls) -> "Progress":
        path = state_file()
        if not path.exists():
            return cls(path, {})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            backup = path.with_name(path.name + ".bak")
            try:
                path.replace(backup)
                note = f"the progress file {path} could not be read ({exc}); it was moved to {backup}"
            except OSError:
                note = f"the progress file {path} could not be read ({exc})"
            return cls(path, {}, note + "; starting fresh")
        return cls(path, {k: v for k, v in data.items() if isinstance(v, dict)})

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            self.note = f"progress not saved: {exc}"

    def entry(self, lesson: Lesson) -> dict:
        return self.data.setdefault(lesson.id, {})

    def step_of(self, lesson: Lesson) -> int:
        """The step to resume at, clamped to the lesson."""
        raw = self.data.get(lesson.id, {}).get("step", 0)
        step = raw if isinstance(raw, int) and not isinstance(raw, bool) else 0
        return min(max(step, 0), len(lesson.steps) - 1)

    def done(self, lesson: Lesson) -> bool:
        return bool(self.data.get(lesson.id, {}).get("done", False))

    def scores(self, lesson: Lesson) -> dict[str, str]:
        raw = self.data.get(lesson.id, {}).get("scores", {})
        return {k: v for k, v in raw.items() if v in OUTCOMES} if isinstance(raw, dict) else {}

    def counts(self, lesson: Lesson) -> dict[str, int]:
        scores = self.scores(lesson)
        return {o: sum(1 for v in scores.values() if v == o) for o in OUTCOMES}

    def passed(self, lesson: Lesson) -> bool:
        """✓: finished with nothing revealed."""
        return self.done(lesson) and self.counts(lesson)["revealed"] == 0

    def label(self, lesson: Lesson) -> str:
        """What `nntrace lessons` shows: ✓ only when nothing was revealed."""
        c = self.counts(lesson)
        tally = f"{c['first_try']} first try, {c['after_hint']} after a hint, {c['revealed']} revealed"
        if self.done(lesson):
            return ("✓ " if self.passed(lesson) else "done: ") + tally
        if self.step_of(lesson) or any(c.values()):
            return f"step {self.step_of(lesson) + 1}/{len(lesson.steps)}; {tally}"
        return "·"

    def record(self, lesson: Lesson, step: int, done: bool = False) -> None:
        entry = self.entry(lesson)
        entry["step"] = step
        entry["done"] = bool(entry.get("done", False)) or done
        self.save()

    def score(self, lesson: Lesson, step: int, outcome: str) -> None:
        """The first outcome of a question counts; a replay does not overwrite it."""
        scores = self.entry(lesson).setdefault("scores", {})
        if not isinstance(scores, dict):
            scores = self.entry(lesson)["scores"] = {}
        scores.setdefault(str(step), outcome)
        self.save()

    def reset(self, lesson: Lesson | None = None) -> None:
        if lesson is None:
            self.data.clear()
        else:
            self.data.pop(lesson.id, None)
        self.save()


@dataclass
class Feedback:
    correct: bool
    message: str
    revealed: bool = False


class LessonSession:
    """Plays one lesson against a trace: where to go, what to ask and hide, whether an answer is
    right, and how each question was answered."""

    def __init__(self, lesson: Lesson, trace, progress: Progress | None = None,
                 report: list[dict] | None = None, start: int | None = None) -> None:
        self.lesson, self.trace, self.progress, self.report = lesson, trace, progress, report
        self.index = start if start is not None else (progress.step_of(lesson) if progress else 0)
        self.index = min(max(self.index, 0), len(lesson.steps) - 1)
        self.tries = 0
        self.answered = False
        self.event = None
        self.layer: str | None = None
        self.unit = 0
        self.position: tuple[str, int] | None = None
        self.current = trace              # the trace the step reads: forward, or a backward pass
        self.backward_traces: dict = {}   # label → backward trace
        self.sgd: SGDStep | None = None
        self.enter()

    @property
    def step(self) -> Step:
        return self.lesson.steps[self.index]

    @property
    def finished(self) -> bool:
        return self.index >= len(self.lesson.steps)

    def enter(self) -> None:
        """Resolve the current step's position (the app moves there) and its selected unit."""
        self.tries, self.answered = 0, self.step.question is None and self.step.task is None
        if self.step.goto:
            self.current = pass_trace(self.step.goto, self.trace, self.backward_traces)
            self.position = resolve_goto(self.step.goto, self.current)
            self.layer, idx = self.position
            self.event = event_at(self.current, self.layer, idx) if self.current.has_steps(self.layer) else None
            self.unit = resolve_unit(self.step.goto, self.current, self.event)
        self.sgd = sgd_step(self.step.sgd, self.current, self.event, self.layer) if self.step.sgd else None

    def hidden(self) -> frozenset:
        """The quantities the screen withholds: the open question's; for the whole step those a
        later question asks for (the step's own `hide`); and those the later questions at this same
        place withhold, so that answering one question never shows the next one's answer."""
        q = self.step.question
        return (frozenset(self.step.hide) | (frozenset(q.hide) if q and not self.answered else frozenset())
                | self.hidden_for_later())

    def hidden_for_later(self) -> frozenset:
        """What the questions of the following steps at this step's place (the same `goto`) hide."""
        if not self.step.goto:  # a step without a place of its own
            return frozenset()
        later = self.lesson.steps[self.index + 1:]
        return frozenset(name for step in later if step.question and step.goto == self.step.goto
                         for name in step.question.hide)

    def expected(self) -> float | str:
        return expected_answer(self.step.question, self.current, self.sgd or self.event, self.report, self.unit,
                               self.layer)

    def options(self) -> list[str] | None:
        return options_for(self.step.question, self.current, self.report) if self.step.question else None

    def operands(self) -> dict[str, float | np.ndarray]:
        q = self.step.question
        return {k: operand_value(v, self.current, self.sgd or self.event, self.unit, self.layer, self.report)
                for k, v in q.operands.items()}

    def answer(self, given: str) -> Feedback:
        q = self.step.question
        if q is None or self.answered:
            return Feedback(True, "")
        expected = self.expected()
        if check_answer(given, expected, q.tolerance, self.options()):
            self.answered = True
            self.score("first_try" if self.tries == 0 else "after_hint")
            return Feedback(True, f"Correct: {format_answer(expected)}.")
        self.tries += 1
        if self.tries >= MAX_TRIES:
            self.answered = True
            self.score("revealed")
            return Feedback(False, f"The answer is {format_answer(expected)}.", revealed=True)
        return Feedback(False, f"Not quite. Hint: {q.hint or 'look again at the numbers on screen.'}")

    def check_task(self, replay) -> Feedback:
        """An open task, checked against the learner's own trace and cursor (the replay model)."""
        task = self.step.task
        ok, why = task_done(task, replay, self.trace, self.step.goto)
        if ok:
            self.answered = True
            self.score("first_try" if self.tries == 0 else "after_hint")
            return Feedback(True, f"Done: {why}.")
        self.tries += 1
        if self.tries >= MAX_TRIES + 2:  # open tasks get more tries before the way is shown
            self.answered = True
            self.score("revealed")
            return Feedback(False, f"Not yet ({why}). {task.hint}", revealed=True)
        return Feedback(False, f"Not yet: {why}. Hint: {task.hint}")

    def score(self, outcome: str) -> None:
        if self.progress:
            self.progress.score(self.lesson, self.index, outcome)

    def next(self) -> bool:
        """Move on (only once the question is answered or revealed); False when the lesson ends."""
        if not self.answered:
            return True
        self.index += 1
        if self.progress:
            self.progress.record(self.lesson, min(self.index, len(self.lesson.steps) - 1), done=self.finished)
        if self.finished:
            return False
        self.enter()
        return True


def task_done(task: Task, replay, original, goto: dict | None) -> tuple[bool, str]:
    """(done, what the trace says) for an open task."""
    e = replay.event
    if task.kind == "flip_prediction":
        labels = replay.trace.context.get("labels") or []
        before, now = int(np.argmax(original.probabilities)), int(np.argmax(replay.trace.probabilities))
        name = lambda k: labels[k] if k < len(labels) else str(k)  # noqa: E731
        if replay.trace is original:
            return False, f"the sentence is still the lesson's (predicted {name(before)}); press t to type one"
        if now == before:
            return False, f"your sentence is still predicted {name(now)}"
        return True, f"'{replay.trace.context.get('text', '')}' is predicted {name(now)}, not {name(before)}"
    if task.kind == "forget_closes":
        if e is None or e.kind != "lstm_step":
            return False, "the cursor is not on an LSTM step"
        if e.masked:
            return False, "this token is padding: its step did not happen"
        f = float(e.f[replay.unit])
        lowest = min(float(ev.f.min()) for ev in replay.sweep() if not ev.masked)
        if f <= lowest:
            return True, f"unit {replay.unit} keeps only {f:.4f} of its cell at token {e.time}: the lowest f of this sweep"
        return False, f"f of unit {replay.unit} at token {e.time} is {f:.4f}; somewhere in this sweep it is lower"
    if task.kind == "max_patch":
        layer = resolve_layer((goto or {}).get("layer", "first:Conv2D"), replay.trace)
        f = most_active_filter(replay.trace, layer)
        if e is None or e.kind != "conv_patch" or replay.layer[0] != layer or e.filter != f:
            return False, f"the cursor is not on a cell of filter {f} of {layer}"
        out = replay.trace.output(layer)[..., f]
        r, c = np.unravel_index(int(np.argmax(out)), out.shape)
        if (e.row, e.col) == (int(r), int(c)):
            return True, f"filter {f} fires most at row {e.row}, col {e.col}"
        return False, f"filter {f} gives {e.value:+.4f} at row {e.row}, col {e.col}; somewhere it gives more"
    return False, f"unknown task {task.kind}"


def format_answer(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return f"{value:g}"
    if abs(value) < 0.1:  # 4 significant digits, positional, as the screen prints them
        return np.format_float_positional(float(value), precision=4, unique=False, fractional=False, trim="-")
    return f"{value:.4f}"
