"""The backward pass of one sample as a trace: from the loss back to the input, for the app.

    t = trace_backward(model, images, label=3, sample=0)
    t.layers           # ("loss", "Loss"), the layers in backward order, then ("input", "Input") for images
    t.events           # LossGradient, then one LayerGradient per layer (∂L/∂y, ∂L/∂x, weight norms)
    next(t.steps("conv2d_1"))   # ConvKernelGradient, produced lazily by the layer that owns the maths

The gradients are those of `model.gradients` for a batch of one (the loss of that sample).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nntrace.layers.errors import InputShapeError, NNTraceError
from nntrace.models.gradients import Call, LossInputs, gradients
from nntrace.tracer.events import LayerGradient, LossGradient, Saliency
from nntrace.tracer.trace import Trace, input_context, one_sample

LOSS, INPUT = "loss", "input"


def sample_of(value: Any) -> Any:
    """The first (only) sample of a batch-of-one array; None for anything else."""
    return value[0] if isinstance(value, np.ndarray) and value.ndim >= 1 and value.dtype.kind == "f" else None


def layer_gradient(name: str, call: Call) -> LayerGradient:
    rec = call.record
    given = call.dz if call.dz is not None else call.dy
    out = sample_of(given)
    return LayerGradient(name, layer_class=type(rec.layer).__name__, output_gradient=out,
                         input_gradient=sample_of(call.dx),
                         norm=float(np.linalg.norm(out)) if out is not None else 0.0,
                         weight_norms={w: float(np.linalg.norm(g)) for w, g in call.grads.items()},
                         from_loss=call.dz is not None)


def loss_gradient(loss: LossInputs) -> LossGradient:
    logits = np.asarray(loss.logits, np.float32).reshape(-1, loss.logits.shape[-1])[0]
    label = int(np.asarray(loss.labels).reshape(-1)[0])
    gradient = np.asarray(loss.d_logits, np.float32).reshape(-1, logits.size)[0]
    exps = np.exp(logits - logits.max())
    probabilities = exps / exps.sum(dtype=np.float32)  # as the loss computes them: gradient = p − onehot
    onehot = np.zeros(logits.size, np.float32)
    onehot[label] = 1
    return LossGradient(LOSS, label=label, logits=logits, probabilities=probabilities, onehot=onehot,
                        gradient=gradient, loss=float(loss.loss), from_logits=loss.from_logits)


def trace_backward(model: Any, x: Any, label: int | None = None, sample: int = 0,
                   labels: list[str] | None = None) -> Trace:
    """The backward pass of sample `sample` of `x` against class `label` (default: the predicted
    class), as a `Trace` whose `direction` is "backward"."""
    one = one_sample(model, x, sample)
    context = input_context(model, one, labels)
    p = np.asarray(model.predict_proba(one))
    if p.shape[-1] < 2:
        raise NNTraceError(f"model '{model.name}' has a 1-unit output: cross-entropy over one class is always 0, so "
                           "its backward pass shows nothing; nntrace's backward pass needs 2 or more classes "
                           "(a sigmoid binary head is not supported)")
    if label is None:
        label = int(np.argmax(p.reshape(-1, p.shape[-1])[0]))  # the predicted class
    classes = (context.get("labels") or [])
    calls: dict[str, Any] = {}
    try:
        g = gradients(model, one, np.array([label]), calls, paths=False)
    except InputShapeError as exc:
        if classes and not 0 <= label < len(classes):
            raise InputShapeError(model.name, "model", f"a label from 0 to {len(classes) - 1}", str(label)) from exc
        raise
    loss = calls.pop("")
    order = list(calls)  # in backward order: the layer the loss reads first
    events: list = [loss_gradient(loss)]
    inputs, options, grads = {}, {}, {}
    for name in order:
        call = calls[name]
        events.append(layer_gradient(name, call))
        rec = call.record
        inputs[name] = (rec.x, rec.mask)
        options[name] = rec.options
        grads[name] = {"dy": call.dy, "dz": call.dz}
    layers = [(LOSS, "Loss")] + [(name, type(calls[name].record.layer).__name__) for name in order]
    recorded: dict[str, list] = {LOSS: [events[0]]}
    image = g.inputs if isinstance(g.inputs, np.ndarray) and g.inputs.ndim == 4 else None
    if image is not None:
        recorded[INPUT] = [Saliency(INPUT, gradient=image[0], saliency=np.abs(image[0]).max(axis=-1))]
        layers.append((INPUT, "Input"))
    context.update(label=int(label), loss=float(loss.loss))
    return Trace(model.name, layers, events, context, model, inputs, recorded_steps=recorded, options=options,
                 direction="backward", gradients=grads)
