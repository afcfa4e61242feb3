"""Every shipped lesson validates, shows each question's operands on screen (not its answer), and
plays through in the app answered from the screen; scores are honest."""
import asyncio
import dataclasses
import json
import re

import numpy as np
import pytest

from nntrace import cli
from nntrace.lessons.runner import (FUNCTIONS, LessonError, LessonSession, Progress, check_answer, evaluate,
                                    format_answer, load_lessons, parse_lesson, resolve_layer, validate)
from nntrace.tui import NNTraceApp
from nntrace.views.formulas import num, sig, sig_term, plain

LESSONS = load_lessons()
QUESTIONS = [(lesson, i) for lesson in LESSONS for i, s in enumerate(lesson.steps) if s.question]


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("NNTRACE_STATE", str(tmp_path / "state"))


@pytest.fixture(scope="module")
def traces():
    """One trace (and report) per lesson, built once."""
    return {lesson.id: cli.lesson_trace(lesson) for lesson in LESSONS}


def no_keras(session):
    return dataclasses.replace(session, keras_path=None)  # lessons read the trace; Keras is optional


def screen_text(app) -> str:
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


def test_seventeen_topics_and_at_least_half_the_questions_compute():
    assert len(LESSONS) >= 17
    assert {l.model for l in LESSONS} == {"cnn", "rnn", "lstm", "gru", "attention"}
    kinds = [lesson.steps[i].question.kind for lesson, i in QUESTIONS]
    assert len(kinds) >= 25 and kinds.count("compute") * 2 >= len(kinds)
    tasks = {lesson.id for lesson in LESSONS for s in lesson.steps if s.task}
    assert len(tasks) >= 3


# -- reading operands off the screen -----------------------------------------------------------
def printed_forms(value: float) -> list[str]:
    """How a number may be printed: signed or plain, or as a term of a sum (`− 0.1633`)."""
    forms = [num(value), plain(value), f"{value:+.3f}", f"{value:.4f}",
             f"{'−' if value < 0 else '+'} {abs(value):.4f}", f"{value:g}",
             sig(value), sig(value).lstrip("+"), sig_term(value)]  # gradients: 4 significant digits
    if float(value).is_integer():
        forms += [f"{int(value)}", f"{value:5.0f}".strip()]
    return forms


def read_operand(screen: str, value) -> float | np.ndarray:
    """The operand as printed on screen (scalar, vector or grid), parsed back to numbers; fails if
    it is not on screen."""
    arr = np.asarray(value, np.float64)
    if arr.ndim == 0:
        for form in printed_forms(float(arr)):
            if re.search(r"(?<![\d.])" + re.escape(form) + r"(?![\d])", screen):
                return float(form.replace("− ", "-").replace("+ ", "+"))
        raise AssertionError(f"{float(arr)} is not on screen (looked for {printed_forms(float(arr))})")
    if arr.ndim == 2:  # a grid: each row printed in order
        for fmt in ("{:+.3f}", "{:+.4f}", "{:.4f}"):
            rows = [" ".join(fmt.format(v) for v in row) for row in arr]
            if all(row in screen for row in rows):
                return np.array([[float(fmt.format(v)) for v in row] for row in arr])
        raise AssertionError(f"the grid {arr.round(3).tolist()} is not on screen")
    return np.array([read_operand(screen, v) for v in arr])


def answer_forms(expected: float) -> list[str]:
    return [num(expected), plain(expected), sig(expected)]


