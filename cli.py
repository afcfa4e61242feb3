"""The `nntrace` command: argument parsing and dispatch. Heavy imports happen inside each command."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nntrace.layers.errors import InputShapeError, NNTraceError

TRAIN_DEFAULTS = {  # kind → (model name, epochs, batch size, seed); seeds chosen by validation macro-F1
    "cnn": ("cnn", 40, 128, 0),
    "rnn": ("simple_rnn", 60, 32, 2),
    "lstm": ("lstm", 60, 32, 1),
}


def settings_for(kind: str):
    from nntrace.models.builders import CNNSettings, TextSettings

    if kind == "cnn":
        return CNNSettings()
    if kind == "rnn":  # chosen by validation macro-F1 (reports/text-model-selection.md)
        return TextSettings(cell="simple_rnn", units=32, embedding_dim=64, dropout=0.3, learning_rate=2e-3,
                            max_tokens=3000, embedding_dropout=0.2, embedding_init="lsa")
    return TextSettings(cell="lstm", units=64, embedding_dim=64, dropout=0.5, learning_rate=2e-3, max_tokens=5000,
                        embedding_init="lsa")


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nntrace.models.data import load_cifar10, load_nusax
    from nntrace.models.train import fit, open_log

    console = Console()
    name, epochs, batch, seed = TRAIN_DEFAULTS[args.kind]
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
    try:
        with open_log(args.log) as log:
            result = fit(args.kind, settings_for(args.kind), data, out, name, epochs, args.batch_size or batch,
                         seed=seed if args.seed is None else args.seed, log=log, progress=not args.no_progress)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: the finished epochs are kept in {out / (name + '-backup')}; "
                      "run the same command again to resume")
        return 130
    m = result.metrics
    console.print(f"[bold]{name}[/bold]: test macro-F1 Keras {m['keras_f1']:.4f}, scratch {m['scratch_f1']:.4f}, "
                  f"agreement {m['agreement']:.2f}%, max |Δp| {m['max_prob_diff']:.2e} → {result.keras_path}")
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from nntrace.models.experiments import GROUPS, run_experiments

    unknown = [g for g in args.only or [] if g not in GROUPS and g not in ("cnn", "rnn", "lstm")]
    if unknown:
        print(f"nntrace: unknown group(s) {', '.join(unknown)}; groups: {', '.join(GROUPS)} "
              "(or a family: cnn, rnn, lstm)", file=sys.stderr)
        return 2
    out = Path(args.out or ("runs/experiments-quick" if args.quick else "reports"))
    if args.report_only:
        from nntrace.models.experiments import load_results, write_report

        path = write_report(out, load_results(out / "experiments.json"), load_results(out / "baselines.json"))
        print(f"report rewritten from {out / 'experiments.json'}: {path}")
        return 0
    from nntrace.models.train import open_log

    try:
        with open_log(args.log) as log:
            results = run_experiments(out, only=args.only, quick=args.quick, data_dir=args.data, log=log,
                                      progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted: finished variants are kept in {out / 'experiments.json'} (the one in progress in its "
              "backup directory); run the same command again to continue", file=sys.stderr)
        return 130
    print(f"{len(results)} variants in {out / 'experiments.json'}; report: {out / 'experiments.md'}")
    return 0


def model_input(args: argparse.Namespace, scratch) -> tuple[object, str, str, int | None]:
    """The input for a command (an image file, a test image, a sentence, or the default), its
    description, a note such as "resized from 640×480 to 32×32", and its true class when known."""
    from nntrace.models.inputs import check_text, cifar_test_image, default_image, fit_to, load_image

    if scratch.takes_text or getattr(args, "text", None):
        if not scratch.takes_text:
            raise InputShapeError(scratch.layers[0].name, type(scratch.layers[0]).__name__, "an image",
                                  "--text (this is an image model)")
        text = check_text(args.text if args.text is not None else "Makanannya enak sekali, pelayanannya ramah!")
        return [text], f'"{text}"', "", None
    shape = scratch.input_info.get("shape") or [None, 32, 32, 3]
    size = (shape[2] or 32, shape[1] or 32)
    if getattr(args, "image", None):
        img = load_image(args.image, size=size)
    elif getattr(args, "index", None) is not None:
        img = fit_to(cifar_test_image(args.index, getattr(args, "data", None)), size)
    else:
        img = fit_to(default_image(getattr(args, "data", None)), size)
    return img.pixels, img.description + (f" ({img.note})" if img.note else ""), img.note, img.label


def cmd_trace(args: argparse.Namespace) -> int:
    from nntrace.models import load_scratch
    from nntrace.models.inputs import resolve_model
    from nntrace.tracer import trace
    from nntrace.tracer.io import save_trace

    scratch = load_scratch(resolve_model(args.model))
    x, described, _, _ = model_input(args, scratch)
    t = trace(scratch, x)
    path = save_trace(t, args.output, layers=args.layer, everything=args.all, overwrite=args.overwrite)
    print(f"traced {scratch.name} on {described}: {len(t.layers)} layers → {path} (+ {path.name}.npz)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nntrace.models import load_scratch
    from nntrace.models.convert import load_keras
    from nntrace.models.inputs import keras_path_for, resolve_model
    from nntrace.tracer.compare import ATOL, RTOL, compare

    path = resolve_model(args.model)
    keras_path = keras_path_for(path)
    if keras_path is None:
        print(f"nntrace: no Keras model beside '{path}' to compare with (expected {path.with_suffix('.keras')})",
              file=sys.stderr)
        return 2
    scratch = load_scratch(path)
    x, described, _, _ = model_input(args, scratch)
    rows = compare(scratch, load_keras(keras_path), x)
    table = Table(title=f"{scratch.name} on {described}: scratch vs Keras (rtol {RTOL:g}, atol {ATOL:g})")
    for col in ("layer", "class", "output shape", "max |Δ|", ""):
        table.add_column(col)
    for r in rows:
        table.add_row(r.layer, r.layer_class, str(r.shape), f"{r.max_abs_diff:.2e}",
                      "[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
    Console().print(table)
    return 0 if all(r.passed for r in rows) else 1


def open_session(args: argparse.Namespace):
    """Load the scratch model (no TensorFlow), trace the input, and describe where Keras lives."""
    from nntrace.models import load_scratch
    from nntrace.models.inputs import keras_path_for, resolve_model
    from nntrace.tracer import trace
    from nntrace.tui import Session

    spec = getattr(args, "model", None) or getattr(args, "kind", None) or "cnn"
    path = resolve_model(spec)
    scratch = load_scratch(path)
    kind = getattr(args, "kind", None)
    if kind and (kind != "cnn") != scratch.takes_text:
        raise InputShapeError(scratch.layers[0].name, type(scratch.layers[0]).__name__,
                              "text" if scratch.takes_text else "an image",
                              f"the '{kind}' view (pick the matching command)")
    x, described, note, label = model_input(args, scratch)
    t = trace(scratch, x)
    t.context.update(model_input=x, true_label=label)
    return Session(t, described, keras_path_for(path), f"image {note}" if note else ""), scratch


def run_app(make_app) -> int:
    """Run the app with TensorFlow's messages (fd 2) in the log file; the app's exit code."""
    from nntrace.views.app_log import stderr_to_log

    with stderr_to_log() as log:
        app = make_app(log)
        app.run()
    return app.return_code or 0


def cmd_view(args: argparse.Namespace) -> int:
    from nntrace.tui import NNTraceApp

    session, scratch = open_session(args)
    return run_app(lambda log: NNTraceApp(session, scratch, log=log))


def cmd_replay(args: argparse.Namespace) -> int:
    from nntrace.tracer.io import load_trace
    from nntrace.tui import NNTraceApp, Session

    t = load_trace(args.file)
    described = t.context.get("text") and f'"{t.context["text"]}"' or f"replay of {args.file}"
    return run_app(lambda log: NNTraceApp(Session(t, described, None, "replaying a recorded trace: Keras is not loaded"),
                                          log=log))


def cmd_serve(args: argparse.Namespace) -> int:
    """The same app in a browser (textual-serve): each browser tab runs `nntrace <view args>`."""
    import shlex

    from textual_serve.server import Server

    view = [args.view] + (["--model", args.model] if args.model else []) + \
        (["--text", args.text] if args.text else []) + (["--image", args.image] if args.image else []) + \
        (["--index", str(args.index)] if args.index is not None else [])
    command = shlex.join([sys.executable, "-m", "nntrace.cli", *view])
    print(f"serving nntrace on http://{args.host}:{args.port} (Ctrl+C to stop)")
    Server(command, host=args.host, port=args.port, title="nntrace").serve()
    return 0


REPORT = Path(__file__).resolve().parent / "reports" / "experiments.json"


def lesson_trace(lesson):
    """The shipped model, the lesson's input, its trace and Session (Keras beside it)."""
    import json

    from nntrace.models import load_scratch
    from nntrace.models.inputs import default_image, fit_to, keras_path_for, resolve_model
    from nntrace.tracer import trace
    from nntrace.tui import Session

    path = resolve_model(lesson.model)
    scratch = load_scratch(path)
    if "text" in lesson.input:
        x, described = [lesson.input["text"]], f'"{lesson.input["text"]}"'
    else:
        shape = scratch.input_info.get("shape") or [None, 32, 32, 3]
        img = fit_to(default_image(), (shape[2], shape[1]))
        x, described = img.pixels, img.description
    t = trace(scratch, x)
    t.context.update(model_input=x, true_label=None if "text" in lesson.input else img.label)
    report = json.loads(REPORT.read_text()) if REPORT.exists() else None
    return Session(t, described, keras_path_for(path)), scratch, report


