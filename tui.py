"""The nntrace app: replay a traced forward pass step by step, next to Keras.

Data flow: a Trace (live from the scratch model, or replayed from a file) → step events → views.
The first frame comes from the scratch model alone; Keras loads in a background thread and its
column fills in when ready.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, Markdown, Static

from nntrace.views import step_views

STEP_KINDS = {"conv_patch", "pool_window", "dense_neuron", "softmax", "embedding_lookup", "rnn_step", "lstm_step",
              "bidirectional_merge", "dropout", "flatten_map"}


@dataclass
class Session:
    """What the app shows: a trace, where it came from, and (optionally) a Keras model to compare."""

    trace: Any
    description: str
    keras_path: Path | None = None
    note: str = ""


HELP = """\
# nntrace keys

| key | action |
|---|---|
| `n` / `→` | next step |
| `p` / `←` | previous step |
| `]` / `↓` | next layer |
| `[` / `↑` | previous layer |
| `space` | play / pause |
| `+` / `-` | play faster / slower |
| `j` | jump: `row col filter` (conv), `row col channel` (pooling), `unit` (dense), `token` (recurrent), `step` |
| `k` | show / hide the Keras column |
| `g` | feature-map gallery of the current conv/pooling layer, scratch beside Keras |
| `t` | type a new sentence (text models) |
| `e` | export the current view as PNG |
| `?` | this help |
| `q` | quit |

Every number on screen is a value the scratch layer recorded while computing; Keras's own per-layer
output is shown beside it once TensorFlow has loaded.
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]
    DEFAULT_CSS = "HelpScreen { align: center middle; } HelpScreen > Markdown { width: 80; height: auto; " \
                  "border: round $accent; background: $surface; }"

    def compose(self) -> ComposeResult:
        yield Markdown(HELP)


