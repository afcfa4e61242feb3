"""The hyperparameter grid: each variant trained and evaluated the same way, results saved as they come.

`run_experiments()` appends one record per finished variant to `<out>/experiments.json` (so a killed
run loses at most the variant in progress and a restart skips what is done), draws one loss-curve
figure per group, and writes `<out>/experiments.md`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, TextIO

from nntrace.models.builders import CNNSettings, TextSettings


@dataclass(frozen=True)
class Variant:
    group: str
    label: str  # what changes, e.g. "kernel 5×5"
    kind: str   # cnn | rnn | lstm
    settings: CNNSettings | TextSettings

    @property
    def key(self) -> str:
        return f"{self.group}/{self.label}"


#: Experiments use the seed report's plain CNN (no batch norm, no augmentation) so the effect of
#: each setting shows; the shipped default adds both.
CNN_BASE = CNNSettings(batch_norm=False, augment=False, dropout=0.3)
TEXT_BASE = {"rnn": TextSettings(cell="simple_rnn", bidirectional=False),
             "lstm": TextSettings(cell="lstm", bidirectional=False)}


def grid() -> list[Variant]:
    v = []
    for n in (2, 4, 6):
        v.append(Variant("cnn_conv_layers", f"{n} conv layers", "cnn", replace(CNN_BASE, conv_layers=n)))
    for f in ((16, 32, 64), (32, 64, 128), (64, 128, 256)):
        v.append(Variant("cnn_filters", "-".join(map(str, f)) + " filters", "cnn", replace(CNN_BASE, filters=f)))
    for k in (3, 5, 7):
        v.append(Variant("cnn_kernel_size", f"kernel {k}×{k}", "cnn", replace(CNN_BASE, kernel_size=k)))
    for p in ("max", "average"):
        v.append(Variant("cnn_pooling", f"{p} pooling", "cnn", replace(CNN_BASE, pooling=p)))
    for kind, base in TEXT_BASE.items():
        for n in (1, 2, 3):
            v.append(Variant(f"{kind}_layers", f"{n} layer{'s' * (n > 1)}", kind, replace(base, rnn_layers=n)))
        for u in (32, 64, 128):
            v.append(Variant(f"{kind}_units", f"{u} units", kind, replace(base, units=u)))
        for bi in (False, True):
            v.append(Variant(f"{kind}_direction", "bidirectional" if bi else "unidirectional", kind,
                             replace(base, bidirectional=bi)))
    return v


GROUPS = sorted({v.group for v in grid()})


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def save_results(path: Path, results: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def seeded_key(variant: Variant, seed: int) -> str:
    """A record's key: the variant's for seed 0 (the first run), `…#seed<N>` for reruns."""
    return variant.key if seed == 0 else f"{variant.key}#seed{seed}"


def run_experiments(out: Path, only: list[str] | None = None, quick: bool = False, data_dir=None,
                    log: TextIO | None = None, progress: bool = True,
                    say: Callable[[str], None] = print, seeds: int = 1) -> list[dict]:
    """Train every variant (with seeds 0…seeds−1) not yet in `<out>/experiments.json`; returns all
    records."""
    from nntrace.models.data import load_cifar10, load_nusax
    from nntrace.models.train import fit

    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "experiments.json"
    results = load_results(results_path)
    done = {r["key"] for r in results}
    todo = [(v, seed) for seed in range(seeds) for v in grid()
            if (not only or v.group in only or v.kind in only) and seeded_key(v, seed) not in done]
    data = {}
    for i, (variant, seed) in enumerate(todo, 1):
        key = seeded_key(variant, seed)
        same = same_settings(results, variant, quick, seed)
        if same is not None:  # e.g. "kernel 3×3" is the base CNN that "max pooling" already trained
            say(f"[{i}/{len(todo)}] {key}: same settings as {same['key']}, result reused")
            results.append({**same, "key": key, "group": variant.group, "label": variant.label,
                            "same_run_as": same.get("same_run_as", same["key"])})
            save_results(results_path, results)
            continue
        family = "cnn" if variant.kind == "cnn" else "text"
        if family not in data:
            data[family] = load_cifar10(data_dir) if family == "cnn" else load_nusax(data_dir)
            if quick:
                data[family] = data[family].subset(*((1000, 300) if family == "cnn" else (300, 100)))
        # The plain CNN peaks after about 6 epochs and then overfits: 12 epochs with patience 3 cover it.
        epochs, batch = (2, 64) if quick else ((12, 128) if family == "cnn" else (40, 32))
        say(f"[{i}/{len(todo)}] {key}")
        name = key.replace("/", "__").replace(" ", "_").replace("×", "x").replace("#", "_")
        run = fit(variant.kind, variant.settings, data[family], out / "runs", name, epochs, batch, seed=seed,
                  log=log, progress=progress, patience=3 if family == "cnn" else 8)
        m = run.metrics
        results.append({"key": key, "group": variant.group, "label": variant.label, "kind": variant.kind, "seed": seed,
                        "settings": variant.settings.to_dict(), "keras_f1": m["keras_f1"],
                        "scratch_f1": m["scratch_f1"], "agreement": m["agreement"],
                        "max_prob_diff": m["max_prob_diff"], "val_keras_f1": m["val_keras_f1"],
                        "epochs_run": m["epochs_run"], "train_seconds": m["train_seconds"],
                        "n_train": m["n_train"], "n_test": m["n_test"], "quick": quick,
                        "history": {k: run.history[k] for k in ("loss", "val_loss") if k in run.history}})
        save_results(results_path, results)
    if "text" in data or (not only or any(g.startswith(("rnn", "lstm")) for g in only)):
        baselines_path = out / "baselines.json"
        if not baselines_path.exists():
            nusax = data.get("text") or load_nusax(data_dir)
            save_results(baselines_path, tfidf_baselines(nusax))
    write_report(out, results, load_results(out / "baselines.json"))
    return results


def settings_key(kind: str, settings: dict) -> str:
    return kind + json.dumps(settings, sort_keys=True)


def same_settings(results: list[dict], variant: Variant, quick: bool, seed: int = 0) -> dict | None:
    """A finished record trained with exactly this variant's settings and seed (groups share their
    base model)."""
    key = settings_key(variant.kind, json.loads(json.dumps(variant.settings.to_dict())))
    return next((r for r in results if r.get("quick") == quick and r.get("seed", 0) == seed
                 and settings_key(r["kind"], r["settings"]) == key), None)


def tfidf_baselines(data) -> list[dict]:
    """TF-IDF + logistic regression / linear SVM on the same NusaX split (train → test)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    from nntrace.models.train import macro_f1

    rows = []
    for features, vec in (("word 1–2-grams", lambda: TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                          ("char 2–5-grams", lambda: TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5),
                                                                     sublinear_tf=True))):
        for clf_name, clf in (("logistic regression", lambda: LogisticRegression(max_iter=2000, C=10)),
                              ("linear SVM", lambda: LinearSVC(C=1.0))):
            model = make_pipeline(vec(), clf()).fit(list(data.x_train), data.y_train)
            rows.append({"features": features, "classifier": clf_name,
                         "test_f1": macro_f1(data.y_test, model.predict(list(data.x_test)))})
    return rows


