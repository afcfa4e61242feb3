"""The `nntrace` command: argument parsing and dispatch. Heavy imports happen inside each command."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

from nntrace.layers.errors import InputShapeError, NNTraceError


class UsageError(NNTraceError, ValueError):
    """A command-line argument the command cannot take."""


class SavedFileError(NNTraceError, ValueError):
    """A file nntrace wrote earlier (a training history, experiment results) that is damaged."""


class ServeError(NNTraceError, OSError):
    """`nntrace serve` cannot listen where it was asked to."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors raised as UsageError, so that they print as one line like every other."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def whole_number(text: str, low: int, high: int | None, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'")
    return value


def positive_int(text: str) -> int:
    """A count: 1, 2, 3…"""
    return whole_number(text, 1, None, "a positive whole number (1, 2, 3…)")


def non_negative_int(text: str) -> int:
    """An index: 0, 1, 2…"""
    return whole_number(text, 0, None, "a whole number from 0 up")


def seed_number(text: str) -> int:
    return whole_number(text, 0, 2**32 - 1, "a whole number from 0 to 4294967295")


def port_number(text: str) -> int:
    return whole_number(text, 1, 65535, "a port number from 1 to 65535")


def existing_path(text: str) -> str:
    """A data directory (or archive) that must exist: nntrace never falls back silently from it."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no directory or file at '{text}'")
    return text


def file_stem(text: str) -> str:
    """A file name without a directory, e.g. `cnn` or `my_lstm`."""
    if not text.strip() or text in (".", "..") or any(sep in text for sep in ("/", "\\", os.sep)):
        raise argparse.ArgumentTypeError(f"expected a plain file name such as 'my_cnn' (no directories), got '{text}'")
    return text


def output_dir(text: str) -> str:
    """A directory to write into: it may not exist yet, but may not be a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a file, not a directory")
    return text


def appendable_file(text: str) -> str:
    """A file to append to: not a directory, in a directory that exists."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a directory, not a file")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"the directory of '{text}' does not exist")
    return text


def output_file(text: str) -> str:
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a directory, not a file")
    return text


TRAIN_DEFAULTS = {  # kind → (model name, epochs, batch size, seed); seeds chosen by validation macro-F1
    "cnn": ("cnn", 40, 128, 0),
    "rnn": ("simple_rnn", 60, 32, 2),
    "lstm": ("lstm", 60, 32, 1),
    "gru": ("gru", 60, 32, 1),
    "attention": ("attention", 60, 32, 1),
}


def settings_for(kind: str):
    from nntrace.models.builders import AttentionSettings, CNNSettings, TextSettings

    if kind == "cnn":
        return CNNSettings()
    if kind == "gru":  # the demo models of the GRU and attention lessons: 2 settings × seeds 0, 1, by validation
        return TextSettings(cell="gru", units=32, embedding_dim=64, dropout=0.5, learning_rate=2e-3, max_tokens=3000,
                            embedding_init="lsa")
    if kind == "attention":
        return AttentionSettings(heads=2, units=8, embedding_dim=16, dropout=0.3, learning_rate=5e-3, max_tokens=3000,
                                 embedding_init="lsa", pre_norm=True)
    if kind == "rnn":  # chosen by validation macro-F1 (reports/text-model-selection.md)
        return TextSettings(cell="simple_rnn", units=32, embedding_dim=64, dropout=0.3, learning_rate=2e-3,
                            max_tokens=3000, embedding_dropout=0.2, embedding_init="lsa")
    return TextSettings(cell="lstm", units=64, embedding_dim=64, dropout=0.5, learning_rate=2e-3, max_tokens=5000,
                        embedding_init="lsa")


NUMBER = (int, float)
#: What the experiment report and lessons read from each record of `experiments.json`.
RESULT_FIELDS = {"key": str, "group": str, "label": str, "kind": str, "settings": dict, "keras_f1": NUMBER,
                 "scratch_f1": NUMBER, "agreement": NUMBER, "max_prob_diff": NUMBER, "val_keras_f1": NUMBER,
                 "epochs_run": int, "history": dict}
BASELINE_FIELDS = {"features": str, "classifier": str, "test_f1": NUMBER}
TYPE_NAMES = {str: "a string", dict: "an object", NUMBER: "a number", int: "a whole number"}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # ValueError: not UTF-8, or not JSON
        raise SavedFileError(f"'{path}' is not valid JSON ({exc})") from exc


def numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in value)


def check_history(path: Path, fix: str) -> None:
    """SavedFileError unless `path` is a training history: an object of per-epoch lists of numbers."""
    history = read_json(path)
    if not isinstance(history, dict) or not all(isinstance(k, str) and numbers(v) for k, v in history.items()):
        raise SavedFileError(f"'{path}' is not a training history (expected a JSON object of per-epoch lists of "
                             f"numbers, such as {{\"loss\": [0.9, 0.7]}}); {fix}")


def read_records(path: Path, fields: dict[str, type | tuple], what: str) -> list[dict]:
    """The records of a results file, each checked for the fields the report reads."""
    records = read_json(path)
    if not isinstance(records, list):
        raise SavedFileError(f"'{path}' must be a JSON list of {what}, got {type(records).__name__}")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise SavedFileError(f"'{path}': record {i} must be a JSON object, got {type(record).__name__}")
        for key, kind in fields.items():
            value = record.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                got = "nothing" if key not in record else json.dumps(value)[:40]
                raise SavedFileError(f"'{path}': record {i} needs '{key}' ({TYPE_NAMES[kind]}), got {got}")
        if "history" in fields and not numbers(record["history"].get("loss")):
            raise SavedFileError(f"'{path}': record {i} needs 'history.loss' (a list of numbers)")
    return records


def read_results(path: Path) -> list[dict] | None:
    """The experiment records in `path` (None when there is no such file)."""
    return read_records(path, RESULT_FIELDS, "experiment records") if path.exists() else None


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nntrace.models.data import load_cifar10, load_nusax
    from nntrace.models.train import fit, open_log

    console = Console()
    name, epochs, batch, seed = TRAIN_DEFAULTS[args.kind]
    name = args.name or name
    out = Path(args.out)
    backup = out / f"{name}-backup"
    outputs = [out / f"{name}{suffix}" for suffix in (".keras", ".npz", ".json", "-history.json", "-loss.png")]
    existing = next((p for p in outputs if p.exists()), None)
    if existing is not None and not args.overwrite and not backup.exists():
        console.print(f"[red]{existing} exists[/red]: pass --overwrite to replace it, or --out another directory")
        return 2
    if (backup / "history.json").exists():
        check_history(backup / "history.json", f"delete {backup} to start the training over")
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
    results = read_results(out / "experiments.json")
    if (out / "baselines.json").exists():
        read_records(out / "baselines.json", BASELINE_FIELDS, "baseline records")
    if args.report_only:
        from nntrace.models.experiments import load_results, write_report

        if results is None:
            raise FileNotFoundError(f"no experiment results at '{out / 'experiments.json'}' to write a report from; "
                                    "run `nntrace experiments` first")
        path = write_report(out, results, load_results(out / "baselines.json"))
        print(f"report rewritten from {out / 'experiments.json'}: {path}")
        return 0
    from nntrace.models.train import open_log

    try:
        with open_log(args.log) as log:
            results = run_experiments(out, only=args.only, quick=args.quick, data_dir=args.data, log=log,
                                      progress=not args.no_progress, seeds=args.seeds)
    except KeyboardInterrupt:
        print(f"interrupted: finished variants are kept in {out / 'experiments.json'} (the one in progress in its "
              "backup directory); run the same command again to continue", file=sys.stderr)
        return 130
    print(f"{len(results)} variants in {out / 'experiments.json'}; report: {out / 'experiments.md'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Scratch (and Keras) over the model's whole test split, with a progress bar."""
    from rich.progress import Progress

    from nntrace.models.evaluate import evaluate
    from nntrace.models.inputs import keras_path_for, resolve_model

    path = resolve_model(args.model)
    keras_path = None if args.no_keras else keras_path_for(path)
    with Progress(disable=args.no_progress, transient=True) as bar:
        tasks: dict[str, int] = {}

        def tick(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(f"{what} forward pass", total=total)
            bar.update(tasks[what], completed=done)

        r = evaluate(path, data_dir=args.data, batch_size=args.batch_size, keras_path=keras_path, progress=tick)
    print(f"{plain(r.model)} on {r.n_test} test samples")
    print(f"  scratch macro-F1 {r.scratch_f1:.4f}  ({r.scratch_seconds:.2f} s, {r.n_test / r.scratch_seconds:,.0f}/s)")
    if r.keras_f1 is not None:
        print(f"  Keras   macro-F1 {r.keras_f1:.4f}  ({r.keras_seconds:.2f} s)")
        print(f"  agreement {r.agreement:.2f}%  max |Δp| {r.max_prob_diff:.1e}")
    else:
        print("  (no Keras model beside the weights: scratch only)")
    return 0


DEFAULT_SENTENCE = "Makanannya enak sekali, pelayanannya ramah!"


def check_input_options(args: argparse.Namespace, scratch) -> None:
    """InputError for an input option that does not fit the model: an image for a text model, a
    sentence for an image model."""
    from nntrace.models.inputs import InputError

    graph_inputs = getattr(getattr(scratch, "graph", None), "inputs", None) or []
    if len(graph_inputs) > 1:
        names = ", ".join(str(i.get("name", "?")) for i in graph_inputs)
        raise InputError(f"'{scratch.name}' takes {len(graph_inputs)} inputs ({names}); the nntrace commands feed a "
                         "model one image or one sentence. Use the Python API with a list of arrays: "
                         "model.predict_proba([a, b]), trace(model, [a, b]), model.gradients([a, b], y)")
    if scratch.takes_text:
        for option in ("image", "index"):
            if getattr(args, option, None) is not None:
                raise InputError(f"--{option} picks an image, but '{scratch.name}' is a text model: give it a "
                                 "sentence with --text")
    elif getattr(args, "text", None) is not None:
        raise InputError(f"--text gives a sentence, but this is an image model ('{scratch.name}'): pick an image "
                         "with --image or --index")


def check_view(kind: str | None, scratch) -> None:
    """InputShapeError when the view asked for (cnn, rnn, lstm) does not fit the model."""
    if kind and (kind != "cnn") != scratch.takes_text:
        raise InputShapeError(scratch.layers[0].name, type(scratch.layers[0]).__name__,
                              "text" if scratch.takes_text else "an image",
                              f"the '{kind}' view (pick the matching command)")


def model_input(args: argparse.Namespace, scratch) -> tuple[object, str, str, int | None]:
    """The input for a command (an image file, a test image, a sentence, or the default), its
    description, a note such as "resized from 640×480 to 32×32", and its true class when known."""
    from nntrace.models.inputs import check_text, cifar_test_image, default_image, fit_to, image_format, load_image

    check_input_options(args, scratch)
    if scratch.takes_text:
        text = check_text(args.text if getattr(args, "text", None) is not None else DEFAULT_SENTENCE)
        return [text], f'"{text}"', "", None
    size, channels = image_format(scratch.input_info.get("shape"))
    data = getattr(args, "data", None)
    if getattr(args, "image", None) is not None:
        img = load_image(args.image, size=size, channels=channels)
    elif getattr(args, "index", None) is not None:
        img = fit_to(cifar_test_image(args.index, data), size, channels)
    else:
        img = fit_to(default_image(data), size, channels)
    return img.pixels, img.description + (f" ({img.note})" if img.note else ""), img.note, img.label


def cmd_trace(args: argparse.Namespace) -> int:
    from nntrace.models import load_scratch
    from nntrace.models.inputs import resolve_model
    from nntrace.tracer import trace
    from nntrace.tracer.io import save_trace

    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"'{args.output}' exists; choose another name or pass --overwrite")
    scratch = load_scratch(resolve_model(args.model))
    names = [layer.name for layer in scratch.layers]
    unknown = [name for name in args.layer or [] if name not in names]
    if unknown:
        raise UsageError(f"--layer {unknown[0]}: model '{scratch.name}' has no such layer; its layers: "
                         f"{', '.join(names)}")
    if args.label is not None and not args.backward:
        raise UsageError("--label chooses the class of the backward pass: pass it with --backward")
    check_label(scratch, args.label)
    x, described, _, _ = model_input(args, scratch)
    with warnings.catch_warnings():  # overflow shows as one note (`warn_non_finite`), not NumPy's warnings
        warnings.simplefilter("ignore", RuntimeWarning)
        t = trace(scratch, x)
    backward = None
    if args.backward:
        from nntrace.models.backward_trace import trace_backward

        classes = int(t.output(t.layers[-1][0]).shape[-1])
        if args.label is not None and args.label >= classes:
            raise UsageError(f"--label {args.label}: the model has classes 0–{classes - 1}")
        t.context["model_input"] = x  # the app shows the picture beside the saliency map
        backward = trace_backward(scratch, x, label=args.label)
    path = save_trace(t, args.output, layers=args.layer, everything=args.all, overwrite=args.overwrite,
                      backward=backward)
    warn_non_finite(t)
    against = "" if backward is None else f" and its backward pass against class {backward.context['label']}"
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + ".npz")) if p.exists())
    print(plain(f"traced {scratch.name} on {described}{against}: {len(t.layers)} layers → {path} (+ {path.name}.npz; "
                f"{size / 1e6:,.1f} MB together)", limit=600))
    return 0