async def open_question(lesson, index, traces, size):
    session, scratch, report = traces[lesson.id]
    play = LessonSession(lesson, session.trace, Progress.load(), report, start=index)
    app = NNTraceApp(no_keras(session), scratch, play)
    return app, play


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("lesson,index", QUESTIONS, ids=[f"{l.id}:{i + 1}" for l, i in QUESTIONS])
def test_each_question_shows_its_operands_and_withholds_its_answer(lesson, index, size, traces):
    async def run():
        app, play = await open_question(lesson, index, traces, size)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            screen = screen_text(app)
            q = play.step.question
            assert q.prompt[:30] in screen.replace("\n", " ") or q.prompt[:20] in screen  # the question is visible
            expected = play.expected()
            if q.kind == "compute":
                read = {name: read_operand(screen, value) for name, value in play.operands().items()}
                assert read, "a compute question names operands"
                from_screen = evaluate(q.formula, read)
                assert check_answer(f"{from_screen:.4f}", expected, q.tolerance), (from_screen, expected)
            if isinstance(expected, float) and not expected.is_integer():
                for form in answer_forms(expected):
                    assert form not in screen, f"the answer {form} is on screen before it is given"
            if q.hide:
                assert "?" in screen  # something is withheld
            # answered: the withheld numbers appear
            typed = format_answer(expected).replace("×", "x")
            await pilot.press(*typed, "enter")
            await pilot.pause()
            assert play.answered and play.tries == 0
            # only what the step keeps for a later question
            assert play.hidden() == frozenset(play.step.hide) | play.hidden_for_later()
            screen = screen_text(app)
            for later in range(index + 1, len(lesson.steps)):  # no later question's answer is shown yet
                step = lesson.steps[later]
                if step.question is None or step.goto != play.step.goto or step.question.kind != "compute":
                    continue
                ahead = LessonSession(lesson, play.trace, Progress.load(), play.report, start=later).expected()
                if isinstance(ahead, float) and not ahead.is_integer():
                    for form in answer_forms(ahead):
                        assert form not in screen, f"step {later + 1}'s answer {form} shows once step {index + 1} is answered"

    asyncio.run(run())


# -- playing every lesson through ----------------------------------------------------------------
async def do_task(app, play, pilot):
    """Carry out an open task with the app's keys, as a learner would."""
    kind = play.step.task.kind
    if kind == "flip_prediction":
        await pilot.press("t")
        await pilot.press(*"pelayanannya ramah dan makanannya enak sekali", "enter")
        await pilot.pause()
    elif kind == "max_patch":
        layer = resolve_layer("first:Conv2D", app.trace)
        f = app.current_event().filter
        out = app.trace.output(layer)[..., f]
        r, c = np.unravel_index(int(np.argmax(out)), out.shape)
        await pilot.press("j", *f"{r} {c} {f}", "enter")
    elif kind == "forget_closes":
        sweep = [e for e in app.replay.sweep() if not e.masked]
        best = min(sweep, key=lambda e: float(e.f.min()))
        await pilot.press("j", *f"token {best.time}", "enter")
        await pilot.press("j", *f"unit {int(best.f.argmin())}", "enter")
    await pilot.press("enter")
    await pilot.pause()


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda l: l.id)
def test_shipped_lesson_plays_through_answered_from_the_screen(lesson, traces):
    session, scratch, report = traces[lesson.id]
    validate(lesson, session.trace, report)
    play = LessonSession(lesson, session.trace, Progress.load(), report, start=0)
    app = NNTraceApp(no_keras(session), scratch, play)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            for i, step in enumerate(lesson.steps):
                assert play.index == i
                if play.position is not None:
                    layer, index = play.position
                    assert app.layer[0] == layer and app.step == index
                    if play.event is not None:  # what the app shows is the step the question reads
                        assert app.current_event().label == play.event.label
                q = step.question
                if q is not None:
                    await pilot.pause()
                    if q.kind == "compute":  # the learner's arithmetic on the numbers on screen
                        screen = screen_text(app)
                        read = {name: read_operand(screen, v) for name, v in play.operands().items()}
                        typed = f"{evaluate(q.formula, read):.4f}"
                    else:  # a prediction: what the learner reasons out before the screen shows it
                        typed = format_answer(play.expected()).replace("×", "x")
                    await pilot.press(*typed, "enter")
                    assert play.answered and play.tries == 0, app.query_one("#feedback").render()
                elif step.task is not None:
                    await do_task(app, play, pilot)
                    assert play.answered and play.tries == 0, app.query_one("#feedback").render()
                    if step.task.kind == "flip_prediction":
                        await pilot.press("escape")
                await pilot.press("enter")
            assert play.finished
            assert "Lesson complete" in str(app.query_one("#feedback").render())

    asyncio.run(run())
    progress = Progress.load()
    assert progress.done(lesson) and progress.passed(lesson)
    assert progress.counts(lesson)["first_try"] == len(lesson.questions)


