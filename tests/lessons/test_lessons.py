"""Every shipped lesson validates and plays through in the app, answered right and answered wrong."""
import asyncio
import dataclasses

import pytest

from nntrace import cli
from nntrace.lessons.runner import (LessonError, LessonSession, Progress, check_answer, format_answer, load_lessons,
                            parse_lesson, validate)
from nntrace.tui import NNTraceApp

LESSONS = load_lessons()


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("NNTRACE_STATE", str(tmp_path / "state"))


def no_keras(session):
    return dataclasses.replace(session, keras_path=None)  # lessons read the trace; Keras is optional


def test_there_are_fifteen_lessons_covering_the_brief():
    assert len(LESSONS) >= 15
    models = {l.model for l in LESSONS}
    assert models == {"cnn", "rnn", "lstm"}


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda l: l.id)
def test_shipped_lesson_plays_through_answering_right(lesson):
    session, scratch, report = cli.lesson_trace(lesson)
    validate(lesson, session.trace, report)
    progress = Progress.load()
    play = LessonSession(lesson, session.trace, progress, report)
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
                if step.question:
                    typed = format_answer(play.expected()).replace("×", "x")  # as a keyboard types it
                    await pilot.press(*typed, "enter")
                    assert play.answered and play.tries == 0
                await pilot.press("enter")
            assert play.finished
    asyncio.run(run())
    assert Progress.load().done(lesson)


@pytest.mark.parametrize("lesson", [l for l in LESSONS if any(s.question for s in l.steps)][:3], ids=lambda l: l.id)
def test_wrong_answers_get_a_hint_then_the_answer(lesson):
    session, scratch, report = cli.lesson_trace(lesson)
    play = LessonSession(lesson, session.trace, Progress.load(), report)
    app = NNTraceApp(no_keras(session), scratch, play)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            while play.step.question is None:
                await pilot.press("enter")
            feedback = app.query_one("#feedback")
            await pilot.press(*"-12345", "enter")
            assert not play.answered and "Hint" in str(feedback.render())
            await pilot.press(*"-12345", "enter")
            await pilot.press(*"-12345", "enter")
            assert play.answered and play.tries == 3
            assert format_answer(play.expected()) in str(feedback.render())
    asyncio.run(run())


def test_progress_survives_a_restart():
    lesson = LESSONS[1]
    session, _, report = cli.lesson_trace(lesson)
    play = LessonSession(lesson, session.trace, Progress.load(), report)
    play.next()  # step 1 has no question
    assert play.index == 1
    again = LessonSession(lesson, session.trace, Progress.load(), report)
    assert again.index == 1 and not Progress.load().done(lesson)
    Progress.load().reset(lesson)
    assert LessonSession(lesson, session.trace, Progress.load(), report).index == 0


def test_a_lesson_with_a_mistake_names_file_and_step(tmp_path):
    bad = tmp_path / "99-bad.toml"
    bad.write_text('title = "bad"\nmodel = "cnn"\n[[steps]]\ntext = "ok"\n[[steps]]\ntext = "x"\n'
                   'goto = { layer = "first:Conv3D" }\n')
    lesson = parse_lesson(bad)
    session, _, report = cli.lesson_trace(lesson)
    with pytest.raises(LessonError, match=r"99-bad.toml, step 2: no layer matches 'first:Conv3D'"):
        validate(lesson, session.trace, report)
    bad.write_text('title = "bad"\nmodel = "gru"\nsteps = []\n')
    with pytest.raises(LessonError, match="99-bad.toml: model must be cnn, rnn or lstm"):
        parse_lesson(bad)


def test_lessons_command_lists_progress(capsys):
    assert cli.main(["lessons"]) == 0
    out = capsys.readouterr().out
    assert "One patch, one dot product" in out and "Bidirectional" in out
    assert cli.main(["lesson", "99"]) == 2


def test_choices_are_taken_typed_or_by_number():
    options = ["kernel 3×3", "kernel 5×5", "kernel 7×7"]
    assert check_answer("Kernel  3x3", "kernel 3×3", 0.0, options)
    assert check_answer("1", "kernel 3×3", 0.0, options)
    assert not check_answer("2", "kernel 3×3", 0.0, options)
    assert not check_answer("4", "kernel 3×3", 0.0, options)  # no fourth option: read as text, which is wrong
    assert not check_answer("kernel 5x5", "kernel 3×3", 0.0, options)
    assert check_answer("0.25", 0.2501, 1e-3) and not check_answer("0.3", 0.2501, 1e-3)