def cmd_lessons(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nntrace.lessons.runner import Progress, load_lessons

    progress = Progress.load()
    if args.reset:
        progress.reset()
    table = Table(title="nntrace lessons — start one with `nntrace lesson N`")
    for col in ("#", "lesson", "model", "progress"):
        table.add_column(col)
    for lesson in load_lessons():
        mark = "[green]✓ done[/green]" if progress.done(lesson) else (
            f"step {progress.step_of(lesson) + 1}/{len(lesson.steps)}" if progress.step_of(lesson) else "·")
        table.add_row(str(lesson.number), lesson.title, lesson.model, mark)
    Console().print(table)
    return 0


def cmd_lesson(args: argparse.Namespace) -> int:
    from nntrace.lessons.runner import LessonSession, Progress, load_lessons, validate
    from nntrace.tui import NNTraceApp

    lessons = {l.number: l for l in load_lessons()}
    if args.number not in lessons:
        print(f"nntrace: no lesson {args.number}; lessons: {', '.join(map(str, sorted(lessons)))}", file=sys.stderr)
        return 2
    lesson = lessons[args.number]
    progress = Progress.load()
    if args.reset:
        progress.reset(lesson)
    session, scratch, report = lesson_trace(lesson)
    validate(lesson, session.trace, report)
    start = 0 if progress.done(lesson) else None
    return run_app(lambda log: NNTraceApp(session, scratch, LessonSession(lesson, session.trace, progress, report, start),
                                          log=log))


def add_input_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--image", help="a PNG or JPEG file (resized to 32×32)")
    group.add_argument("--index", type=int, help="the N-th CIFAR-10 test image")
    group.add_argument("--text", help="a sentence (text models)")
    p.add_argument("--data", help="data directory")


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
    train.add_argument("--seed", type=int, help="random seed (default: the one the shipped model used)")
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
    exp.add_argument("--report-only", action="store_true", help="rewrite the report from the saved results")
    exp.set_defaults(func=cmd_experiments)

    tr = sub.add_parser("trace", help="record a forward pass to a trace file (JSON lines + .npz)")
    tr.add_argument("model", help="cnn, rnn, lstm, or a .keras/.npz file")
    add_input_options(tr)
    tr.add_argument("-o", "--output", required=True, help="trace file to write, e.g. run.nntrace")
    tr.add_argument("--layer", action="append", help="record this layer's fine-grained steps (repeatable; "
                                                     "default: the first conv or recurrent layer)")
    tr.add_argument("--all", action="store_true", help="record every layer's fine-grained steps")
    tr.add_argument("--overwrite", action="store_true")
    tr.set_defaults(func=cmd_trace)

    cmp_ = sub.add_parser("compare", help="per-layer scratch vs Keras differences for one input")
    cmp_.add_argument("model", help="cnn, rnn, lstm, or a .keras/.npz file (with its .keras beside it)")
    add_input_options(cmp_)
    cmp_.set_defaults(func=cmd_compare)

    for kind, helptext in (("cnn", "step through the CNN on an image (default)"),
                           ("rnn", "step through the SimpleRNN model on a sentence"),
                           ("lstm", "step through the LSTM model on a sentence")):
        view = sub.add_parser(kind, help=helptext)
        view.add_argument("--model", help="a .keras or .npz file (default: the shipped model)")
        add_input_options(view)
        view.set_defaults(func=cmd_view, kind=kind)

    serve = sub.add_parser("serve", help="run the app in a browser (for a classroom projector)")
    serve.add_argument("view", nargs="?", default="cnn", choices=["cnn", "rnn", "lstm"])
    serve.add_argument("--model")
    add_input_options(serve)
    serve.add_argument("--host", default="localhost")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)

    ls = sub.add_parser("lessons", help="list the guided lessons with your progress")
    ls.add_argument("--reset", action="store_true", help="forget all lesson progress")
    ls.set_defaults(func=cmd_lessons)
    one = sub.add_parser("lesson", help="start or resume lesson N")
    one.add_argument("number", type=int)
    one.add_argument("--reset", action="store_true", help="start this lesson from the beginning")
    one.set_defaults(func=cmd_lesson)

    rep = sub.add_parser("replay", help="replay a recorded trace file without the model")
    rep.add_argument("file")
    rep.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):  # plain `nntrace`: the shipped CNN on a default image
        args = build_parser().parse_args(["cnn"])
    try:
        return args.func(args)
    except (NNTraceError, FileNotFoundError, FileExistsError, KeyError) as exc:
        print(f"nntrace: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nntrace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
