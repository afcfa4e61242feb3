"""The `nntrace` command: argument parsing and dispatch. Heavy imports happen inside each command."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from layers.errors import NNTraceError

TRAIN_DEFAULTS = {  # kind → (model name, epochs, batch size)
    "cnn": ("cnn", 40, 128),
    "rnn": ("simple_rnn", 60, 32),
    "lstm": ("lstm", 60, 32),
}


def settings_for(kind: str):
    from models.builders import CNNSettings, TextSettings

    if kind == "cnn":
        return CNNSettings()
    if kind == "rnn":
        return TextSettings(cell="simple_rnn", units=64, bidirectional=True, dropout=0.5)
    return TextSettings(cell="lstm")


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from models.data import load_cifar10, load_nusax
    from models.train import fit

    console = Console()
    name, epochs, batch = TRAIN_DEFAULTS[args.kind]
    name = args.name or name
    out = Path(args.out)
    target = out / f"{name}.keras"
    if target.exists() and not args.overwrite and not (out / f"{name}-backup").exists():
        console.print(f"[red]{target} exists[/red]: pass --overwrite to replace it, or --out another directory")
        return 2
    data = load_cifar10(args.data) if args.kind == "cnn" else load_nusax(args.data)
    if args.quick:
        data = data.subset(2000 if args.kind == "cnn" else 200, 500 if args.kind == "cnn" else 100)
        epochs = 2
    epochs = args.epochs or epochs
    log = open(args.log, "a", encoding="utf-8") if args.log else None
    try:
        result = fit(args.kind, settings_for(args.kind), data, out, name, epochs, args.batch_size or batch,
                     seed=args.seed, log=log, progress=not args.no_progress)
    finally:
        if log:
            log.close()
    m = result.metrics
    console.print(f"[bold]{name}[/bold]: test macro-F1 Keras {m['keras_f1']:.4f}, scratch {m['scratch_f1']:.4f}, "
                  f"agreement {m['agreement']:.2f}%, max |Δp| {m['max_prob_diff']:.2e} → {result.keras_path}")
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from models.experiments import GROUPS, run_experiments

    unknown = [g for g in args.only or [] if g not in GROUPS and g not in ("cnn", "rnn", "lstm")]
    if unknown:
        print(f"nntrace: unknown group(s) {', '.join(unknown)}; groups: {', '.join(GROUPS)} "
              "(or a family: cnn, rnn, lstm)", file=sys.stderr)
        return 2
    out = Path(args.out or ("runs/experiments-quick" if args.quick else "reports"))
    log = open(args.log, "a", encoding="utf-8") if args.log else None
    try:
        results = run_experiments(out, only=args.only, quick=args.quick, data_dir=args.data, log=log,
                                  progress=not args.no_progress)
    finally:
        if log:
            log.close()
    print(f"{len(results)} variants in {out / 'experiments.json'}; report: {out / 'experiments.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nntrace", description="Step through a neural network's forward pass.")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="train a reference model (Keras) and save it with its scratch twin")
    train.add_argument("kind", choices=sorted(TRAIN_DEFAULTS))
    train.add_argument("--out", default="runs", help="output directory (default: runs)")
    train.add_argument("--name", help="file name stem (default: cnn / simple_rnn / lstm)")
    train.add_argument("--data", help="data directory (default: $NNTRACE_DATA, shared/data, online)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--log", help="append one line per epoch to this file")
    train.add_argument("--quick", action="store_true", help="small subsets, 2 epochs")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (for background runs)")
    train.set_defaults(func=cmd_train)

    exp = sub.add_parser("experiments", help="train and evaluate the hyperparameter grid (resumable)")
    exp.add_argument("--only", nargs="+", metavar="GROUP", help="only these groups (or families cnn/rnn/lstm)")
    exp.add_argument("--quick", action="store_true", help="small subsets and 2 epochs (default out: runs/)")
    exp.add_argument("--out", help="output directory (default: reports)")
    exp.add_argument("--data", help="data directory")
    exp.add_argument("--log", help="append progress lines to this file")
    exp.add_argument("--no-progress", action="store_true")
    exp.set_defaults(func=cmd_experiments)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 0
    try:
        return args.func(args)
    except (NNTraceError, FileNotFoundError, FileExistsError) as exc:
        print(f"nntrace: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nntrace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
