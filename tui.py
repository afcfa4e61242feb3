"""The nntrace app: bindings and composition. It replays a trace step by step, next to Keras.

Data flow: a Trace (live from the scratch model, or replayed from a file) → the replay model
(`views.replay`: layer, step, selection) → the view of the event's kind (`views.step_views.VIEWS`).
The first frame comes from the scratch model alone; Keras loads in a background thread and the
layer list's last column fills in when it is ready.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Input, Static

from nntrace.tracer.sanitize import clean_text
from nntrace.views.app_log import log_exception
from nntrace.views.keras_side import KerasSide
from nntrace.views.layer_list import LayerList
from nntrace.views.passes import Passes
from nntrace.views.player import Player
from nntrace.views.replay import JumpError, Replay
from nntrace.views.screens import HelpScreen, PromptScreen
from nntrace.views.step_panel import StepPanel
from nntrace.views.step_views import ViewContext, view_for

COMPACT_BELOW = 150  # terminal columns under which the layer list is narrow (and hidden under 90)


@dataclass
class Session:
    """What the app shows: a trace, where it came from, and (optionally) a Keras model to compare."""

    trace: Any
    description: str
    keras_path: Path | None = None
    note: str = ""
    backward_trace: Any = None  # a recorded backward pass (a trace file's), shown with `b`


def guarded(action: Callable) -> Callable:
    """An action that never takes the app down: a jump that cannot be made says why; anything
    unexpected is logged with its traceback and shown as one line."""

    @functools.wraps(action)
    def run(self: "NNTraceApp", *args: Any) -> None:
        try:
            action(self, *args)
        except JumpError as exc:
            self.message = str(exc)
        except Exception as exc:  # noqa: BLE001 — the app shows it instead of crashing
            self.message = f"unexpected error: {exc} (details in {log_exception(exc, action.__name__)})"
        self.refresh_view()

    return run


class NNTraceApp(App):
    TITLE = "nntrace"
    CSS = "#status { height: auto; max-height: 2; padding: 0 1; background: $boost; }"
    BINDINGS = [
        Binding("n", "step(1)", "next"), Binding("p", "step(-1)", "prev"),
        Binding("right_square_bracket", "layer(1)", "layer+"), Binding("left_square_bracket", "layer(-1)", "layer−"),
        Binding("space", "play", "play"), Binding("plus", "speed(0.5)", "faster", show=False),
        Binding("minus", "speed(2)", "slower", show=False), Binding("j", "jump", "jump"),
        Binding("k", "toggle_keras", "Keras"), Binding("t", "new_text", "text", show=False),
        Binding("b", "backward", "backward"), Binding("l", "choose_label", "label", show=False),
        Binding("v", "gradient_flow", "gradient per token", show=False),
        Binding("g", "gallery", "gallery"), Binding("e", "export", "PNG"),
        Binding("L", "toggle_layers", "layers", show=False),
        Binding("a", "answer", "answer"), Binding("enter", "submit", "check / next"),
        Binding("question_mark", "help", "help"), Binding("q", "quit", "quit"),
    ]

    def __init__(self, session: Session, model=None, lesson=None, log: Path | None = None) -> None:
        super().__init__()
        self.session, self.model, self.lesson, self.log_path = session, model, lesson, log
        self._replay = Replay(session.trace)
        self.keras = KerasSide(session.keras_path)
        self.passes = Passes(self._replay, self.keras, session.keras_path, session.backward_trace)
        self.show_layers: bool | None = None
        self.player = Player(self.set_interval, lambda: self.action_step(1))
        self.message = session.note
        self.view_renderable: Any = Text()
        self.last_shape: tuple | None = None

    # -- state the tests and lessons read ---------------------------------------------------------
    @property
    def replay(self) -> Replay:
        return self._replay

    @replay.setter
    def replay(self, replay: Replay) -> None:
        self._replay = replay
        if self.is_mounted:
            self.query_one(StepPanel).replay = replay

    @property
    def trace(self):
        return self.replay.trace

    @property
    def layer(self) -> tuple[str, str]:
        return self.replay.layer

    @property
    def step(self) -> int:
        return self.replay.step

    def current_event(self):
        return self.replay.event

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield LayerList(id="layers", cursor_type="row", zebra_stripes=True)
            yield StepPanel(self.replay, id="main")
        if self.lesson is not None:
            from nntrace.views.lesson_panel import LessonPanel

            yield LessonPanel(id="lesson")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean_text(f"{self.trace.model_name} on {self.session.description}")
        self.fill_layer_list()
        self.query_one(StepPanel).focus()
        if self.session.keras_path is not None:
            self.load_keras()
        if self.lesson is not None:
            from nntrace.views.lesson_panel import show_lesson_step

            show_lesson_step(self)
        self.refresh_view()

    def on_resize(self) -> None:
        self.fill_layer_list()
        self.refresh_view()

    def fill_layer_list(self) -> None:
        width = self.size.width
        self.query_one(Header).display = self.size.height >= 30 or self.lesson is None
        if self.lesson is not None:
            from nntrace.views.lesson_panel import LessonPanel

            self.query_one(LessonPanel).fit_height(self.size.height)
        layers = self.query_one(LayerList)
        layers.display = self.show_layers if self.show_layers is not None else width >= 90
        layers.show(self.trace, self.keras.diffs, self.replay.layer_index, compact=width < COMPACT_BELOW)

    # -- Keras in the background ------------------------------------------------------------------
    @work(thread=True, exclusive=False, group="keras")
    def load_keras(self) -> None:
        from nntrace.views.keras_side import keras_comparison, tape_comparison

        trace, side = self.trace, self.keras
        side.trace = trace
        compare = tape_comparison if trace.backward else keras_comparison
        try:
            outputs, diffs = compare(self.session.keras_path, trace)
        except Exception as exc:  # noqa: BLE001 — shown on screen and logged, never a traceback
            log_exception(exc, f"loading {side.name}")
            self.call_from_thread(self.keras_failed, side, f"{side.name} could not load: {exc}")
        else:
            if trace is side.trace:  # not a result for a sentence (or label) that has since been replaced
                self.call_from_thread(self.keras_ready, side, outputs, diffs)

    def keras_ready(self, side: KerasSide, outputs: dict, diffs: dict) -> None:
        side.ready(outputs, diffs)
        self.fill_layer_list()
        self.refresh_view()

    def keras_failed(self, side: KerasSide, message: str) -> None:
        side.status = message
        self.refresh_view()

    # -- actions ----------------------------------------------------------------------------------
    @guarded
    def action_step(self, delta: int) -> None:
        self.message = self.replay.move_step(delta) or ""

    @guarded
    def action_layer(self, delta: int) -> None:
        self.replay.move_layer(delta)
        self.message = ""

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.cursor_row != self.replay.layer_index:
            self.replay.go_layer(event.cursor_row)
            self.refresh_view()

    def on_step_panel_moved(self, event: StepPanel.Moved) -> None:
        self.message = event.note
        self.refresh_view()

    @guarded
    def action_play(self) -> None:
        self.message = self.player.toggle()

    @guarded
    def action_speed(self, factor: float) -> None:
        self.message = self.player.speed(factor)

    @guarded
    def action_toggle_keras(self) -> None:
        self.keras.shown = not self.keras.shown

    @guarded
    def action_toggle_layers(self) -> None:
        self.show_layers = not self.query_one(LayerList).display
        self.fill_layer_list()

    @guarded
    def action_gallery(self) -> None:
        from nntrace.views.gallery import GalleryScreen, gallery_text

        name, cls = self.layer
        out = self.trace.output(name)
        if out.ndim != 3:
            raise JumpError(f"the gallery shows feature maps; {name} ({cls}) outputs {tuple(out.shape)}")
        self.push_screen(GalleryScreen(gallery_text(name, out, self.keras.output(name))))

    def action_answer(self) -> None:
        if self.lesson is not None:
            self.query_one("#answer", Input).focus()

    @guarded
    def action_submit(self) -> None:
        if self.lesson is not None:
            from nntrace.views.lesson_panel import submit

            submit(self, "")

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """The lesson keys show in the footer only during a lesson."""
        if action in ("answer", "submit"):
            return self.lesson is not None
        return True

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.log_path))

    def action_jump(self) -> None:
        self.push_screen(PromptScreen("step 7 | unit 0 | class 3 | token tidak | row col filter | filter 5"),
                         self.jump_to)

    @guarded
    def jump_to(self, answer: str | None) -> None:
        if answer:
            self.message = f"jumped to {self.replay.jump(answer)}"

    @guarded
    def action_new_text(self) -> None:
        if self.model is None or not self.model.takes_text:
            raise JumpError("this model takes images; start nntrace cnn --image PATH for another picture")
        self.push_screen(PromptScreen("type a sentence (Indonesian)"), self.retrace_text)

    @guarded
    def retrace_text(self, text: str | None) -> None:
        if text is None:
            return
        if not text.strip():
            raise JumpError("the sentence is empty: type a few words")
        from nntrace.tracer import trace

        new = trace(self.model, [text])
        new.context["model_input"] = [text]
        backward = self.trace.backward
        if backward:
            self.replay, self.keras = self.passes.forward, self.passes.forward_keras
        self.replay.set_trace(new)
        self.session.description = f'"{clean_text(text, 80)}"'
        self.sub_title = clean_text(f"{new.model_name} on {self.session.description}")
        self.keras.reset()
        if self.session.keras_path is not None:
            self.load_keras()
        if backward:
            self.show_backward(self.passes.label)
        self.fill_layer_list()

    @guarded
    def action_backward(self) -> None:
        """`b`: between the forward pass and the backward pass (from the loss back to the input)."""
        if self.trace.backward:
            self.replay, self.keras = self.passes.forward, self.passes.forward_keras
            self.message = "the forward pass (b: the backward pass)"
        else:
            self.show_backward(self.passes.label)
        self.fill_layer_list()

    def show_backward(self, label: int | None, made=None) -> None:
        """Show the backward pass against `label` (None: the predicted class); `made`: a backward
        trace already built for this input (a lesson's)."""
        build = None
        if made is not None:
            build = lambda x, label: made  # noqa: E731
        elif self.model is not None:
            from nntrace.models.backward_trace import trace_backward

            build = functools.partial(trace_backward, self.model)
        fresh = self.passes.backward_for(build, label)
        self.replay, self.keras = self.passes.backward, self.passes.backward_keras
        if fresh and self.session.keras_path is not None:
            self.load_keras()
        names = self.trace.context.get("labels") or []
        k = self.trace.context["label"]
        name = f" '{clean_text(str(names[k]), 30)}'" if k < len(names) else ""
        other = "l: another class, " if self.model is not None else ""
        self.message = (f"the backward pass against class {k}{name}: from the loss back to the input "
                        f"({other}b: the forward pass)")

    @guarded
    def action_gradient_flow(self) -> None:
        """`v`: ‖∂L/∂h_t‖ per token for the shipped SimpleRNN and LSTM on the current sentence."""
        if self.model is None or not self.model.takes_text:
            raise JumpError("v compares how much gradient reaches each token in the shipped SimpleRNN and LSTM: "
                            "open a text model (nntrace lstm)")
        from nntrace.models import load_scratch
        from nntrace.models.backward_trace import trace_backward
        from nntrace.models.inputs import resolve_model
        from nntrace.views.gradient_flow import FlowScreen, gradient_flow_text

        sentence = self.passes.forward.trace.context.get("text") or ""
        label = self.passes.label  # the class chosen with l, else each model's own prediction
        traces = [(title, trace_backward(load_scratch(resolve_model(kind)), [sentence], label=label))
                  for kind, title in (("rnn", "SimpleRNN"), ("lstm", "LSTM"))]
        self.push_screen(FlowScreen(gradient_flow_text(traces, sentence)))

    @guarded
    def action_choose_label(self) -> None:
        names = self.passes.forward.trace.context.get("labels") or []
        hint = ", ".join(f"{i} {clean_text(str(n), 12)}" for i, n in enumerate(names[:10]))
        self.push_screen(PromptScreen(f"the class the loss is taken against: {hint or 'a class number'}"),
                         self.label_chosen)

    @guarded
    def label_chosen(self, answer: str | None) -> None:
        if answer is None or not answer.strip():
            return
        names = [str(n).lower() for n in (self.passes.forward.trace.context.get("labels") or [])]
        word = answer.strip().lower()
        if word in names:
            label = names.index(word)
        else:
            try:
                label = int(word)
            except ValueError:
                raise JumpError(f"'{clean_text(answer, 30)}' is not a class: type its number"
                                + (f" or one of {', '.join(names)}" if names else "")) from None
        classes = len(names) or self.passes.classes()
        if not 0 <= label < classes:
            raise JumpError(f"class {label} is outside this model: classes are 0–{classes - 1}")
        self.passes.label = label
        self.show_backward(label)
        self.fill_layer_list()

    @guarded
    def action_export(self) -> None:
        from nntrace.views.export import export_png

        self.message = f"exported {export_png(self.view_context(), Path.cwd())}"

    # -- drawing ----------------------------------------------------------------------------------
    def view_context(self) -> ViewContext:
        name, _ = self.layer
        width = self.query_one(StepPanel).size.width or self.size.width
        hidden = self.lesson.hidden() if self.lesson is not None and not self.lesson.finished else frozenset()
        return ViewContext(self.replay, self.replay.event, self.keras.output(name), max(width - 3, 30),
                           self.keras.diff(name), hidden)

    def refresh_view(self) -> None:
        if not self.is_mounted:
            return
        try:
            ctx = self.view_context()
            report = self.lesson_report()
            self.view_renderable = report if report is not None else view_for(ctx.event, ctx.trace).render(ctx)
            if report is None and self.lesson is not None and not self.lesson.finished and self.lesson.sgd:
                from rich.console import Group

                from nntrace.views.backward_views import sgd_view

                self.view_renderable = Group(sgd_view(self.lesson.sgd, ctx), self.view_renderable)
        except Exception as exc:  # noqa: BLE001 — a view must never take the app down
            self.view_renderable = Text(f"cannot show this step: {exc} (details in {log_exception(exc, 'a view')})",
                                        style="bold red")
            ctx = None
        # Within one layer every step draws the same shape: skip the layout pass (a large share of a
        # step's cost); a new layer, kind of step or Keras state may change the size.
        event = None if ctx is None else ctx.event
        shape = (self.replay.layer_index, None if event is None else event.kind, self.keras.shown,
                 self.keras.outputs is None, self.size)
        self.query_one(StepPanel).show(self.view_renderable, layout=shape != self.last_shape)
        self.last_shape = shape
        self.query_one(LayerList).move_cursor(row=self.replay.layer_index)
        self.query_one("#status", Static).update(self.status_text())

    def lesson_report(self):
        """A lesson step that reads the experiment report shows it instead of a trace step."""
        lesson = self.lesson
        if lesson is None or lesson.finished or not lesson.step.report:
            return None
        from nntrace.views.report_view import report_view

        return report_view(lesson.report or [], lesson.step.report, self.view_context().width)

    def status_text(self) -> Text:
        name, _ = self.layer
        total = self.replay.known_step_count()
        steps = f"step {self.step + 1}{'' if total is None else f'/{total}'}" if self.replay.event is not None \
            else "no steps"
        status = Text(f"layer {self.replay.layer_index + 1}/{len(self.trace.layers)} {clean_text(name, 40)}  {steps}  │ ")
        status.append(self.keras.line(), style="italic")
        if self.message:
            status.append(f"\n{self.message}", style="dim")
        return status

    def _handle_exception(self, error: Exception) -> None:
        """Anything unguarded: logged with its traceback; the app stops with a one-line message
        and a non-zero exit code."""
        path = log_exception(error, "the app")
        super()._handle_exception(error)
        self._exit_renderables[:] = [Text(f"nntrace stopped after an unexpected error: {error} "
                                          f"(details in {path})", style="bold red")]