def cmd_grad(args: argparse.Namespace) -> int:
    """The backward pass of one input: the loss, each layer's and variable's gradient norm, and the
    largest difference from tf.GradientTape (max |g − g_tf| / max |g_tf|) when a Keras model is beside."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from nntrace.models import load_scratch
    from nntrace.models.inputs import InputError, keras_path_for, resolve_model

    path = resolve_model(args.model or args.kind)
    scratch = load_scratch(path)
    check_view(args.kind, scratch)
    check_input_options(args, scratch)
    x, described, _, _ = model_input(args, scratch)
    output = np.asarray(scratch.forward(x))
    n_classes = int(output.shape[-1])
    if output.ndim != 2:
        raise InputError(f"model '{scratch.name}' gives an output of shape {output.shape[1:]} per input (a class "
                         "vector per step or per pixel); `nntrace grad` takes a model with one class vector per "
                         "input; `model.gradients(x, labels)` in Python takes a label per step or pixel")
    if n_classes < 2:
        raise InputError(f"model '{scratch.name}' has a 1-unit output: cross-entropy over one class is always 0, so "
                         "there is no gradient to show; the backward pass needs 2 or more classes "
                         "(a sigmoid binary head is not supported)")
    label = int(np.argmax(output[0])) if args.label is None else args.label
    if not 0 <= label < n_classes:
        raise InputError(f"--label must be a class id from 0 to {n_classes - 1}, got {label}")
    y = np.array([label])
    g = scratch.gradients(x, y)
    keras_path = keras_path_for(path)
    tf_g = None
    if keras_path is not None:
        from nntrace.models.convert import load_keras
        from nntrace.models.gradient_check import keras_gradients

        tf_g = keras_gradients(load_keras(keras_path), x if not scratch.takes_text else np.array(x, object), y)
    labels = scratch.meta.get("labels") or [str(k) for k in range(n_classes)]
    console = Console()
    console.print(f"{shown(scratch.name)} on {shown(described)}, label {label} ({shown(labels[label])}): loss {g.loss:.6f}"
                  + (f"  (GradientTape: {tf_g['loss']:.6f})" if tf_g else ""))

    def diff(got, want, scale: float | None = None) -> str:
        from nntrace.models.gradient_check import rel_error

        if want is None or got is None or isinstance(want, tuple):
            return "—"
        return f"{rel_error(got, want, scale):.1e}"

    table = Table(title="dL/d(layer output), from the loss back to the input")
    for col in ("layer", "‖gradient‖", "vs GradientTape"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for name in reversed(list(g.outputs)):
        out = g.outputs[name]
        norm = "—" if out is None or isinstance(out, tuple) else f"{float(np.linalg.norm(out)):.4e}"
        table.add_row(shown(name), norm, diff(out, tf_g["outputs"].get(name)) if tf_g else "…")
    console.print(table)
    weights = Table(title="dL/d(variable), every trainable Keras variable",
                    caption="vs GradientTape: max |Δ| ÷ the largest GradientTape gradient among the layer's variables")
    for col in ("variable", "shape", "‖gradient‖", "vs GradientTape"):
        weights.add_column(col, justify="left" if col == "variable" else "right")
    def tape_weight(path_: str):
        """TensorFlow's gradient of the same variable: Keras names a variable by the model it sits in
        (`sequential/conv2d/kernel` where it was built, `conv2d/kernel` once loaded from a file)."""
        found = tf_g["weights"].get(path_)
        if found is None:
            found = next((v for k, v in tf_g["weights"].items() if path_.endswith("/" + k) or k.endswith("/" + path_)),
                         None)
        return found

    tape = {path_: tape_weight(path_) for path_ in g.weights} if tf_g else {}
    layer_scale: dict[str, float] = {}  # the largest TensorFlow gradient among each layer's variables
    for path_, found in tape.items():
        if found is not None:
            layer = path_.split("/")[0]
            layer_scale[layer] = max(layer_scale.get(layer, 0.0), float(np.abs(np.asarray(found)).max(initial=0.0)))
    for path_, grad_ in g.weights.items():
        weights.add_row(shown(path_), "×".join(map(str, np.shape(grad_))), f"{float(np.linalg.norm(grad_)):.4e}",
                        diff(grad_, tape[path_], layer_scale.get(path_.split("/")[0])) if tf_g else "…")
    console.print(weights)
    if g.inputs is not None:
        console.print(f"dL/dx (the raw input): ‖·‖ = {float(np.linalg.norm(g.inputs)):.4e}"
                      + (f", vs GradientTape {diff(g.inputs, tf_g['inputs'])}" if tf_g else ""))
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
    if args.backward:
        return compare_backward_pass(scratch, load_keras(keras_path), x, described, args.label)
    rows = compare(scratch, load_keras(keras_path), x)
    table = Table(title=f"{shown(scratch.name)} on {shown(described)}: scratch vs Keras (rtol {RTOL:g}, atol {ATOL:g})")
    for col in ("layer", "class", "output shape", "max |Δ|", ""):
        table.add_column(col)
    for r in rows:
        table.add_row(shown(r.layer), shown(r.layer_class), str(r.shape), f"{r.max_abs_diff:.2e}",
                      "[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
    Console().print(table)
    return 0 if all(r.passed for r in rows) else 1


def compare_backward_pass(scratch, keras_model, x, described: str, label: int | None) -> int:
    """`nntrace compare --backward`: each layer's gradient against tf.GradientTape for one input;
    exit code 1 when one differs by more than the bound."""
    from rich.console import Console
    from rich.table import Table

    from nntrace.models.backward_trace import trace_backward
    from nntrace.models.gradient_check import GRADIENT_REL, compare_backward

    check_label(scratch, label)
    t = trace_backward(scratch, x, label=label)
    t.context["model_input"] = x
    _, diffs = compare_backward(t, keras_model)
    names = t.context.get("labels") or []
    k = t.context["label"]
    table = Table(title=f"{shown(scratch.name)} on {shown(described)}, loss against class {k}"
                        f"{f' ({shown(names[k])})' if k < len(names) else ''}: scratch vs tf.GradientTape "
                        f"(max |g − g_tf| / max |g_tf| ≤ {GRADIENT_REL:g})")
    for col in ("layer", "class", "gradient", "‖g‖", "max rel |Δ|", ""):
        table.add_column(col)
    events = {e.layer: e for e in t.events if e.kind == "layer_gradient"}
    for name, cls in t.layers:
        d = diffs.get(name)
        e = events.get(name)
        what = "the loss" if name == "loss" else "∂L/∂x (input)" if name == "input" else \
            "∂L/∂z (checked: ∂L/∂x)" if e is not None and e.from_loss else "∂L/∂y"
        norm = f"{t.context['loss']:.4e}" if name == "loss" else "" if e is None else f"{e.norm:.4e}"
        table.add_row(shown(name), shown(cls), what, norm, "—" if d is None else f"{d[0]:.2e}",
                      "" if d is None else "[green]pass[/green]" if d[1] else "[red]FAIL[/red]")
    Console().print(table)
    return 0 if all(ok for _, ok in diffs.values()) else 1


def warn_non_finite(t) -> None:
    """One line on stderr naming the first layer whose output holds inf or NaN (float32 overflow:
    weights or inputs too large), instead of NumPy's warnings."""
    import numpy as np

    for name, _ in t.layers:
        y = t.output(name)
        if isinstance(y, np.ndarray) and y.dtype.kind == "f" and not np.isfinite(y).all():
            print(f"nntrace: note: layer '{plain(name)}' gives infinite or NaN values (float32 overflow, or an "
                  "invalid operation), and so does every layer that reads it", file=sys.stderr)
            return


