"""The backward pass of a scratch model: loss, gradients, one optimizer step.

The loss is Keras's `SparseCategoricalCrossentropy` (mean over the labels) of the inference-mode
output. As Keras does, it reads the logits behind a final softmax or sigmoid, also behind layers
that pass them on unchanged (Dropout, noise, `Activation('linear')`): their gradient is exactly
`(softmax(logits) − onehot) / n` (`from_logits=False`). Any other output is the logits
(`from_logits=True`).
Gradients are those of the inference forward pass: Dropout is the identity, BatchNormalization
uses its moving statistics.

    g = model.gradients(x, y)          # y: class ids (batch,)
    g.loss, g.weights["conv2d_1/kernel"], g.inputs, g.outputs["conv2d_1"]
    model.apply_gradients(g, optimizer="adam")
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from nntrace.layers import Activation, Dropout, Identity, Layer, Softmax
from nntrace.layers.activations import activation_name
from nntrace.layers.conv import Conv2D
from nntrace.layers.core import Dense
from nntrace.layers.errors import InputShapeError, NNTraceError
from nntrace.layers.parallel import over_batch
from nntrace.models import optimizers
from nntrace.models.graph import Graph, Node, Ref, run
from nntrace.models.variables import trainable_variables
from nntrace.tracer.recorder import NULL_TRACER


class Gradients:
    """One backward pass over a batch.

    Attributes:
        loss: the mean sparse categorical cross-entropy of the batch.
        weights: Keras variable path → dL/d(variable), for every trainable variable.
        inputs: dL/dx for the model input (raw, before Rescaling), or None for token ids / strings.
        outputs: layer name → dL/d(layer output) for the batch (None where the output is token ids,
            or the loss does not read it: behind the logits it reads, see `logits_source`). For a
            model ending in a softmax over the last axis, the output's is dL/dp = −onehot / (n·p).
        from_logits: whether the model's output was taken as logits.
        layer_weights: layer name → scratch weight name → gradient, for every weight a gradient
            reached (a frozen layer's too), summed over a shared layer's calls.

    What only a reader needs is worked out when first read (`inputs`, `outputs[name]`), so the
    weight gradients, what a training step needs, never wait for it: a batch split between the
    cores joins a layer's parts along the batch then, and a model that begins with a plain chain
    to a Conv2D computes that layer's input gradient then (`input_end`), with the weights of the
    pass, not those of a later step.
    """

    def __init__(self, loss: float, weights: dict[str, np.ndarray], inputs: Any, outputs: Mapping[str, Any],
                 from_logits: bool = False, layer_weights: dict[str, dict[str, np.ndarray]] | None = None,
                 parts: list[Gradients] | None = None, sliced: dict[str, list[Deferred]] | None = None) -> None:
        self.loss, self.weights, self.outputs = loss, weights, outputs
        self.from_logits = from_logits
        self.layer_weights = {} if layer_weights is None else layer_weights
        self._inputs, self._parts = inputs, parts
        self.sliced = {} if sliced is None else sliced  # layer name → its calls' `squared_slices`, deferred
        self.computed = dict(weights)  # the gradients as computed, beside any put in their place

    def squared_slices(self, layer: str, weight: str) -> np.ndarray | None:
        """For a weight whose TensorFlow gradient comes as slices (an Embedding's), each row's Σ of
        its slices squared (`Embedding.squared_slices`), summed over the layer's calls; else None."""
        calls = self.sliced.get(layer)
        if not calls:
            return None
        found = [call.get().get(weight) for call in calls]
        return None if any(f is None for f in found) else np.sum(found, axis=0, dtype=np.float32)

    @property
    def inputs(self) -> Any:
        if self._parts is not None:
            self._inputs, self._parts = joined([part.inputs for part in self._parts]), None
        if isinstance(self._inputs, Deferred):
            self._inputs = self._inputs.get()
        return self._inputs

    def __repr__(self) -> str:
        return f"Gradients(loss={self.loss:.6g}, {len(self.weights)} variables, {len(self.outputs)} layers)"


class Deferred:
    """A value worked out when it is first read (then kept)."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self.compute: Callable[[], Any] | None = compute
        self.value: Any = None

    def get(self) -> Any:
        if self.compute is not None:
            self.value, self.compute = self.compute(), None
        return self.value


class LayerGradients(Mapping):
    """Layer name → dL/d(layer output); a `Deferred` entry is worked out when first read."""

    def __init__(self, items: dict[str, Any]) -> None:
        self.items_ = items

    def __getitem__(self, name: str) -> Any:
        value = self.items_[name]
        if isinstance(value, Deferred):
            value = self.items_[name] = value.get()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)


class JoinedParts(Mapping):
    """Layer name → the parts' gradients joined along the batch, each joined once, when first read."""

    def __init__(self, parts: list[Mapping[str, Any]]) -> None:
        self.parts, self.done = parts, {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.done:
            self.done[name] = joined([part[name] for part in self.parts])
        return self.done[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.parts[0])

    def __len__(self) -> int:
        return len(self.parts[0])


@dataclass
class Record:
    """One node's forward pass (one layer call), kept for its backward."""

    node: Node
    layer: Layer
    x: Any
    mask: Any
    y: Any
    cache: Any
    y_mask: Any = None  # the mask the output carries on
    options: dict = field(default_factory=dict)  # the call's options (use_causal_mask, …)


@dataclass
class Call:
    """One layer call's backward pass, kept for the backward trace."""

    record: Record
    dy: Any                        # dL/d(output)
    dx: Any                        # dL/d(input) (None for token ids and strings)
    grads: dict[str, np.ndarray]   # the call's weight gradients
    dz: np.ndarray | None = None   # dL/d(logits) when the loss read this call's logits (`logits_source`)


@dataclass
class LossInputs:
    """What the loss read: logits `(batch, classes)`, class ids, the loss and dL/d(logits)."""

    logits: np.ndarray
    labels: np.ndarray
    loss: float
    d_logits: np.ndarray
    from_logits: bool


class TrainStep(NamedTuple):
    """The loss of the batch before and after one optimizer step."""

    loss_before: float
    loss_after: float


# -- the forward pass kept for the backward -------------------------------------------------------
@dataclass
class Forward:
    """A model's inference forward pass over its graph, every call kept."""

    graph: Graph
    inputs: dict[str, Any]        # model input name → array
    given: dict[str, Any]         # node name → output given in advance (token ids for a tokenizer)
    records: list[Record]         # the calls that ran, in order

    def record(self, name: str) -> Record | None:
        """The call named `name`, if it ran."""
        return next((rec for rec in self.records if rec.node.name == name), None)

    @property
    def output_ref(self) -> Ref:
        """The model's output tensor; "all outputs" (index −1) of a call with one output is that output."""
        ref = self.graph.output
        rec = self.record(ref.node)
        if ref.index < 0 and (rec is None or not isinstance(rec.y, tuple)):
            return Ref(ref.node, 0)
        return ref

    @staticmethod
    def pick(value: Any, index: int) -> Any:
        return value[index] if isinstance(value, tuple) and index >= 0 else value

    @property
    def output(self) -> Any:
        """The model's output (a pair for a Bidirectional layer with merge_mode=None)."""
        ref = self.output_ref
        rec = self.record(ref.node)
        return self.pick(rec.y, ref.index) if rec else {**self.inputs, **self.given}[ref.node]

    @property
    def output_mask(self) -> np.ndarray | None:
        """The mask the model's output carries (a sequence output of masked steps), or None."""
        ref = self.output_ref
        rec = self.record(ref.node)
        return self.pick(rec.y_mask, ref.index) if rec else None

    def head(self) -> Record | None:
        """The call that makes the model's output, when it is that call's only output."""
        rec = self.record(self.output_ref.node)
        return rec if rec is not None and not isinstance(rec.y, tuple) else None


class Recording:
    """A layer as `graph.run` sees it, whose forward calls go through `forward_with_cache` and are
    kept for the backward; everything else is the layer's own."""

    def __init__(self, layer: Layer, keep: bool) -> None:
        self.layer, self.keep = layer, keep
        self.last: tuple = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layer, name)

    def forward(self, x: Any, mask: Any = None, training: bool = False, **options: Any) -> Any:
        """The layer's forward (with its cache when `keep`); call options (`use_causal_mask`, …)
        go to `forward_with_cache` and are kept for `backward`."""
        unknown = sorted(set(options) - set(self.layer.call_options))
        if unknown:
            self.layer.unsupported(f"is called with {', '.join(unknown)}, which nntrace does not support here")
        if self.keep:
            y, cache = self.layer.forward_with_cache(x, mask, **options)
        else:
            y, cache = self.layer.forward(x, mask=mask, **options), None
        self.last = (x, mask, y, cache, dict(options))
        return y


def forward_pass(model: Any, x: Any, keep: bool = True) -> Forward:
    """Run the model's graph in inference mode (as `ScratchModel.forward`, the same masks), keeping
    every call's inputs, mask, output and — when `keep` — what its backward reuses."""
    inputs, given = model.prepare(x)
    graph = model.graph
    layers = {layer.name: Recording(layer, keep) for layer in model.layers}
    records = []
    for node, layer, _, y_mask in run(graph, layers, inputs, False, NULL_TRACER, given):
        x_in, mask, y, cache, options = layer.last
        records.append(Record(node, layer.layer, x_in, mask, y, cache, y_mask, options))
    return Forward(graph, inputs, given, records)


# -- the loss -------------------------------------------------------------------------------------
def caches_logits(rec: Record) -> bool:
    """Whether Keras keeps the call's pre-activation on its output for the loss (`_keras_logits`):
    a softmax or sigmoid activation, or a Softmax layer over one axis without a mask (with one, it
    zeroes the masked entries afterwards, a new tensor that keeps nothing)."""
    layer = rec.layer
    if isinstance(layer, Softmax):
        return isinstance(layer.config.get("axis", -1), int) and rec.mask is None
    return hasattr(layer, "backward_pre_activation") and \
        activation_name(layer.config.get("activation")) in ("softmax", "sigmoid")


def passes_through(layer: Layer) -> bool:
    """Whether the layer hands its input on unchanged at inference (Dropout, noise, augmentation,
    Activation('linear')): a tensor's cached logits survive it."""
    return isinstance(layer, (Dropout, Identity)) or (
        isinstance(layer, Activation) and activation_name(layer.config.get("activation")) == "linear")


def logits_source(fwd: Forward) -> Record | None:
    """The call whose pre-activation Keras's loss reads as logits: `SparseCategoricalCrossentropy`
    takes a softmax's or a sigmoid's input in place of its output, whatever `from_logits` says, also
    behind layers that pass it through unchanged. None where the model's output is the logits."""
    rec = fwd.head()
    while rec is not None and not isinstance(rec.y, tuple):
        if caches_logits(rec):
            return rec
        refs = rec.node.refs
        if not passes_through(rec.layer) or len(refs) != 1 or refs[0].index not in (0, -1):
            return None
        rec = fwd.record(refs[0].node)  # None where it reads a model input
    return None


def gives_probabilities(rec: Record) -> bool:
    """Whether the logits' call (`logits_source`) ends in a softmax over the last axis."""
    if isinstance(rec.layer, Softmax):
        return rec.layer.config.get("axis", -1) in (-1, np.ndim(rec.y) - 1)
    return activation_name(rec.layer.config.get("activation")) == "softmax"


def logits_of(rec: Record | None, output: np.ndarray) -> np.ndarray:
    """What the loss reads as logits: the pre-activation of `rec` (`logits_source`), else the output."""
    if rec is None:
        return output
    layer, x = rec.layer, rec.x
    if isinstance(layer, Dense):
        return layer.pre_activation(x)
    if isinstance(layer, Conv2D):
        return layer.convolve(x, activate=False)
    if hasattr(layer, "pre_activation"):  # Conv1D, DepthwiseConv2D, SeparableConv2D
        return layer.pre_activation(x)
    return np.asarray(x, np.float32)  # Activation('softmax' | 'sigmoid'), Softmax


def check_labels(y: Any, output: Any, layer: Layer) -> np.ndarray:
    """Class ids shaped like the output without its last axis (`(batch,)` for `(batch, classes)`)."""
    if isinstance(output, tuple):
        raise NNTraceError(f"layer '{layer.name}' gives a pair of outputs (merge_mode=None); the loss needs "
                           "one output of class scores")
    labels = np.asarray(y)
    if labels.ndim == output.ndim and labels.shape[-1:] == (1,):
        labels = labels[..., 0]
    if labels.dtype.kind not in "iuf" or labels.shape != output.shape[:-1]:
        raise InputShapeError(layer.name, type(layer).__name__,
                              f"class ids of shape {output.shape[:-1]} for an output of shape {output.shape}",
                              f"{labels.dtype} labels of shape {labels.shape}")
    ids = labels.astype(np.int64)
    classes = output.shape[-1]
    if not np.array_equal(ids, labels) or (ids.size and (ids.min() < 0 or ids.max() >= classes)):
        raise InputShapeError(layer.name, type(layer).__name__, f"class ids in [0, {classes})",
                              f"labels from {labels.min()} to {labels.max()}")
    return ids


def cross_entropy(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None,
                  total: int | None = None) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Sparse softmax cross-entropy as TensorFlow's fused kernel computes it, in float32, reduced as
    Keras's loss does ("sum_over_batch_size").

    Args:
        logits: `(..., classes)`; labels: class ids `(...)`; mask: `(...)` bools, the mask the
            output carries (Keras weights the valid entries by total / valid, the others by 0).
    Returns:
        (the loss, dL/d(logits) = (softmax(logits) − onehot) · weight / n shaped like `logits`,
        the per-entry weights `(n,)` or None without a mask).
    """
    z = np.asarray(logits, np.float32).reshape(-1, logits.shape[-1])
    ids = labels.reshape(-1)
    rows = np.arange(len(ids))
    shifted = z - z.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    sum_exps = exps.sum(axis=-1, dtype=np.float32)
    per_label = np.log(sum_exps) - shifted[rows, ids]
    n = np.float32(len(ids) if total is None else total)
    weights = None
    if mask is not None:
        valid = np.broadcast_to(np.asarray(mask, bool), labels.shape).reshape(-1)
        count = np.float32(valid.sum())
        weights = np.where(valid, n / count if count else np.float32(0), np.float32(0)).astype(np.float32)
        per_label = per_label * weights
    loss = float(np.sum(per_label, dtype=np.float32) / n)
    d_logits = exps / sum_exps[:, None]
    d_logits[rows, ids] -= 1
    d_logits *= (np.float32(1) / n) if weights is None else (np.float32(1) / n * weights)[:, None]
    return loss, d_logits.reshape(logits.shape), weights


def probability_gradient(p: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                         total: int | None = None) -> np.ndarray:
    """dL/dp = −onehot · weight / (n·p) for the mean of −log p[label] (zero off the labels); n is
    `total` for one part of a larger batch."""
    flat = np.asarray(p, np.float64).reshape(-1, p.shape[-1])
    ids = labels.reshape(-1)
    rows = np.arange(len(ids))
    d_p = np.zeros(flat.shape, np.float64)
    n = len(ids) if total is None else total
    with np.errstate(divide="ignore", invalid="ignore"):
        d_p[rows, ids] = -(1.0 if weights is None else weights) / (n * flat[rows, ids])
    return np.nan_to_num(d_p).astype(np.float32).reshape(p.shape)


def loss(model: Any, x: Any, y: Any) -> float:
    """The mean sparse categorical cross-entropy of the inference output (no backward pass)."""
    fwd = forward_pass(model, x, keep=False)
    out, head = fwd.output, fwd.head()
    labels = check_labels(y, out, head.layer if head else model.layers[-1])
    return cross_entropy(logits_of(logits_source(fwd), out), labels, fwd.output_mask)[0]


# -- the backward pass ----------------------------------------------------------------------------
def gradients(model: Any, x: Any, y: Any, calls: dict | None = None, paths: bool = True) -> Gradients:
    """The loss of batch `x` with class ids `y` and its gradients (see `Gradients`).

    The graph runs forward in topological order and backward in reverse; where a tensor feeds
    several calls their gradients add up, and a layer called several times sums its weight
    gradients. A large batch of one input array is split between the cores (each part runs the
    whole model forward and back; the parts' losses and weight gradients add up, their input and
    output gradients are concatenated; see `split_backward`).

    Args:
        x: the model input, as `forward` takes it: images `(batch, h, w, c)`, token ids
            `(batch, seq_len)` or strings `(batch,)` (a list or dict of arrays for several inputs).
        y: class ids `(batch,)` (or shaped like the output without its class axis).
        calls: a dict that receives, per layer call, a `Call` (its record, output and input
            gradients, weight gradients, and the logits' gradient where the loss fed it), and
            under "" the loss's `LossInputs` (for the backward trace).
        paths: name the variables by their Keras paths in `weights` (False: `weights` stays empty
            and only `layer_weights` is filled; a model built by hand may have no unique paths).
    """
    if hasattr(model, "batch_length") and (isinstance(x, (list, dict)) or np.ndim(x) >= 1) \
            and model.batch_length(x) == 0:
        raise InputShapeError(model.name, type(model).__name__, "at least one sample", "an empty batch")
    parts = split_backward(model, x, y) if calls is None else None
    if parts is None:
        parts = [backward(model, x, y, calls)]
    first = parts[0]
    layer_weights: dict[str, dict[str, np.ndarray]] = {}
    for part in parts:
        for layer, grads in part.layer_weights.items():
            summed = layer_weights.setdefault(layer, {})
            for name, grad in grads.items():
                summed[name] = grad if name not in summed else summed[name] + grad
    loss_value = float(np.sum([np.float32(part.loss) for part in parts], dtype=np.float32))
    sliced: dict[str, list[Deferred]] = {}
    for part in parts:
        for layer, calls in part.sliced.items():
            sliced.setdefault(layer, []).extend(calls)
    split = len(parts) > 1
    return Gradients(loss=loss_value, weights=keras_gradients(model, layer_weights) if paths else {},
                     inputs=None if split else first._inputs, parts=parts if split else None,
                     outputs=JoinedParts([part.outputs for part in parts]) if split else first.outputs,
                     from_logits=first.from_logits, layer_weights=layer_weights, sliced=sliced)


def split_backward(model: Any, x: Any, y: Any) -> list[Gradients] | None:
    """`backward` over the cores' shares of a batch of one input array (one part, the whole batch,
    where it is not split: a small batch, one core), or None where the batch cannot be split
    (several inputs, a layer that already keeps the cores busy, an output with a mask — whose
    weights count the valid entries of the whole batch — or an error, which the whole batch then
    reports)."""
    labels = np.asarray(y)
    if (any(getattr(layer, "parallel_inside", False) for layer in model.layers) or not isinstance(x, np.ndarray)
            or x.ndim == 0 or labels.ndim == 0 or len(labels) != len(x)):
        return None
    n = len(x)
    try:  # each part's loss is a share of the mean over every label entry of the batch
        parts = over_batch(lambda lo, hi: backward(model, x[lo:hi], labels[lo:hi],
                                                   total=None if hi - lo == n else labels.size), n)
    except NNTraceError:
        return None
    return parts if all(part is not None for part in parts) else None


def joined(parts: list[Any]) -> Any:
    """The parts' per-sample arrays along the batch (pairs and lists joined item by item)."""
    first = parts[0]
    if len(parts) == 1 or first is None:
        return first
    if isinstance(first, (tuple, list)):
        return type(first)(joined(list(items)) for items in zip(*parts))
    return np.concatenate(parts, axis=0)


def backward(model: Any, x: Any, y: Any, calls: dict | None = None, total: int | None = None) -> Gradients | None:
    """The forward and backward pass of `gradients` over one batch, weights by layer only; with
    `total`, the batch is one part of a batch of `total` label entries (None where the output has a
    mask)."""
    fwd = forward_pass(model, x)
    out, head = fwd.output, fwd.head()
    labels = check_labels(y, out, head.layer if head else model.layers[-1])
    if total is not None and fwd.output_mask is not None:
        return None
    # Behind a softmax or sigmoid (and what passes it through), Keras's loss reads the logits: the
    # backward starts from their gradient there, and the calls after it get none.
    source = logits_source(fwd)
    logits = logits_of(source, out)
    loss_value, d_logits, weights = cross_entropy(logits, labels, fwd.output_mask, total)
    if calls is not None:
        calls[""] = LossInputs(logits, labels, loss_value, d_logits, source is None)
    flow = Flow()
    if source is None:
        flow.add(fwd.output_ref, d_logits)
    # probabilities out: dL/dp of the mean −log p[label] for the output, as if the loss read them
    d_probabilities = probability_gradient(out, labels, weights, total) \
        if source is not None and gives_probabilities(source) else None
    outputs: dict[str, Any] = {name: None for name in fwd.given}
    layer_weights: dict[str, dict[str, np.ndarray]] = {}
    first = input_end(fwd) if calls is None else None
    d_inputs: Any = None
    sliced: dict[str, list[Deferred]] = {}
    for rec in reversed(fwd.records):
        dy = flow.gradient(rec.node.name, rec.y)
        outputs[rec.node.name] = dy
        if rec is source:
            dx, grads = rec.layer.backward_pre_activation(d_logits, rec.x)
        elif dy is None:
            continue
        elif rec is first:
            grads, input_gradient = rec.layer.backward_deferring_input(dy, rec.x, rec.mask, rec.y, rec.cache,
                                                                      **rec.options)
            d_inputs = defer_input_end(fwd, first, input_gradient, outputs)
        else:
            dx, grads = rec.layer.backward(dy, rec.x, rec.mask, rec.y, rec.cache, **rec.options)
        summed = layer_weights.setdefault(rec.layer.name, {})
        for name, grad in grads.items():
            summed[name] = grad if name not in summed else summed[name] + grad
        if grads and hasattr(rec.layer, "squared_slices"):
            sliced.setdefault(rec.layer.name, []).append(
                Deferred(lambda layer=rec.layer, dy=dy, x=rec.x: layer.squared_slices(dy, x)))
        if d_inputs is not None:
            break
        if calls is not None:
            calls[rec.node.name] = Call(rec, dy, dx, grads, d_logits if rec is source else None)
        flow.send(rec.node, rec.layer, dx)
    if d_inputs is None:
        d_inputs = [flow.gradient(name, value) for name, value in fwd.inputs.items()]
        d_inputs = d_inputs[0] if len(d_inputs) == 1 else d_inputs
    if d_probabilities is not None:
        outputs[fwd.output_ref.node] = d_probabilities
    order = [n.name for n in fwd.graph.nodes if n.name in outputs]
    return Gradients(loss=loss_value, weights={}, inputs=d_inputs,
                     outputs=LayerGradients({name: outputs[name] for name in order}),
                     from_logits=source is None, layer_weights=layer_weights, sliced=sliced)


def input_end(fwd: Forward) -> Record | None:
    """The first call with weights when the model begins with a plain chain up to it: one float
    input read by the first call alone, each call's output read by the next call alone, and no
    weights before it (a Rescaling, say). Its input gradient reaches only the model input and the
    outputs of the calls before it, so `backward` leaves it (and theirs) until they are read."""
    if len(fwd.inputs) != 1 or fwd.given:
        return None
    (name, value), = fwd.inputs.items()
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        return None
    readers: dict[str, int] = {}
    for rec in fwd.records:
        for ref in rec.node.refs:
            readers[ref.node] = readers.get(ref.node, 0) + 1
    previous = name
    for rec in fwd.records:
        refs = rec.node.refs
        if len(refs) != 1 or refs[0].node != previous or refs[0].index not in (0, -1) or readers.get(previous) != 1:
            return None
        if rec.layer.weights:
            return rec
        previous = rec.node.name
    return None


def defer_input_end(fwd: Forward, first: Record, input_gradient: Callable[[], np.ndarray],
                    outputs: dict[str, Any]) -> Deferred:
    """The model input's gradient, and in `outputs` those of the calls before `first` (`input_end`),
    as `Deferred` values: the first read runs the backward of `first`'s input and of the calls
    before it."""
    before = fwd.records[:fwd.records.index(first)]

    def run_back() -> tuple[dict[str, np.ndarray], np.ndarray]:
        found: dict[str, np.ndarray] = {}
        dx = input_gradient()
        for rec in reversed(before):
            found[rec.node.name] = dx
            dx, _ = rec.layer.backward(dx, rec.x, rec.mask, rec.y, rec.cache, **rec.options)
        return found, dx

    tail = Deferred(run_back)
    for rec in before:
        outputs[rec.node.name] = Deferred(lambda name=rec.node.name: tail.get()[0][name])
    return Deferred(lambda: tail.get()[1])


class Flow:
    """Gradients on their way back through the graph: dL/d(tensor) summed over its readers."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, int], np.ndarray] = {}

    def add(self, ref: Ref, grad: np.ndarray | None) -> None:
        if grad is None:
            return
        key = (ref.node, ref.index)
        self.sums[key] = grad if key not in self.sums else self.sums[key] + grad

    def gradient(self, name: str, value: Any) -> Any:
        """dL/d(output of `name`) shaped like `value` (a tuple for several outputs; None if none)."""
        if isinstance(value, tuple):
            if not any((name, i) in self.sums for i in range(len(value))):
                return None
            return tuple(self.sums.get((name, i), np.zeros(np.shape(v), np.float32)) for i, v in enumerate(value))
        return self.sums.get((name, 0))

    def send(self, node: Node, layer: Layer, dx: Any) -> None:
        """Hand a call's input gradient to the tensors it read (as `bind` handed them over)."""
        names = getattr(layer, "input_names", ())
        if names:
            given = dict(zip(names, node.args))
            given.update({k: v for k, v in node.kwargs.items() if k in names})
            for name, d in zip(names, dx):
                self.send_arg(given.get(name), d)
            return
        self.send_arg(node.args[0], dx)

    def send_arg(self, arg: Any, dx: Any) -> None:
        if isinstance(arg, Ref):
            self.add(arg, dx)
        elif isinstance(arg, list) and dx is not None:
            for ref, d in zip(arg, dx):
                self.send_arg(ref, d)


def keras_gradients(model: Any, layer_weights: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Keras variable path → gradient for every trainable variable (zeros where none flowed)."""
    out: dict[str, np.ndarray] = {}
    for v in trainable_variables(model):
        if v.path in out:
            raise NNTraceError(f"model '{model.name}': two trainable variables share the Keras path '{v.path}'")
        grad = layer_weights.get(v.layer, {}).get(v.weight)
        if grad is None:
            grad = np.zeros(model.layer(v.layer).weights[v.weight].shape, np.float32)
        out[v.path] = grad
    return out


# -- the optimizer step ---------------------------------------------------------------------------
def apply_gradients(model: Any, g: Gradients | dict[str, np.ndarray], optimizer: str = "sgd",
                    learning_rate: float | None = None, **hyper: Any) -> None:
    """Update the model's trainable weights in place as one Keras `optimizer.apply_gradients` does.

    Args:
        g: a `Gradients` (or `{Keras variable path: gradient}`).
        optimizer: "sgd" (`momentum`, `nesterov`) or "adam" (`beta_1`, `beta_2`, `epsilon`); Keras's
            defaults for whatever is not given (learning rate 0.01 for SGD, 0.001 for Adam).
    The optimizer's state (momenta, Adam's moments and step count) stays on the model, so the next
    call with the same optimizer continues it; another optimizer starts afresh. Adam's second moment
    of an Embedding adds the squares of its gradient's slices, as Keras does with TensorFlow's sparse
    gradient: a `Gradients` carries them for the gradient it computed (a gradient put in its place,
    clipped say, or a plain dict, gives the dense square).
    """
    settings = optimizers.settings(optimizer, learning_rate=learning_rate, **hyper)
    state = model.optimizer_state
    if state is None or state.name != optimizer:
        state = model.optimizer_state = optimizers.OptimizerState(optimizer)
    grads = g.weights if isinstance(g, Gradients) else g
    by_path = {v.path: v for v in trainable_variables(model)}
    unknown = sorted(set(grads) - set(by_path))
    if unknown:
        raise NNTraceError(f"model '{model.name}' has no trainable variable {', '.join(unknown)}")
    new: dict[str, dict[str, np.ndarray]] = {}
    for path, grad in grads.items():
        v = by_path[path]
        layer = model.layer(v.layer)
        current = layer.weights[v.weight]
        if np.shape(grad) != current.shape:
            raise NNTraceError(f"gradient for '{path}' has shape {np.shape(grad)}, the variable {current.shape}")
        extra = {}
        if optimizer == "adam" and isinstance(g, Gradients) and grad is g.computed.get(path):
            extra["squares"] = g.squared_slices(v.layer, v.weight)  # None but for an Embedding
        new.setdefault(v.layer, {})[v.weight] = optimizers.update(optimizer, current, grad, v.key, state,
                                                                 **extra, **settings)
    for name, updated in new.items():
        layer = model.layer(name)
        layer.set_weights([updated.get(w, a) for w, a in zip(layer.weight_shapes(), layer.get_weights())])
    state.iterations += 1


def train_step(model: Any, x: Any, y: Any, optimizer: str = "sgd", learning_rate: float | None = None,
               **hyper: Any) -> TrainStep:
    """Gradients of the batch, one optimizer step (see `apply_gradients`), and the loss before and
    after it."""
    g = gradients(model, x, y)
    apply_gradients(model, g, optimizer=optimizer, learning_rate=learning_rate, **hyper)
    return TrainStep(g.loss, loss(model, x, y))
