"""`nntrace experiments --quick`: the whole grid on tiny data, resumable, with report and figures."""
import json

from nntrace import cli
from nntrace.models import experiments
from nntrace.models import train as train_module


def test_quick_grid_end_to_end_and_resumable(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "exp"
    args = ["experiments", "--quick", "--out", str(out), "--data", str(data_dir), "--no-progress"]
    assert cli.main(args + ["--only", "cnn_pooling", "lstm_direction"]) == 0
    first = json.loads((out / "experiments.json").read_text())
    assert {r["key"] for r in first} == {"cnn_pooling/max pooling", "cnn_pooling/average pooling",
                                         "lstm_direction/unidirectional", "lstm_direction/bidirectional"}

    calls = []
    real_fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda *a, **k: calls.append(a[4]) or real_fit(*a, **k))
    assert cli.main(args) == 0  # the rest of the grid; finished variants are skipped
    results = json.loads((out / "experiments.json").read_text())
    distinct = {experiments.settings_key(v.kind, json.loads(json.dumps(v.settings.to_dict())))
                for v in experiments.grid()}
    assert len(calls) == len(distinct) - 4  # each family's base model is trained once, not once per group
    assert {r["group"] for r in results} == set(experiments.GROUPS)
    assert results[:4] == first
    by_key = {r["key"]: r for r in results}
    shared = by_key["cnn_kernel_size/kernel 3×3"]
    assert shared["same_run_as"] == "cnn_pooling/max pooling"
    assert shared["keras_f1"] == by_key["cnn_pooling/max pooling"]["keras_f1"]
    assert "kernel 3×3 (same run as *cnn_pooling/max pooling*)" in (out / "experiments.md").read_text()
    for r in results:
        assert set(r) >= {"group", "settings", "keras_f1", "scratch_f1", "agreement", "max_prob_diff"}
        assert r["agreement"] == 100.0 and r["max_prob_diff"] <= 1e-5
        assert len(r["history"]["loss"]) == r["epochs_run"] >= 1
    report = (out / "experiments.md").read_text()
    for group in experiments.GROUPS:
        assert (out / "figures" / f"{group}.png").stat().st_size > 1000
        assert f"## {group}" in report and f"figures/{group}.png" in report
    assert "Quick run" in report and "TF-IDF" in report
    (out / "experiments.md").unlink()
    assert cli.main(["experiments", "--report-only", "--out", str(out)]) == 0
    assert (out / "experiments.md").read_text() == report  # rebuilt from the saved results alone


def test_unknown_group_is_refused(capsys):
    assert cli.main(["experiments", "--only", "cnn_colour"]) == 2
    assert "unknown group" in capsys.readouterr().err


def test_seeds_rerun_variants_and_the_report_gives_mean_and_sd(tmp_path, data_dir):
    out = tmp_path / "exp"
    said = []
    results = experiments.run_experiments(out, only=["lstm_direction"], quick=True, data_dir=data_dir,
                                          progress=False, say=said.append, seeds=3)
    keys = [r["key"] for r in results]
    assert keys.count("lstm_direction/unidirectional") == 1 and "lstm_direction/bidirectional#seed2" in keys
    assert sorted(r["seed"] for r in results if r["label"] == "bidirectional") == [0, 1, 2]
    # every seed is a run of its own: different initial weights give different histories
    histories = {tuple(r["history"]["loss"]) for r in results if r["label"] == "bidirectional"}
    assert len(histories) == 3
    again = experiments.run_experiments(out, only=["lstm_direction"], quick=True, data_dir=data_dir,
                                        progress=False, say=said.append, seeds=3)
    assert len(again) == len(results) == 6  # resumed: nothing trained twice
    report = (out / "experiments.md").read_text()
    import numpy as np
    f1 = np.array([r["keras_f1"] for r in results if r["label"] == "unidirectional"])
    assert f"| unidirectional | 3 | {f1.mean():.4f} ± {f1.std(ddof=1):.4f} |" in report
    assert "inside the spread" in report or "larger than the spread" in report


def test_the_reading_calls_a_difference_inside_the_spread_noise():
    rows = [{"label": label, "keras_f1": f1, "val_keras_f1": f1, "agreement": 100.0, "max_prob_diff": 1e-7}
            for label, values in (("a", (0.70, 0.74, 0.72)), ("b", (0.69, 0.73, 0.71)), ("c", (0.50, 0.51, 0.52)))
            for f1 in values]
    reading = experiments.spread_reading(experiments.variant_stats(rows))
    assert "a vs b: test difference +0.0100" in reading and "a vs b" in reading.split("noise")[0]
    assert "a vs c: test difference +0.2100, sd 0.0200 + 0.0100 = 0.0300, larger than the spread" in reading