def test_app_keys_work_while_the_answer_box_is_not_focused(traces):
    lesson = next(l for l in LESSONS if l.model == "cnn" and any(s.question for s in l.steps))
    index = next(i for i, s in enumerate(lesson.steps) if s.question)
    session, scratch, report = traces[lesson.id]
    play = LessonSession(lesson, session.trace, Progress.load(), report, start=index)
    app = NNTraceApp(no_keras(session), scratch, play)

    async def run():
        async with app.run_test(size=(80, 24)) as pilot:
            box = app.query_one("#answer")
            assert app.focused is box  # a question focuses the box
            await pilot.press("g")
            assert box.value == "g"  # typed, not a command
            await pilot.press("backspace", "escape")
            assert app.focused is not box
            await pilot.press("question_mark")
            assert app.screen.__class__.__name__ == "HelpScreen"
            await pilot.press("escape", "a")
            assert app.focused is box
            await pilot.press("enter")  # nothing typed: says how to answer
            assert "Type your answer" in str(app.query_one("#feedback").render())

    asyncio.run(run())


def test_wrong_answers_get_a_hint_then_the_answer_and_count_as_revealed(traces):
    lesson, index = QUESTIONS[0]
    session, scratch, report = traces[lesson.id]
    play = LessonSession(lesson, session.trace, Progress.load(), report, start=index)
    app = NNTraceApp(no_keras(session), scratch, play)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            feedback = app.query_one("#feedback")
            await pilot.press(*"-12345", "enter")
            assert not play.answered and "Hint" in str(feedback.render())
            assert play.hidden()  # still withheld
            await pilot.press(*"-12345", "enter", *"-12345", "enter")
            assert play.answered and play.tries == 3
            assert format_answer(play.expected()) in str(feedback.render())

    asyncio.run(run())
    progress = Progress.load()
    assert progress.counts(lesson)["revealed"] == 1 and not progress.passed(lesson)


def test_scores_first_try_after_hint_revealed_and_the_lessons_listing(traces, capsys):
    lesson = next(l for l in LESSONS if len([s for s in l.steps if s.question]) >= 2)
    session, _, report = traces[lesson.id]
    play = LessonSession(lesson, session.trace, Progress.load(), report, start=0)
    outcomes = []
    while not play.finished:
        if play.step.question:
            if not outcomes:
                play.answer(format_answer(play.expected()))
                outcomes.append("first")
            else:
                play.answer("-99999")
                play.answer(format_answer(play.expected()))
                outcomes.append("hint")
        elif play.step.task:
            play.answered = True
        play.next()
    progress = Progress.load()
    counts = progress.counts(lesson)
    assert counts == {"first_try": 1, "after_hint": len(outcomes) - 1, "revealed": 0}
    assert progress.passed(lesson) and progress.label(lesson).startswith("✓")
    assert cli.main(["lessons"]) == 0
    out = capsys.readouterr().out
    assert f"{counts['first_try']} first try" in out and "after a hint" in out


def test_a_number_typed_to_the_printed_precision_counts():
    assert check_answer("0.95", 0.9512, 1e-4)       # rounds to the printed digits
    assert not check_answer("0.96", 0.9512, 1e-4)
    assert not check_answer("1", 0.9512, 1e-4)      # one digit is not the printed precision
    assert check_answer("-0.804", -0.80394, 1e-5) and check_answer("−0.8039", -0.80394, 1e-5)
    assert not check_answer("nan", 0.5, 1e-3) and not check_answer("inf", 0.5, 1e-3)


