"""Choosing the text models: candidate settings × seeds, each trained with `fit`, compared on validation.

Run one round in the background with progress in a log; finished candidates are saved to
`<out>/selection.json` as they come, so a restart skips them:

    python -m nntrace.models.text_selection --round 6 --log runs/selection.log

The test macro-F1 is recorded to report it, never to choose: `best_by_validation()` looks at
`val_f1` only. Rounds 1–5 (word vocabularies) are tabled in `reports/text-model-selection.md`.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

from nntrace.models.builders import TextSettings


@dataclass(frozen=True)
class Candidate:
    round: int
    settings: TextSettings
    seed: int

    @property
    def key(self) -> str:
        s = self.settings
        return (f"r{self.round}-{s.cell}-{s.split}-u{s.units}-e{s.embedding_dim}-l{s.rnn_layers}"
                f"-d{s.dropout}-lr{s.learning_rate}-{s.embedding_init}{'' if s.train_embedding else '-frozen'}"
                f"-seed{self.seed}")


#: Round 6: character vocabularies. 16% of the test set's words never occur in the 500 training
#: sentences, so a word model sees them all as [UNK]; characters (as char n-gram TF-IDF does) keep
#: the affixes (me-, di-, -kan, -nya) that carry much of the meaning in Indonesian.
CHAR_LSTM = TextSettings(cell="lstm", split="character", max_tokens=100, sequence_length=300, embedding_dim=32,
                         units=64, dropout=0.5, learning_rate=2e-3)
#: Round 7: round 6's character models underfit (training accuracy ≈ 0.6): more units, less dropout,
#: a higher learning rate.
CHAR_LSTM_WIDE = replace(CHAR_LSTM, units=128, dropout=0.2, learning_rate=5e-3)
#: Round 8: back to words (the shipped LSTM's settings), with the SVD word vectors made spelling-aware.
WORD_LSTM_SUBWORD = TextSettings(cell="lstm", units=64, embedding_dim=64, dropout=0.5, learning_rate=2e-3,
                                 max_tokens=5000, embedding_init="lsa_subword")
#: Round 9: the same, with the word vectors frozen (180k embedding weights against 500 sentences).
WORD_LSTM_FROZEN = replace(WORD_LSTM_SUBWORD, train_embedding=False)
ROUNDS: dict[int, list[Candidate]] = {
    6: [Candidate(6, CHAR_LSTM, seed) for seed in (0, 1, 2)],
    7: [Candidate(7, CHAR_LSTM_WIDE, seed) for seed in (0, 1, 2)],
    8: [Candidate(8, WORD_LSTM_SUBWORD, seed) for seed in (0, 1, 2, 3, 4, 5)],
    9: [Candidate(9, WORD_LSTM_FROZEN, seed) for seed in (0, 1, 2, 3)],
}


def run_round(number: int, out: Path, data_dir=None, log=None, epochs: int = 60, batch_size: int = 32,
              say=print) -> list[dict]:
    """Train every candidate of round `number` not yet in `<out>/selection.json`; returns all records."""
    from nntrace.models.data import load_nusax
    from nntrace.models.experiments import load_results, save_results
    from nntrace.models.train import fit

    out.mkdir(parents=True, exist_ok=True)
    path = out / "selection.json"
    results = load_results(path)
    done = {r["key"] for r in results}
    data = load_nusax(data_dir)
    for c in ROUNDS[number]:
        if c.key in done:
            continue
        say(f"{c.key}: training")
        run = fit(c.settings.cell, c.settings, data, out / "runs", c.key, epochs, batch_size, seed=c.seed, log=log,
                  progress=False, patience=8)
        m = run.metrics
        results.append({"key": c.key, "round": c.round, "seed": c.seed, "settings": c.settings.to_dict(),
                        "val_f1": m["val_keras_f1"], "test_f1": m["keras_f1"], "scratch_test_f1": m["scratch_f1"],
                        "agreement": m["agreement"], "max_prob_diff": m["max_prob_diff"],
                        "epochs_run": m["epochs_run"], "train_seconds": m["train_seconds"]})
        save_results(path, results)
        say(f"{c.key}: validation macro-F1 {m['val_keras_f1']:.3f}, test {m['keras_f1']:.3f}")
    return results


def best_by_validation(results: list[dict]) -> dict:
    return max(results, key=lambda r: r["val_f1"])


def table(results: list[dict]) -> str:
    """Markdown rows in the layout of `reports/text-model-selection.md`."""
    lines = ["| round | cell | vocabulary | units | emb. dim | emb. init | seq. len | dropout | lr | seed | val F1 | "
             "test F1 | agreement | max \\|Δp\\| |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["round"], r["seed"])):
        s = r["settings"]
        init = s["embedding_init"] + ("" if s.get("train_embedding", True) else ", frozen")
        lines.append(f"| {r['round']} | {s['cell']} | {s.get('split', 'whitespace')} | {s['units']} | "
                     f"{s['embedding_dim']} | {init} | {s['sequence_length']} | {s['dropout']} | {s['learning_rate']} | "
                     f"{r['seed']} | {r['val_f1']:.3f} | {r['test_f1']:.3f} | {r['agreement']:.2f}% | "
                     f"{r['max_prob_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", type=int, choices=sorted(ROUNDS), required=True)
    parser.add_argument("--out", default="runs/text-selection")
    parser.add_argument("--data", default=None)
    parser.add_argument("--log", default=None)
    parser.add_argument("--table", action="store_true", help="print the saved results as a markdown table")
    args = parser.parse_args(argv)
    if args.table:
        from nntrace.models.experiments import load_results

        print(table(load_results(Path(args.out) / "selection.json")))
        return 0
    from nntrace.models.train import open_log

    with open_log(args.log) as log:
        results = run_round(args.round, Path(args.out), args.data, log)
    best = best_by_validation([r for r in results if r["round"] == args.round])
    print(f"best by validation: {best['key']} (validation {best['val_f1']:.3f}, test {best['test_f1']:.3f})")
    print(json.dumps(best["settings"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