def check_label(scratch, label: int | None) -> None:
    """--label must name one of the model's classes."""
    classes = scratch.meta.get("labels")
    if label is not None and classes and not 0 <= label < len(classes):
        raise UsageError(f"--label {label}: the model has classes 0–{len(classes) - 1}")


def open_session(args: argparse.Namespace):
    """Load the scratch model (no TensorFlow), trace the input, and describe where Keras lives."""
    from nntrace.models import load_scratch
    from nntrace.models.inputs import keras_path_for, resolve_model
    from nntrace.tracer import trace
    from nntrace.tui import Session

    spec = getattr(args, "model", None) or getattr(args, "kind", None) or "cnn"
    path = resolve_model(spec)
    scratch = load_scratch(path)
    check_view(getattr(args, "kind", None), scratch)
    x, described, note, label = model_input(args, scratch)
    t = trace(scratch, x)
    t.context.update(model_input=x, true_label=label)
    return Session(t, described, keras_path_for(path), f"image {note}" if note else ""), scratch


APP_THREADS = "nntrace-app"


def run_app(make_app) -> int:
    """Run the app with TensorFlow's messages (fd 2) in the log file; the app's exit code.

    SIGTERM ends the app, and so does the end of its input (the browser tab of `nntrace serve`
    closed, the server gone, the terminal gone). Once the app has ended the process ends too, without
    waiting for a Keras load still in progress in the background.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from nntrace.views.app_log import stderr_to_log

    check_terminal()  # after the input is checked: a bad file is named first
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(thread_name_prefix=APP_THREADS)
    loop.set_default_executor(executor)
    app = None
    try:
        with stderr_to_log() as log:
            app = make_app(log)
            with ended_by(app, loop):
                app.run(loop=loop)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        if busy_threads(seconds=1.0):
            end_process(1 if sys.exc_info()[1] is not None or app is None else app.return_code or 0)
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    return app.return_code or 0


def check_terminal() -> None:
    """InputError unless the app has a terminal to draw on and read keys from, or runs in a browser
    tab of `nntrace serve` (Textual's web driver): with input from a file or /dev/null it would
    wait for keys that never come."""
    from nntrace.models.inputs import InputError

    if os.environ.get("TEXTUAL_DRIVER"):
        return
    missing = [name for name, stream in (("input", sys.stdin), ("output", sys.stdout))
               if stream is None or not stream.isatty()]
    if missing:
        raise InputError(f"the app needs a terminal, and standard {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not one; `nntrace serve` shows it in a browser, "
                         "`nntrace trace` records a pass to a file")


def end_process(code: int) -> NoReturn:
    """Exit at once with `code`, after printing an error in flight: a background Keras load cannot be
    interrupted, and nothing waits for it any more."""
    import traceback

    error = sys.exc_info()[1]
    for step in (lambda: error is not None and traceback.print_exc(), sys.stdout.flush, sys.stderr.flush):
        try:
            step()
        except (OSError, ValueError):  # the terminal or the server is gone
            pass
    os._exit(code)


@contextmanager
def ended_by(app, loop) -> Iterator[None]:
    """While the app runs, SIGTERM and a hang-up of standard input end it."""
    def end(return_code: int) -> None:
        try:
            loop.call_soon_threadsafe(app.exit, None, return_code)
        except RuntimeError:  # the loop has already closed
            pass

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: end(128 + signum))
    threading.Thread(target=wait_for_hangup, args=(lambda: end(0),), name="nntrace-stdin", daemon=True).start()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_hangup(then: Callable[[], None]) -> None:
    """Block until standard input hangs up (its writer closed it), then call `then`. Reads nothing,
    so the app's own input reader sees every byte."""
    import select

    stdin = sys.__stdin__
    if stdin is None or not hasattr(select, "poll"):
        return
    try:
        poller = select.poll()
        poller.register(stdin.fileno(), 0)  # no events asked for: poll reports only hang-ups and errors
        while True:
            for _, event in poller.poll():
                if event & select.POLLNVAL:
                    return
                if event & (select.POLLHUP | select.POLLERR):
                    then()
                    return
    except (OSError, ValueError):  # no usable standard input
        return


def busy_threads(seconds: float) -> list[threading.Thread]:
    """Threads that would keep the process alive, after giving them `seconds` to finish."""
    import time

    deadline = time.monotonic() + seconds
    alive = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            alive.append(thread)
    return alive


def cmd_view(args: argparse.Namespace) -> int:
    from nntrace.tui import NNTraceApp

    session, scratch = open_session(args)
    return run_app(lambda log: NNTraceApp(session, scratch, log=log))


def cmd_replay(args: argparse.Namespace) -> int:
    from nntrace.tracer.io import load_traces
    from nntrace.tui import NNTraceApp, Session

    t, backward = load_traces(args.file)
    described = t.context.get("text") and f'"{t.context["text"]}"' or f"replay of {args.file}"
    return run_app(lambda log: NNTraceApp(Session(t, described, None, "replaying a recorded trace: Keras is not loaded",
                                                  backward_trace=backward), log=log))


def cmd_serve(args: argparse.Namespace) -> int:
    """The same app in a browser (textual-serve): each browser tab runs `nntrace <view args>`.

    The model, the input options and the port are checked before anything is served.
    """
    import shlex

    from nntrace.models import load_scratch
    from nntrace.models.inputs import check_text, image_format, resolve_model

    scratch = load_scratch(resolve_model(args.model or args.view))
    check_view(args.view, scratch)
    check_input_options(args, scratch)
    if any(getattr(args, option) is not None for option in ("image", "index")):
        model_input(args, scratch)  # the image file, or the test image's range
    elif not scratch.takes_text:
        image_format(scratch.input_info.get("shape"))
    if args.text is not None:
        check_text(args.text)
    check_port(args.host, args.port)
    view = [args.view] + (["--model", args.model] if args.model else []) + \
        (["--text", args.text] if args.text is not None else []) + \
        (["--image", args.image] if args.image is not None else []) + \
        (["--index", str(args.index)] if args.index is not None else []) + \
        (["--data", args.data] if args.data is not None else [])
    command = "exec " + shlex.join([sys.executable, "-m", "nntrace.cli", *view])  # the app is the server's child
    try:
        serve_apps(command, args.host, args.port)
    except OSError as exc:  # the port was taken between the check and the start
        raise ServeError(listen_error(args.host, args.port, exc)) from exc
    finally:
        end_processes(child_processes())
    return 0


def listen_error(host: str, port: int, exc: OSError) -> str:
    import errno

    why = {errno.EADDRINUSE: "the port is in use (by another program, or another nntrace serve)",
           errno.EACCES: "permission denied (ports below 1024 need administrator rights)",
           errno.EADDRNOTAVAIL: f"this machine has no address '{host}'"}.get(exc.errno, exc.strerror or str(exc))
    return f"cannot serve on {host}:{port}: {why}; pick another with --port or --host"


def check_port(host: str, port: int) -> None:
    """ServeError unless `host:port` can be listened on, bound the way the server binds it."""
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot serve on host '{host}': {exc.strerror}") from exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ServeError(listen_error(host, port, exc)) from exc


#: How long the apps of open tabs get to quit when the server stops, before they are ended.
APP_QUIT_SECONDS = 3.0


def serve_apps(command: str, host: str, port: int) -> None:
    """Serve `command`, one process per browser tab, until SIGINT or SIGTERM; then every app is told
    to quit, and any that has not ended after APP_QUIT_SECONDS is terminated."""
    import asyncio

    from textual_serve.server import Server

    class AppServer(Server):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tabs: set[asyncio.Task] = set()

        async def handle_websocket(self, request):
            task = asyncio.current_task()
            self.tabs.add(task)
            try:
                return await super().handle_websocket(request)
            finally:
                self.tabs.discard(task)

        async def on_startup(self, app) -> None:
            print(f"serving nntrace on {self.public_url} (Ctrl+C to stop)", flush=True)

        async def on_shutdown(self, app) -> None:
            tabs = list(self.tabs)
            for task in tabs:
                task.cancel()  # the tab's handler then tells its app to quit and waits for it
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    send_signal(child_processes(), sig)
                pending = [task for task in tabs if not task.done()]
                if not pending:
                    break
                await asyncio.wait(pending, timeout=APP_QUIT_SECONDS)

    AppServer(command, host=host, port=port, title="nntrace").serve()


def child_processes() -> list[int]:
    """The ids of this process's running children (from /proc; none where there is no /proc)."""
    me, children = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if parent == me and state != "Z":
            children.append(int(stat.parent.name))
    return children


def send_signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def end_processes(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM each process, then SIGKILL those still running after `grace` seconds."""
    import time

    send_signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in child_processes() if pid in pids]
    send_signal(pids, signal.SIGKILL)


REPORT = Path(__file__).resolve().parent / "reports" / "experiments.json"


def lesson_trace(lesson):
    """The shipped model, the lesson's input, its trace and Session (Keras beside it)."""
    from nntrace.models import load_scratch
    from nntrace.models.inputs import default_image, fit_to, image_format, keras_path_for, resolve_model
    from nntrace.tracer import trace
    from nntrace.tui import Session

    path = resolve_model(lesson.model)
    scratch = load_scratch(path)
    if "text" in lesson.input:
        x, described = [lesson.input["text"]], f'"{lesson.input["text"]}"'
    else:
        size, channels = image_format(scratch.input_info.get("shape"))
        img = fit_to(default_image(), size, channels)
        x, described = img.pixels, img.description
    t = trace(scratch, x)
    t.context.update(model_input=x, true_label=None if "text" in lesson.input else img.label)
    report = read_results(REPORT)
    return Session(t, described, keras_path_for(path)), scratch, report


def cmd_lessons(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from nntrace.lessons.runner import Progress, load_lessons

    progress = Progress.load()
    if args.reset:
        progress.reset()
    table = Table(title="nntrace lessons — start one with `nntrace lesson N`")
    for col in ("#", "lesson", "model", "progress"):
        table.add_column(col)
    for lesson in load_lessons():
        label = progress.label(lesson)
        style = "green" if progress.passed(lesson) else "yellow" if progress.done(lesson) else ""
        table.add_row(str(lesson.number), lesson.title, lesson.model, Text(label, style=style))
    Console().print(table)
    print("✓ means finished with no answer revealed; counts are first try / after a hint / revealed.")
    if progress.note:
        print(f"nntrace: {progress.note}", file=sys.stderr)
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
    group.add_argument("--index", type=non_negative_int, help="the N-th CIFAR-10 test image (from 0)")
    group.add_argument("--text", help="a sentence (text models)")
    p.add_argument("--data", type=existing_path, help="data directory")


#: The app's views of the shipped models: `nntrace <kind>`, `nntrace serve <kind>`, `nntrace grad <kind>`.
VIEWS = {"cnn": "step through the CNN on an image (default)",
         "rnn": "step through the SimpleRNN model on a sentence",
         "lstm": "step through the LSTM model on a sentence",
         "gru": "step through the GRU model on a sentence",
         "attention": "step through the attention (tiny transformer) model on a sentence"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nntrace", description="Step through a neural network's forward pass.")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="train a reference model (Keras) and save it with its scratch twin")
    train.add_argument("kind", choices=sorted(TRAIN_DEFAULTS))
    train.add_argument("--out", type=output_dir, default="runs", help="output directory (default: runs)")
    train.add_argument("--name", type=file_stem,
                       help="file name stem (default: cnn / simple_rnn / lstm / gru / attention)")
    train.add_argument("--data", type=existing_path,
                       help="data directory (default: $NNTRACE_DATA, shared/data, online)")
    train.add_argument("--epochs", type=positive_int)
    train.add_argument("--batch-size", type=positive_int)
    train.add_argument("--seed", type=seed_number, help="random seed (default: the one the shipped model used)")
    train.add_argument("--log", type=appendable_file, help="append one line per epoch to this file")
    train.add_argument("--quick", action="store_true", help="small subsets, 2 epochs")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (for background runs)")
    train.set_defaults(func=cmd_train)

    exp = sub.add_parser("experiments", help="train and evaluate the hyperparameter grid (resumable)")
    exp.add_argument("--only", nargs="+", metavar="GROUP", help="only these groups (or families cnn/rnn/lstm)")
    exp.add_argument("--quick", action="store_true", help="small subsets and 2 epochs (default out: runs/)")
    exp.add_argument("--out", type=output_dir, help="output directory (default: reports)")
    exp.add_argument("--data", type=existing_path, help="data directory")
    exp.add_argument("--log", type=appendable_file, help="append progress lines to this file")
    exp.add_argument("--no-progress", action="store_true")
    exp.add_argument("--report-only", action="store_true", help="rewrite the report from the saved results")
    exp.add_argument("--seeds", type=positive_int, default=1,
                     help="train every variant with seeds 0…N−1; the report gives mean ± sd (default 1)")
    exp.set_defaults(func=cmd_experiments)

    ev = sub.add_parser("evaluate", help="the whole test split: scratch and Keras macro-F1, agreement, max |Δp|")
    ev.add_argument("model", nargs="?", default="cnn", help="cnn, rnn, lstm, gru, attention or a .keras/.npz file "
                                                              "(default cnn)")
    ev.add_argument("--data", type=existing_path, help="data directory")
    ev.add_argument("--batch-size", type=positive_int, default=256)
    ev.add_argument("--no-keras", action="store_true", help="the scratch model only")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("trace", help="record a forward pass (with --backward also the backward pass) to a trace "
                                         "file (JSON lines + .npz)")
    tr.add_argument("model", help="cnn, rnn, lstm, gru, attention, or a .keras/.npz file")
    add_input_options(tr)
    tr.add_argument("-o", "--output", type=output_file, required=True, help="trace file to write, e.g. run.nntrace")
    tr.add_argument("--layer", action="append", help="record this layer's fine-grained steps (repeatable; "
                                                     "default: the first conv or recurrent layer)")
    tr.add_argument("--all", action="store_true", help="record every layer's fine-grained steps")
    tr.add_argument("--backward", action="store_true",
                    help="record the backward pass too (the loss, each layer's gradients, the saliency, and the "
                         "backward steps of the layers chosen with --layer/--all)")
    tr.add_argument("--label", type=non_negative_int,
                    help="with --backward: the class the loss is taken against (default: the predicted one)")
    tr.add_argument("--overwrite", action="store_true")
    tr.set_defaults(func=cmd_trace)

    cmp_ = sub.add_parser("compare", help="per-layer scratch vs Keras differences for one input")
    cmp_.add_argument("model", help="cnn, rnn, lstm, gru, attention, or a .keras/.npz file (with its .keras "
                                      "beside it)")
    add_input_options(cmp_)
    cmp_.add_argument("--backward", action="store_true",
                      help="compare each layer's gradient with tf.GradientTape instead of its output")
    cmp_.add_argument("--label", type=non_negative_int,
                      help="with --backward: the class the loss is taken against (default: the predicted one)")
    cmp_.set_defaults(func=cmd_compare)

    grad = sub.add_parser("grad", help="the backward pass on one input: loss, gradient norms, difference from "
                                       "tf.GradientTape")
    grad.add_argument("kind", choices=list(VIEWS))
    grad.add_argument("--model", help="a .keras or .npz file (default: the shipped model)")
    add_input_options(grad)
    grad.add_argument("--label", type=non_negative_int, help="the class the loss is taken against "
                                                             "(default: the predicted class)")
    grad.set_defaults(func=cmd_grad)

    for kind, helptext in VIEWS.items():
        view = sub.add_parser(kind, help=helptext)
        view.add_argument("--model", help="a .keras or .npz file (default: the shipped model)")
        add_input_options(view)
        view.set_defaults(func=cmd_view, kind=kind)

    serve = sub.add_parser("serve", help="run the app in a browser (for a classroom projector)")
    serve.add_argument("view", nargs="?", default="cnn", choices=list(VIEWS))
    serve.add_argument("--model")
    add_input_options(serve)
    serve.add_argument("--host", default="localhost")
    serve.add_argument("--port", type=port_number, default=8000)
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


def import_tensorflow_quietly() -> None:
    """Import Keras (and TensorFlow) with file descriptor 2 closed off: TensorFlow's C++ start-up
    lines ("All log messages before absl::InitializeLog()", oneDNN's notice) are written there
    before any setting can stop them. A failed import still raises, and is reported as usual."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(null, 2)
    try:
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def plain(text: object, limit: int = 200) -> str:
    """Text from a file or the command line as the terminal should print it: without control and
    format characters (escape sequences, bidi overrides), cut to `limit` characters."""
    from nntrace.tracer.sanitize import clean_text

    return clean_text(str(text), limit)


def shown(text: object, limit: int = 200) -> str:
    """`plain`, escaped for Rich markup (a `[` in a layer name is printed, not read as a style)."""
    from nntrace.tracer.sanitize import escape_markup

    return escape_markup(plain(text, limit))


def one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def describe(exc: OSError) -> str:
    """An OSError about a user's path as one clear line."""
    if exc.filename is None:
        return str(exc)
    what = (exc.strerror or type(exc).__name__).lower()
    other = f" → '{exc.filename2}'" if exc.filename2 is not None else ""
    return f"{what}: '{exc.filename}'{other}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):  # plain `nntrace`: the shipped CNN on a default image
            args = build_parser().parse_args(["cnn"])
        if args.func in (cmd_compare, cmd_grad, cmd_evaluate, cmd_train, cmd_experiments):
            import_tensorflow_quietly()
        return args.func(args)
    except NNTraceError as exc:
        message = str(exc)
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        message = describe(exc)
    except KeyboardInterrupt:
        print("nntrace: interrupted", file=sys.stderr)
        return 130
    print(f"nntrace: {plain(one_line(message), limit=1000)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