def test_progress_survives_a_restart_and_a_damaged_file(tmp_path):
    lesson = LESSONS[1]
    progress = Progress.load()
    progress.record(lesson, 2)
    assert Progress.load().step_of(lesson) == 2
    path = progress.path
    path.write_text("{ not json")
    damaged = Progress.load()
    assert "could not be read" in damaged.note and path.with_name(path.name + ".bak").read_text() == "{ not json"
    assert damaged.step_of(lesson) == 0
    damaged.record(lesson, 1)
    assert Progress.load().step_of(lesson) == 1
    path.write_text(json.dumps({lesson.id: {"step": 999, "done": "yes", "scores": {"1": "cheated", "2": "revealed"}}}))
    odd = Progress.load()
    assert odd.step_of(lesson) == len(lesson.steps) - 1  # clamped
    assert odd.scores(lesson) == {"2": "revealed"}
    path.write_text(json.dumps({lesson.id: {"step": -4}}))
    assert Progress.load().step_of(lesson) == 0


def test_a_read_only_state_directory_says_progress_not_saved(tmp_path, monkeypatch):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    monkeypatch.setenv("NNTRACE_STATE", str(blocked / "state"))
    progress = Progress.load()
    progress.record(LESSONS[0], 1)
    assert progress.note.startswith("progress not saved")


def test_a_lesson_with_a_mistake_names_file_and_step(tmp_path, traces):
    bad = tmp_path / "99-bad.toml"
    bad.write_text('title = "bad"\nmodel = "cnn"\n[[steps]]\ntext = "ok"\n[[steps]]\ntext = "x"\n'
                   'goto = { layer = "first:Conv3D" }\n')
    lesson = parse_lesson(bad)
    session, _, report = cli.lesson_trace(lesson)
    with pytest.raises(LessonError, match=r"99-bad.toml, step 2: no layer matches 'first:Conv3D'"):
        validate(lesson, session.trace, report)
    bad.write_text('title = "bad"\nmodel = "cnn"\n[[steps]]\ntext = "x"\ngoto = { layer = "first:Conv2D", '
                   'at = { row = 1, col = 1, filter = 0 } }\n[steps.question]\nprompt = "p"\noperands = { a = "total" }\n'
                   'formula = "a + 1"\nanswer = { field = "total" }\n')
    with pytest.raises(LessonError, match="99-bad.toml, step 1: the formula 'a \\+ 1' gives"):
        validate(parse_lesson(bad), session.trace, report)
    bad.write_text('title = "bad"\nmodel = "cnn"\n[[steps]]\ntext = "x"\n[steps.question]\nprompt = "p"\n'
                   'answer = { field = "total" }\n')
    with pytest.raises(LessonError, match="a compute question names its 'operands'"):
        parse_lesson(bad)
    bad.write_text('title = "bad"\nmodel = "vgg"\nsteps = []\n')
    with pytest.raises(LessonError, match="99-bad.toml: model must be one of cnn, rnn, lstm, gru, attention"):
        parse_lesson(bad)


def test_formulas_take_names_and_arithmetic_only():
    assert evaluate("sum(p * k) + 1", {"p": np.array([1.0, 2.0]), "k": np.array([3.0, 4.0])}) == 12.0
    for bad in ("__import__('os')", "p.__class__", "open('x')"):
        with pytest.raises((KeyError, NameError, TypeError)):
            evaluate(bad, {"p": 1.0})
    assert set(FUNCTIONS) >= {"sum", "exp", "tanh", "sigmoid", "floor", "mean"}