class PromptScreen(ModalScreen[str]):
    """A one-line question; dismisses with the typed text (or None on escape)."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = "PromptScreen { align: center middle; } PromptScreen > Input { width: 70; }"

    def __init__(self, placeholder: str) -> None:
        super().__init__()
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        yield Input(placeholder=self.placeholder)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


#: Step views that take (event, trace, Keras output); conv and recurrent steps need more context.
EVENT_VIEWS = {
    "pool_window": step_views.pool_view,
    "dense_neuron": step_views.dense_view,
    "softmax": step_views.softmax_view,
    "embedding_lookup": step_views.embedding_view,
    "bidirectional_merge": step_views.merge_view,
    "dropout": step_views.dropout_view,
    "flatten_map": step_views.flatten_view,
}


class NNTraceApp(App):
    TITLE = "nntrace"
    CSS = """
    #layers { width: 46; }
    #main { padding: 0 1; }
    #status { height: 2; padding: 0 1; background: $boost; }
    """
    BINDINGS = [
        Binding("n,right", "step(1)", "next"), Binding("p,left", "step(-1)", "prev"),
        Binding("right_square_bracket", "layer(1)", "next layer"),
        Binding("left_square_bracket", "layer(-1)", "prev layer"),
        Binding("space", "play", "play/pause"), Binding("plus", "speed(0.5)", "faster", show=False),
        Binding("minus", "speed(2)", "slower", show=False), Binding("j", "jump", "jump"),
        Binding("k", "toggle_keras", "Keras"), Binding("t", "new_text", "text", show=False),
        Binding("g", "gallery", "gallery"), Binding("e", "export", "export PNG"), Binding("question_mark", "help", "help"), Binding("q", "quit", "quit"),
    ]

    layer_index = reactive(0)
    step = reactive(0)

    def __init__(self, session: Session, model=None, lesson=None) -> None:
        super().__init__()
        self.lesson = lesson  # a lessons.runner.LessonSession, when a lesson is being played
        self.session = session
        self.trace = session.trace
        self.model = model  # the scratch model, for new sentences (None when replaying)
        self.cache: dict[str, list] = {}
        self.iterators: dict[str, Any] = {}
        self.keras_outputs: dict[str, np.ndarray] | None = None
        self.keras_diffs: dict[str, tuple[float, bool]] = {}
        self.keras_status = "loading Keras in the background…" if session.keras_path else "no Keras model to compare"
        self.show_keras = True
        self.play_interval = 0.3
        self.timer = None
        self.message = session.note
        self.last_shape_key: tuple | None = None

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield DataTable(id="layers", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="main"):
                yield Static(id="view")
        if self.lesson is not None:
            from nntrace.views.lesson_panel import LessonPanel

            yield LessonPanel(id="lesson")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.trace.model_name} on {self.session.description}"
        table = self.query_one("#layers", DataTable)
        table.add_columns("layer", "type", "output", "vs Keras")
        self.fill_layer_table()
        if self.session.keras_path is not None:
            self.load_keras()
        if self.lesson is not None:
            self.show_lesson_step()
            self.query_one("#answer", Input).focus()
        self.refresh_view()

    # -- lessons --------------------------------------------------------------------------------
    def show_lesson_step(self) -> None:
        from nntrace.views.lesson_panel import LessonPanel

        lesson = self.lesson
        step = lesson.step
        if lesson.position is not None:
            layer, index = lesson.position
            names = [n for n, _ in self.trace.layers]
            self.layer_index = names.index(layer)
            self.events_until(layer, index)
            self.step = index
        q = step.question
        self.query_one(LessonPanel).show(lesson.lesson.title, lesson.index + 1, len(lesson.lesson.steps), step.text,
                                         q.prompt if q else None, lesson.options())
        self.refresh_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.lesson is None or event.input.id != "answer":
            return
        from nntrace.views.lesson_panel import LessonPanel

        panel = self.query_one(LessonPanel)
        if not self.lesson.answered:
            if not event.value.strip():
                panel.feedback("Type an answer first.", "yellow")
                return
            fb = self.lesson.answer(event.value)
            style = "bold green" if fb.correct else ("bold yellow" if fb.revealed else "red")
            panel.feedback(fb.message + ("  (Enter to continue)" if self.lesson.answered else ""), style)
            event.input.value = ""
            return
        if self.lesson.next():
            self.show_lesson_step()
        else:
            panel.feedback(f"Lesson complete: {self.lesson.lesson.title}. Press q to quit.", "bold green")
            self.message = "lesson complete"
            self.refresh_view()

    def fill_layer_table(self) -> None:
        table = self.query_one("#layers", DataTable)
        table.clear()
        ends = {e.layer: e for e in self.trace.events if e.kind == "layer_end"}
        for name, cls in self.trace.layers:
            shape = ends[name].output_shape[1:] if name in ends else ()
            diff = self.keras_diffs.get(name)
            mark = Text("…", style="dim") if diff is None else Text(
                f"{diff[0]:.0e} {'✓' if diff[1] else '✗'}", style="green" if diff[1] else "bold red")
            table.add_row(name[:16], cls.replace("Normalization", "Norm").replace("Pooling", "Pool")[:14],
                          "×".join(map(str, shape)), mark)
        table.move_cursor(row=self.layer_index)

    # -- keras in the background ----------------------------------------------------------------
    @work(thread=True, exclusive=True, group="keras")
    def load_keras(self) -> None:
        try:
            from nntrace.models.convert import load_keras
            from nntrace.models.keras_probe import keras_layer_outputs
            from nntrace.tracer.compare import diff_outputs

            keras_model = load_keras(self.session.keras_path)
            x = self.trace.context.get("model_input")
            outputs = keras_layer_outputs(keras_model, x)
            outputs = {k: (np.stack(v, 0) if isinstance(v, tuple) else v) for k, v in outputs.items()}
            ours = {}
            for e in self.trace.events:
                if e.kind == "layer_end":
                    ours[e.layer] = e.output[None]
            rows = diff_outputs(ours, outputs, dict(self.trace.layers))
            self.call_from_thread(self.keras_ready, {k: v[0] for k, v in outputs.items()},
                                  {r.layer: (r.max_abs_diff, r.passed) for r in rows})
        except Exception as exc:  # shown on screen, never a traceback
            self.call_from_thread(self.keras_failed, f"Keras could not load: {exc}")

    def keras_ready(self, outputs: dict, diffs: dict) -> None:
        self.keras_outputs, self.keras_diffs = outputs, diffs
        failed = [k for k, (_, ok) in diffs.items() if not ok]
        self.keras_status = "Keras loaded: every layer matches" if not failed else f"Keras differs at {', '.join(failed)}"
        self.fill_layer_table()
        self.refresh_view()

    def keras_failed(self, message: str) -> None:
        self.keras_status = message
        self.refresh_view()

    # -- events ---------------------------------------------------------------------------------
    @property
    def layer(self) -> tuple[str, str]:
        return self.trace.layers[self.layer_index]

    def events_until(self, name: str, index: int) -> list:
        """The layer's step events materialised up to `index` (lazily, from the layer's generator)."""
        events = self.cache.setdefault(name, [])
        if name not in self.iterators:
            self.iterators[name] = self.trace.steps(name) if self.trace.has_steps(name) else iter(())
        it = self.iterators[name]
        while len(events) <= index and it is not None:
            nxt = next(it, None)
            if nxt is None:
                self.iterators[name] = it = None
                break
            events.append(nxt)
        return events

    def step_count_known(self, name: str) -> int | None:
        return len(self.cache.get(name, [])) if self.iterators.get(name, 0) is None else None

    # -- actions ---------------------------------------------------------------------------------
    def action_step(self, delta: int) -> None:
        name = self.layer[0]
        target = max(0, self.step + delta)
        events = self.events_until(name, target)
        if target >= len(events):
            if delta > 0 and self.layer_index < len(self.trace.layers) - 1:
                self.layer_index += 1
                self.step = 0
            return
        self.step = target

    def action_layer(self, delta: int) -> None:
        self.layer_index = min(max(self.layer_index + delta, 0), len(self.trace.layers) - 1)
        self.step = 0

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.cursor_row != self.layer_index:
            self.layer_index = event.cursor_row
            self.step = 0

    def action_play(self) -> None:
        if self.timer is None:
            self.timer = self.set_interval(self.play_interval, lambda: self.action_step(1))
            self.message = f"playing every {self.play_interval:.2f}s (+/- to change)"
        else:
            self.timer.stop()
            self.timer = None
            self.message = "paused"
        self.refresh_view()

    def action_speed(self, factor: float) -> None:
        self.play_interval = float(min(max(self.play_interval * factor, 0.02), 3.0))
        if self.timer is not None:
            self.timer.stop()
            self.timer = self.set_interval(self.play_interval, lambda: self.action_step(1))
        self.message = f"step every {self.play_interval:.2f}s"
        self.refresh_view()

    def action_toggle_keras(self) -> None:
        self.show_keras = not self.show_keras
        self.refresh_view()

    def action_gallery(self) -> None:
        from nntrace.views.gallery import GalleryScreen, gallery_text

        name, cls = self.layer
        out = self.trace.output(name)
        if out.ndim != 3:
            self.message = f"the gallery shows feature maps; {name} ({cls}) outputs {tuple(out.shape)}"
            self.refresh_view()
            return
        self.push_screen(GalleryScreen(gallery_text(name, out, self.keras_for(name))))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_jump(self) -> None:
        self.push_screen(PromptScreen("jump to: row col filter | row col channel | unit | token | step"),
                         self.jump_to)

    def jump_to(self, answer: str | None) -> None:
        if not answer:
            return
        try:
            numbers = [int(v) for v in answer.replace(",", " ").split()]
            index = self.find_step(numbers)
        except ValueError as exc:
            self.message = f"cannot jump to '{answer}': {exc}"
        else:
            self.step = index
            self.message = f"jumped to step {index}"
        self.refresh_view()

    def find_step(self, numbers: list[int]) -> int:
        """The index of the first step event whose position matches the numbers typed."""
        name, _ = self.layer
        keys = {"conv_patch": ("row", "col", "filter"), "pool_window": ("row", "col", "channel"),
                "dense_neuron": ("unit",), "embedding_lookup": ("position",), "lstm_step": ("time",),
                "rnn_step": ("time",)}
        probe = self.events_until(name, 0)
        if not probe:
            raise ValueError(f"layer {name} has no steps")
        wanted = keys.get(probe[0].kind)
        if wanted is None or len(numbers) == 1 and len(wanted) > 1:
            if len(numbers) != 1:
                raise ValueError("type one step number")
            events = self.events_until(name, numbers[0])
            if numbers[0] >= len(events):
                raise ValueError(f"{name} has {len(events)} steps")
            return numbers[0]
        if len(numbers) != len(wanted):
            raise ValueError(f"type {len(wanted)} numbers: {' '.join(wanted)}")
        i = 0
        while True:
            events = self.events_until(name, i)
            if i >= len(events):
                raise ValueError(f"no step with {dict(zip(wanted, numbers))} in {name}")
            if all(getattr(events[i], k) == v for k, v in zip(wanted, numbers)):
                return i
            i += 1

    def action_new_text(self) -> None:
        if self.model is None or not self.model.takes_text:
            self.message = "this model takes images; start nntrace cnn --image PATH for another picture"
            self.refresh_view()
            return
        self.push_screen(PromptScreen("type a sentence (Indonesian)"), self.retrace_text)

    def retrace_text(self, text: str | None) -> None:
        if text is None:
            return
        if not text.strip():
            self.message = "the sentence is empty: type a few words"
            self.refresh_view()
            return
        from nntrace.tracer import trace

        self.trace = trace(self.model, [text])
        self.trace.context["model_input"] = [text]
        self.session.description = f'"{text}"'
        self.sub_title = f"{self.trace.model_name} on {self.session.description}"
        self.cache.clear()
        self.iterators.clear()
        self.keras_outputs, self.keras_diffs = None, {}
        if self.session.keras_path is not None:
            self.keras_status = "Keras: computing…"
            self.load_keras()
        self.fill_layer_table()
        self.step = 0
        self.refresh_view()

    def action_export(self) -> None:
        from nntrace.views.export import export_png

        try:
            path = export_png(self, Path.cwd())
            self.message = f"exported {path}"
        except Exception as exc:
            self.message = f"export failed: {exc}"
        self.refresh_view()

    # -- drawing ---------------------------------------------------------------------------------
    def watch_layer_index(self, value: int) -> None:
        if self.is_mounted:
            self.query_one("#layers", DataTable).move_cursor(row=value)
            self.refresh_view()

    def watch_step(self, value: int) -> None:
        if self.is_mounted:
            self.refresh_view()

    def current_event(self):
        name, _ = self.layer
        events = self.events_until(name, self.step)
        return events[self.step] if self.step < len(events) else None

    def keras_for(self, name: str) -> np.ndarray | None:
        if not self.show_keras or self.keras_outputs is None:
            return None
        return self.keras_outputs.get(name)

    def render_current(self):
        name, cls = self.layer
        event = self.current_event()
        keras_out = self.keras_for(name)
        if event is None:
            diff = self.keras_diffs.get(name)
            return step_views.summary_view(name, cls, self.trace, keras_out, None if diff is None else diff[0])
        kind = event.kind
        if kind == "conv_patch":
            return step_views.conv_view(event, self.trace, self.feature_map_so_far(name, event), keras_out)
        if kind in ("lstm_step", "rnn_step"):
            events = self.events_until(name, 10**6)
            width = self.query_one("#main").size.width or 72
            return step_views.recurrent_view(events, self.step, self.trace, width=max(width - 2, 30))
        view = EVENT_VIEWS.get(kind)
        return view(event, self.trace, keras_out) if view else Text(f"{event.label}")

    def feature_map_so_far(self, name: str, event) -> np.ndarray | None:
        """The current filter's output map with the cells already stepped through (others NaN)."""
        events = self.cache.get(name, [])
        out = self.trace.output(name)
        seen = np.full(out.shape[:2], np.nan, np.float32)
        for e in events[:self.step + 1]:
            if e.filter == event.filter:
                seen[e.row, e.col] = e.value
        return seen

    def refresh_view(self) -> None:
        if not self.is_mounted:
            return
        name, cls = self.layer
        try:
            renderable = self.render_current()
        except Exception as exc:  # a view must never take the app down
            renderable = Text(f"cannot show this step: {exc}", style="bold red")
        self.view_renderable = renderable
        # Within one layer every step draws the same shape: skip the layout pass (a large share of
        # the cost of a step); a new layer or kind of step may change the size, so lay out again.
        event = self.current_event()
        shape_key = (self.layer_index, None if event is None else event.kind, self.show_keras, self.keras_outputs is None)
        self.query_one("#view", Static).update(renderable, layout=shape_key != self.last_shape_key)
        self.last_shape_key = shape_key
        total = self.step_count_known(name)
        status = Text(f"layer {self.layer_index + 1}/{len(self.trace.layers)} {name} ({cls})  "
                      f"step {self.step + 1}{'' if total is None else f'/{max(total, 1)}'}  │ ")
        status.append(self.keras_status if self.show_keras else "Keras view hidden (k)", style="italic")
        if self.message:
            status.append(f"\n{self.message}", style="dim")
        self.query_one("#status", Static).update(status)
