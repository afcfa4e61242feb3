"""Tracing a model: layer-level events, lazy steps, record → replay, and the Keras comparison."""
import numpy as np
import pytest

from nntrace.models import load_scratch
from nntrace.tracer import Recorder, trace
from nntrace.tracer.io import TraceFormatError, load_trace, save_trace
from tests.keras_models import small_cnn, small_text_model


def test_layer_events_hold_the_sample_outputs():
    scratch = load_scratch(small_cnn())
    x = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    t = trace(scratch, x, sample=2)
    outputs = {layer.name: out for layer, out, _ in scratch.forward_layers(x)}
    ends = [e for e in t.events if e.kind == "layer_end"]
    assert [e.layer for e in ends] == [l.name for l in scratch.layers]
    for e in ends:
        np.testing.assert_allclose(e.output, outputs[e.layer][2], rtol=1e-6, atol=1e-6)
        assert e.output_shape == (1,) + outputs[e.layer].shape[1:]
    assert t.default_fine_layer() == "conv"
    first = next(t.steps("conv", rows=[2], cols=[3], filters=[1]))
    assert first.value == pytest.approx(float(outputs["conv"][2, 2, 3, 1]), rel=1e-5, abs=1e-6)


def test_text_trace_knows_the_tokens():
    scratch = load_scratch(small_text_model())
    t = trace(scratch, ["Enak sekali, kawan!"])
    assert t.context["tokens"][:3] == ["enak", "sekali", "kawan"] and t.context["tokens"][3] == ""
    lookups = list(t.steps(scratch.layers[1].name))
    assert [e.oov for e in lookups[:3]] == [False, False, True] and lookups[3].padding
    end = [e for e in t.events if e.kind == "layer_end" and e.layer == scratch.layers[1].name][0]
    np.testing.assert_array_equal(end.mask, [True, True, True, False, False, False])


def test_recorder_refuses_to_nest():
    with Recorder():
        with pytest.raises(RuntimeError, match="nest"):
            with Recorder():
                pass


def test_record_and_replay_round_trip(tmp_path):
    scratch = load_scratch(small_text_model())
    t = trace(scratch, ["tidak enak"])
    bi = next(n for n, c in t.layers if c == "Bidirectional")
    path = save_trace(t, tmp_path / "run.nntrace", everything=True)
    replay = load_trace(path)
    assert replay.layers == t.layers and replay.context["tokens"] == t.context["tokens"]
    for a, b in zip(t.events, replay.events):
        assert type(a) is type(b) and a.layer == b.layer
        if a.kind == "layer_end":
            np.testing.assert_array_equal(a.output, b.output)
            assert a.output_shape == b.output_shape
    live, again = list(t.steps(bi)), list(replay.steps(bi))
    assert len(live) == len(again) > 0
    for a, b in zip(live, again):
        assert type(a) is type(b)
        for f in ("h", "c", "i", "f", "g", "o", "merged"):
            if getattr(a, f, None) is not None:
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert getattr(a, "masked", None) == getattr(b, "masked", None)
    with pytest.raises(FileExistsError):
        save_trace(t, path)


def test_default_file_has_one_fine_layer_and_unknown_versions_are_rejected(tmp_path):
    scratch = load_scratch(small_cnn())
    t = trace(scratch, np.zeros((1, 8, 8, 3), np.float32))
    path = save_trace(t, tmp_path / "cnn.nntrace")
    replay = load_trace(path)
    assert list(replay.recorded_steps) == ["conv"]
    patch = next(replay.steps("conv"))
    assert isinstance(patch.origin, tuple) and patch.patch.shape == (3, 3, 3)
    lines = path.read_text().splitlines()
    path.write_text(lines[0].replace('"version": 1', '"version": 7') + "\n" + "\n".join(lines[1:]))
    with pytest.raises(TraceFormatError, match="version 7"):
        load_trace(path)
