"""Guided lessons: load and validate lesson files, resolve their symbolic positions against a trace,
check answers, and keep progress in the user's state directory.

A lesson file (TOML) names a shipped model and an input, then steps. A step has Markdown `text`, an
optional `goto` (a layer selector such as `first:Conv2D` and a symbolic position such as
`{filter = "most_active", cell = "max"}`) and an optional `question` whose answer is read from the
traced numbers (never typed into the file), so lessons stay valid when the models are retrained.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrace.layers.errors import NNTraceError

LESSON_DIR = Path(__file__).resolve().parent
MAX_TRIES = 3


class LessonError(NNTraceError, ValueError):
    """A lesson file with a mistake; the message names the file and the step."""


@dataclass
class Question:
    prompt: str
    answer: dict                     # how to read the answer from the trace
    options: list[str] | str | None = None  # choices, or "labels" for the model's class names
    tolerance: float = 1e-3          # relative and absolute, for numbers
    hint: str = ""


@dataclass
class Step:
    text: str
    goto: dict | None = None
    question: Question | None = None


@dataclass
class Lesson:
    number: int
    title: str
    model: str                       # cnn | rnn | lstm
    input: dict
    steps: list[Step]
    path: Path
    needs_report: bool = False

    @property
    def id(self) -> str:
        return self.path.stem


def fail(path: Path, step: int | None, message: str) -> LessonError:
    where = f"{path.name}" + (f", step {step + 1}" if step is not None else "")
    return LessonError(f"lesson {where}: {message}")


def parse_lesson(path: Path) -> Lesson:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise fail(path, None, f"not valid TOML ({exc})") from exc
    for key in ("title", "model", "steps"):
        if key not in data:
            raise fail(path, None, f"missing '{key}'")
    if data["model"] not in ("cnn", "rnn", "lstm"):
        raise fail(path, None, f"model must be cnn, rnn or lstm, got '{data['model']}'")
    steps = []
    for i, raw in enumerate(data["steps"]):
        unknown = set(raw) - {"text", "goto", "question"}
        if unknown or "text" not in raw:
            raise fail(path, i, f"a step needs 'text' and may have 'goto' and 'question' (unknown: {sorted(unknown)})")
        q = raw.get("question")
        question = None
        if q is not None:
            if "prompt" not in q or "answer" not in q:
                raise fail(path, i, "a question needs 'prompt' and 'answer'")
            question = Question(q["prompt"], q["answer"], q.get("options"), float(q.get("tolerance", 1e-3)),
                                q.get("hint", ""))
        steps.append(Step(raw["text"], raw.get("goto"), question))
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


def step_matches(event, at: dict, trace, layer: str) -> bool:
    for key, want in at.items():
        if key == "kind":
            if event.kind != want:
                return False
        elif key == "filter" and want == "most_active":
            out = trace.output(layer)
            if getattr(event, "filter", None) != int(np.argmax(np.abs(out).mean(axis=(0, 1)))):
                return False
        elif key == "cell" and want == "max":
            out = trace.output(layer)
            f = event.filter
            r, c = np.unravel_index(int(np.argmax(out[..., f])), out.shape[:2])
            if (event.row, event.col) != (int(r), int(c)):
                return False
        elif key == "unit" and want == "predicted":
            if getattr(event, "unit", None) != int(np.argmax(trace.output(layer))):
                return False
        elif key == "token":
            tokens = trace.context.get("tokens") or []
            t = getattr(event, "time", getattr(event, "position", None))
            if t is None or t >= len(tokens) or tokens[t] != want:
                return False
        elif getattr(event, key, object()) != want:
            return False
    return True


def resolve_goto(goto: dict, trace) -> tuple[str, int]:
    """(layer name, index of the step event) for a step's `goto`."""
    layer = resolve_layer(goto["layer"], trace)
    at = goto.get("at")
    if not at:
        return layer, 0
    if "step" in at and len(at) == 1:
        return layer, int(at["step"])
    if not trace.has_steps(layer):
        raise KeyError(f"layer '{layer}' has no fine-grained steps in this trace")
    for i, event in enumerate(trace.steps(layer)):
        if step_matches(event, at, trace, layer):
            return layer, i
    raise KeyError(f"no step of '{layer}' matches {at}")


def event_at(trace, layer: str, index: int):
    for i, event in enumerate(trace.steps(layer)):
        if i == index:
            return event
    return None


def pick(values: Any, index: Any) -> Any:
    arr = np.asarray(values)
    if index is None:
        return arr.item() if arr.size == 1 else arr
    if index == "max":
        return float(arr.max())
    if index == "argmax":
        return int(arr.argmax())
    if index == "min":
        return float(arr.min())
    if index == "sum":
        return float(arr.sum())
    if index == "count_true":
        return int(arr.sum())
    if index == "count_zero":
        return int((arr == 0).sum())
    if index == "size":
        return int(arr.size)
    if index == "mean":
        return float(np.nanmean(arr))
    return arr[tuple(index) if isinstance(index, list) else index].item()