def test_choices_are_taken_typed_or_by_number():
    options = ["kernel 3×3", "kernel 5×5", "kernel 7×7"]
    assert check_answer("Kernel  3x3", "kernel 3×3", 0.0, options)
    assert check_answer("1", "kernel 3×3", 0.0, options)
    assert not check_answer("2", "kernel 3×3", 0.0, options)
    assert not check_answer("4", "kernel 3×3", 0.0, options)  # no fourth option: read as text, which is wrong
    assert not check_answer("kernel 5x5", "kernel 3×3", 0.0, options)


def test_unit_rules_read_operands_and_nearer_answers_for_gru_and_attention_steps():
    from nntrace.lessons.runner import Question, expected_answer, operand_value, resolve_unit
    from nntrace.tracer.events import AttentionStep, GRUStep

    row = AttentionStep("att", head=0, query=1, logits=np.array([0.5, 2.0, -1.0, -3e38], np.float32),
                        weights=np.array([0.18, 0.80, 0.02, 0.0], np.float32), mask=np.array([True, True, True, False]))
    assert resolve_unit({"unit": "first_masked"}, None, row) == 3
    assert resolve_unit({"unit": "max:weights"}, None, row) == 1 and resolve_unit({"unit": "min:logits"}, None, row) == 3
    np.testing.assert_array_equal(operand_value("logits[read]", None, row, 0), [0.5, 2.0, -1.0])
    with pytest.raises(KeyError, match="no field 'nothing'"):
        resolve_unit({"unit": "max:nothing"}, None, row)
    every = dataclasses.replace(row, mask=None)
    assert operand_value("logits[read]", None, every, 0).shape == (4,)
    with pytest.raises(KeyError, match="reads every key"):
        resolve_unit({"unit": "first_masked"}, None, every)
    z, h_prev, h_tilde = np.array([0.9, 0.2, 0.5]), np.ones(3), -np.ones(3)
    step = GRUStep("gru", z=z, h_prev=h_prev, h_tilde=h_tilde, h=z * h_prev + (1 - z) * h_tilde)
    nearer = Question("p", {"nearer": "h", "of": ["h_prev", "h_tilde"], "index": "unit",
                            "names": ["h_prev", "candidate"]}, "predict", ["h_prev", "candidate"])
    assert [expected_answer(nearer, None, step, unit=u) for u in (0, 1)] == ["h_prev", "candidate"]
    with pytest.raises(KeyError, match="as close"):  # z = 0.5: halfway, no answer
        expected_answer(nearer, None, step, unit=2)


@pytest.mark.parametrize("number", [21, 22])
def test_backprop_through_time_shows_one_step_back_and_hides_the_rest(number, traces):
    """‖δh‖ at the last real token and one step back are on screen: the factor of one step, from
    which the learner predicts the sweep; every earlier norm is withheld until the answer, and the
    answer is what repeating that factor predicts."""
    lesson = next(l for l in LESSONS if l.number == number)

    async def run():
        app, play = await open_question(lesson, 0, traces, (120, 40))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            screen = screen_text(app)
            e = play.event
            sweep = {ev.time: ev for ev in app.replay.sweep() if not ev.masked}
            tokens = play.current.context["tokens"]
            rows = {t: line for t in sweep for line in screen.splitlines()
                    if re.match(rf"\s*{t} {re.escape(tokens[t][:10])}\s", line)}
            assert len(rows) == len(sweep) >= 4
            for t, line in rows.items():
                if t in (e.time, e.time - 1):
                    assert plain(sweep[t].norm) in line, line
                else:
                    assert plain(sweep[t].norm) not in line and "?" in line, line
            factor = sweep[e.time - 1].norm / sweep[e.time].norm
            predicted = tokens[min(sweep) if factor > 1 else e.time]
            assert play.expected() == predicted
            await pilot.press(*predicted, "enter")
            await pilot.pause()
            screen = screen_text(app)
            assert all(plain(ev.norm) in screen for ev in sweep.values())

    asyncio.run(run())
