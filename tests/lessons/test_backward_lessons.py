"""The runner's backward-pass steps: a goto with `pass = "backward"` reads a backward trace against
the label it names, rules pick steps on backward events, and an `sgd` step reports the model's own
step on a copy, leaving the model unchanged."""
import numpy as np
import pytest

from nntrace import cli
from nntrace.lessons.runner import LessonSession, load_lessons, pass_trace, resolve_goto, sgd_step

LESSONS = {l.number: l for l in load_lessons()}


@pytest.fixture(scope="module")
def cnn():
    session, _, report = cli.lesson_trace(LESSONS[23])
    return session.trace, report


def test_backward_goto_reads_the_backward_pass_against_its_label(cnn):
    trace, _ = cnn
    cache = {}
    order = np.argsort(trace.probabilities)
    second = pass_trace({"pass": "backward", "label": "second", "layer": "loss"}, trace, cache)
    assert second.backward and second.context["label"] == int(order[-2])
    assert pass_trace({"pass": "backward", "layer": "loss"}, trace, cache).context["label"] == int(order[-1])
    assert pass_trace({"layer": "loss"}, trace, cache) is trace
    layer, index = resolve_goto({"layer": "first:MaxPooling2D", "at": {"winner": "not_first",
                                                                      "largest": "output_gradient"}}, second)
    chosen = [e for i, e in enumerate(second.steps(layer)) if i == index][0]
    assert tuple(chosen.winner) != (0, 0)
    others = [abs(e.output_gradient) for e in second.steps(layer) if tuple(e.winner) != (0, 0)]
    assert abs(chosen.output_gradient) == max(others)


def test_an_sgd_step_is_the_models_step_on_a_copy(cnn):
    trace, report = cnn
    play = LessonSession(LESSONS[23], trace, None, report, start=0)
    s = play.sgd
    bias = trace.model.layer(s.layer).weights["bias"]
    assert s.weight == float(bias[s.unit])  # the model itself is unchanged
    assert s.new_weight == pytest.approx(s.weight - s.learning_rate * s.gradient, abs=1e-6)
    assert s.loss_before == pytest.approx(play.current.context["loss"], rel=1e-5)
    with pytest.raises(KeyError, match="dense unit"):
        sgd_step({"learning_rate": 0.1}, trace, None, s.layer)