def expected_answer(question: Question, trace, event, report: list[dict] | None = None) -> float | str:
    """Read the answer from the trace (or the experiment report); never from the lesson file."""
    spec = question.answer
    if "experiment" in spec:
        rows = [r for r in report or [] if r["group"] == spec["experiment"]]
        if not rows:
            raise KeyError(f"the experiment report has no group '{spec['experiment']}'")
        best = max(rows, key=lambda r: r[spec.get("by", "keras_f1")])
        return best["label"]
    if "output" in spec:
        value = pick(trace.output(resolve_layer(spec["output"], trace)), spec.get("index"))
    elif "field" in spec:
        if event is None:
            raise KeyError("the answer reads a step field but the step has no 'goto' position")
        if not hasattr(event, spec["field"]):
            raise KeyError(f"a {event.kind} step has no field '{spec['field']}'")
        value = pick(getattr(event, spec["field"]), spec.get("index"))
    elif "prediction" in spec:
        probs = trace.probabilities
        return (trace.context.get("labels") or [str(i) for i in range(len(probs))])[int(np.argmax(probs))]
    else:
        raise KeyError(f"unknown answer {spec}")
    if spec.get("as") == "label":
        return (trace.context.get("labels") or [])[int(value)]
    if spec.get("as") == "yes_no":
        return "yes" if bool(value) else "no"
    return float(value) if not isinstance(value, str) else value


def options_for(question: Question, trace, report: list[dict] | None = None) -> list[str] | None:
    if question.options == "labels":
        return list(trace.context.get("labels") or [])
    if question.options == "variants":
        return [r["label"] for r in report or [] if r["group"] == question.answer.get("experiment")]
    return question.options


def normalise(text: str) -> str:
    """Lower case, single spaces, and `x` for `×` (what a keyboard types for "kernel 3×3")."""
    return " ".join(text.replace("×", "x").lower().split())


def check_answer(given: str, expected: float | str, tolerance: float, options: list[str] | None = None) -> bool:
    """Numbers within `tolerance` (relative above 1); text as typed or, with options, by its number."""
    given = given.strip()
    if isinstance(expected, str):
        if options and given.isdigit() and 1 <= int(given) <= len(options):
            given = options[int(given) - 1]
        return normalise(given) == normalise(expected)
    try:
        value = float(given)
    except ValueError:
        return False
    return abs(value - expected) <= tolerance * max(1.0, abs(expected))


def validate(lesson: Lesson, trace, report: list[dict] | None = None) -> None:
    """Resolve every goto and answer against `trace`; LessonError naming the file and step."""
    event = None
    for i, step in enumerate(lesson.steps):
        try:
            if step.goto:
                layer, index = resolve_goto(step.goto, trace)
                event = event_at(trace, layer, index) if trace.has_steps(layer) else None
            if step.question:
                answer = expected_answer(step.question, trace, event, report)
                options = options_for(step.question, trace, report)
                if options is not None and str(answer) not in options:
                    raise KeyError(f"the answer '{answer}' is not among the options {options}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise fail(lesson.path, i, str(exc).strip("'\"")) from exc


# -- progress ------------------------------------------------------------------------------------
def state_file() -> Path:
    from nntrace.views.app_log import state_dir

    return state_dir() / "lessons.json"


@dataclass
class Progress:
    """Per lesson: the next step to show and whether it was finished. Saved on every change."""

    path: Path = field(default_factory=state_file)
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls) -> "Progress":
        path = state_file()
        data = json.loads(path.read_text()) if path.exists() else {}
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    def step_of(self, lesson: Lesson) -> int:
        return int(self.data.get(lesson.id, {}).get("step", 0))

    def done(self, lesson: Lesson) -> bool:
        return bool(self.data.get(lesson.id, {}).get("done", False))

    def record(self, lesson: Lesson, step: int, done: bool = False) -> None:
        entry = self.data.setdefault(lesson.id, {})
        entry["step"] = step
        entry["done"] = entry.get("done", False) or done
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
    """Plays one lesson against a trace: where to go, what to ask, whether an answer is right."""

    def __init__(self, lesson: Lesson, trace, progress: Progress | None = None,
                 report: list[dict] | None = None, start: int | None = None) -> None:
        self.lesson, self.trace, self.progress, self.report = lesson, trace, progress, report
        self.index = start if start is not None else (progress.step_of(lesson) if progress else 0)
        self.index = min(self.index, len(lesson.steps) - 1)
        self.tries = 0
        self.answered = False
        self.event = None
        self.position: tuple[str, int] | None = None
        self.enter()

    @property
    def step(self) -> Step:
        return self.lesson.steps[self.index]

    @property
    def finished(self) -> bool:
        return self.index >= len(self.lesson.steps)

    def enter(self) -> None:
        """Resolve the current step's position (the app moves there)."""
        self.tries, self.answered = 0, self.step.question is None
        if self.step.goto:
            self.position = resolve_goto(self.step.goto, self.trace)
            layer, idx = self.position
            self.event = event_at(self.trace, layer, idx) if self.trace.has_steps(layer) else None

    def expected(self) -> float | str:
        return expected_answer(self.step.question, self.trace, self.event, self.report)

    def options(self) -> list[str] | None:
        return options_for(self.step.question, self.trace, self.report) if self.step.question else None

    def answer(self, given: str) -> Feedback:
        q = self.step.question
        if q is None or self.answered:
            return Feedback(True, "")
        expected = self.expected()
        if check_answer(given, expected, q.tolerance, self.options()):
            self.answered = True
            return Feedback(True, f"Correct: {format_answer(expected)}.")
        self.tries += 1
        if self.tries >= MAX_TRIES:
            self.answered = True
            return Feedback(False, f"The answer is {format_answer(expected)}.", revealed=True)
        return Feedback(False, f"Not quite. Hint: {q.hint or 'look again at the highlighted step.'}")

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


def format_answer(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:g}" if float(value).is_integer() else f"{value:.4f}"