def plot_group(results: list[dict], group: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for r in results:
        if r["group"] != group:
            continue
        h = r["history"]
        ax_train.plot(range(1, len(h["loss"]) + 1), h["loss"], label=r["label"])
        if "val_loss" in h:
            ax_val.plot(range(1, len(h["val_loss"]) + 1), h["val_loss"], label=r["label"])
    for ax, title in ((ax_train, "training loss"), (ax_val, "validation loss")):
        ax.set_title(f"{group}: {title}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    ax_train.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def variant_stats(rows: list[dict]) -> list[dict]:
    """Per variant (in grid order): the seeds run and mean ± sd of test and validation macro-F1."""
    import numpy as np

    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        runs = [r for r in rows if r["label"] == label]
        test = np.array([r["keras_f1"] for r in runs])
        val = np.array([r["val_keras_f1"] for r in runs])
        sd = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0)  # noqa: E731
        out.append({"label": label, "runs": runs, "seeds": len(runs), "test_mean": float(test.mean()),
                    "test_sd": sd(test), "val_mean": float(val.mean()), "val_sd": sd(val)})
    return out


def spread_reading(stats: list[dict]) -> str:
    """Which differences between variants are inside the seed-to-seed spread (noise)."""
    best = max(stats, key=lambda s: s["val_mean"])
    parts = []
    for s in stats:
        if s is best:
            continue
        gap = best["test_mean"] - s["test_mean"]
        spread = best["test_sd"] + s["test_sd"]
        verdict = "inside the spread: noise, not a finding" if abs(gap) <= spread else "larger than the spread"
        parts.append(f"{best['label']} vs {s['label']}: test difference {gap:+.4f}, sd {best['test_sd']:.4f} + "
                     f"{s['test_sd']:.4f} = {spread:.4f}, {verdict}")
    return "; ".join(parts) + "."


def group_section(group: str, rows: list[dict]) -> list[str]:
    """One group's table: one row per run with a single seed, mean ± sd over seeds otherwise."""
    stats = variant_stats(rows)
    seeded = max(s["seeds"] for s in stats) > 1
    lines = [f"## {group}", ""]
    if seeded:
        low, high = min(s["seeds"] for s in stats), max(s["seeds"] for s in stats)
        lines += [f"Each variant trained with {low if low == high else f'{low}–{high}'} seeds (0–{high - 1}); "
                  "mean ± sd (sample standard deviation) over the seeds.", "",
                  "| variant | seeds | test macro-F1 | val macro-F1 | lowest agreement | max \\|Δp\\| |",
                  "|---|---|---|---|---|---|"]
        for s in stats:
            lines.append(f"| {s['label']} | {s['seeds']} | {s['test_mean']:.4f} ± {s['test_sd']:.4f} | "
                         f"{s['val_mean']:.4f} ± {s['val_sd']:.4f} | "
                         f"{min(r['agreement'] for r in s['runs']):.2f}% | "
                         f"{max(r['max_prob_diff'] for r in s['runs']):.1e} |")
        best = max(stats, key=lambda s: s["val_mean"])
        lines += ["", f"![{group}](figures/{group}.png)", "",
                  f"Best by mean validation macro-F1: **{best['label']}**. {spread_reading(stats)}", ""]
        return lines
    lines += ["One seed per variant: a difference between variants here may be seed-to-seed noise.", "",
              "| variant | Keras macro-F1 | scratch macro-F1 | agreement | max \\|Δp\\| | val macro-F1 | epochs |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        label = r["label"] + (f" (same run as *{r['same_run_as']}*)" if r.get("same_run_as") else "")
        lines.append(f"| {label} | {r['keras_f1']:.4f} | {r['scratch_f1']:.4f} | {r['agreement']:.2f}% | "
                     f"{r['max_prob_diff']:.1e} | {r['val_keras_f1']:.4f} | {r['epochs_run']} |")
    best = max(rows, key=lambda r: r["val_keras_f1"])
    spread = max(r["keras_f1"] for r in rows) - min(r["keras_f1"] for r in rows)
    lines += ["", f"![{group}](figures/{group}.png)", "",
              f"Best by validation: **{best['label']}** (test macro-F1 {best['keras_f1']:.4f}); "
              f"test macro-F1 spread across variants {spread:.4f}.", ""]
    return lines


def write_report(out: Path, results: list[dict], baselines: list[dict]) -> Path:
    """`experiments.md`: one table and one figure per group, the baselines, and what the numbers show."""
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    lines = ["# Experiments", "",
             "Every variant is trained with Keras (Adam, sparse categorical cross-entropy, early stopping on "
             "validation loss) and evaluated on the full test set twice: with Keras and with nntrace's scratch "
             "forward pass. `agreement` is the share of test samples where both predict the same class; "
             "`max |Δp|` the largest probability difference over all samples and classes. Each group changes one "
             "setting of its family's base model; rows marked *same run as* reuse the base model's run "
             "instead of training it again. CNN variants train up to 12 epochs (patience 3, best validation-loss "
             "weights kept), text variants up to 40 (patience 8, best validation macro-F1 weights kept).", ""]
    if any(r.get("quick") for r in results):
        lines += ["> **Quick run**: small subsets and 2 epochs — a pipeline check, not a result.", ""]
    for group in [g for g in GROUPS if any(r["group"] == g for r in results)]:
        rows = [r for r in results if r["group"] == group]
        plot_group([r for r in rows if r.get("seed", 0) == 0], group, figures / f"{group}.png")
        lines += group_section(group, rows)
    if results:
        worst_diff = max(r["max_prob_diff"] for r in results)
        min_agree = min(r["agreement"] for r in results)
        lines += ["## Scratch vs Keras", "",
                  f"Across all {len(results)} variants the lowest prediction agreement is {min_agree:.2f}% and the "
                  f"largest probability difference is {worst_diff:.1e}.", ""]
    if baselines:
        lines += ["## NusaX baselines (TF-IDF, scikit-learn)", "", "| features | classifier | test macro-F1 |",
                  "|---|---|---|"]
        lines += [f"| {b['features']} | {b['classifier']} | {b['test_f1']:.4f} |" for b in baselines]
        lines.append("")
    notes = out / "reading.md"
    if notes.exists():
        lines += ["## Reading the numbers", "", notes.read_text().strip(), ""]
    path = out / "experiments.md"
    path.write_text("\n".join(lines))
    return path
