"""TensorFlow's gradients of the same loss as `model.gradients`, for checking the scratch backward
pass: per variable, per layer output and for the input. TensorFlow is imported inside the functions."""
from __future__ import annotations

from typing import Any

import numpy as np


def keras_gradients(model, x: Any, y: np.ndarray) -> dict[str, Any]:
    """TensorFlow's loss and gradients for `model` on `x` with class ids `y`, inference mode.

    A model with several inputs takes `x` as a list of arrays in input order.

    Returns `{"loss", "weights": {path: grad}, "inputs": dL/dx or None (for several inputs a
    tuple, one per input), "outputs": {node name: dL/d(output) or None}, "probabilities": the
    model output, "logits": what the loss read (the logits Keras keeps behind a softmax or sigmoid,
    else the output), "from_logits": whether that was the output itself}`; every layer call's output is
    recorded while the model runs under the tape (as `models.keras_probe` does), so its gradient
    is the one flowing through the real model.
    """
    import keras
    import tensorflow as tf

    from nntrace.models.convert import keras_graph
    from nntrace.models.keras_probe import keras_tensor_of, node_output, recorded_calls

    graph = keras_graph(model)
    several = len(model.inputs) > 1
    arrays = list(x) if several else [x]
    tensors = [keras_tensor_of(a) for a in arrays]
    given = tensors if several else tensors[0]
    floats = [np.asarray(a).dtype.kind == "f" for a in arrays]
    with recorded_calls(graph) as calls, tf.GradientTape(persistent=True) as tape:
        for tensor, is_float in zip(tensors, floats):
            if is_float:
                tape.watch(tensor)
        p = model(given, training=False)
        # probabilities when the output comes straight from a softmax, else logits
        from_logits = not hasattr(p, "_keras_logits")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)(y, p)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    outputs = {}
    for knode in graph.nodes:
        node = knode.node
        out = node_output(calls, knode)
        g = tape.gradient(loss, list(out) if isinstance(out, (list, tuple)) else out)
        outputs[node.name] = dense(g)
    mask = keras.src.backend.get_keras_mask(p)
    d_inputs = tuple(dense(tape.gradient(loss, t)) if f else None for t, f in zip(tensors, floats))
    return {"loss": float(loss), "weights": {v.path: dense(g) for v, g in zip(variables, grads)},
            "inputs": d_inputs if several else d_inputs[0], "outputs": outputs,
            "probabilities": np.asarray(p), "mask": None if mask is None else np.asarray(mask),
            "logits": np.asarray(p if from_logits else p._keras_logits), "from_logits": from_logits}


def dense(g: Any) -> Any:
    """A TensorFlow gradient as a NumPy array (IndexedSlices summed), a tuple of them, or None."""
    import tensorflow as tf

    if g is None:
        return None
    if isinstance(g, (list, tuple)):
        return tuple(dense(v) for v in g)
    return np.asarray(tf.convert_to_tensor(g))


def rel_error(got: np.ndarray, want: np.ndarray, scale: float | None = None) -> float:
    """max |got − want| / max |want| (an absolute error when `want` is all zeros). A larger `scale`
    replaces max |want|: a gradient that is 0 in exact arithmetic (a key bias before a softmax) is
    round-off on both sides, measured against its layer's largest gradient, not against itself."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    scale = max(np.abs(want).max(initial=0.0), scale or 0.0)
    return float(np.abs(got - want).max(initial=0.0) / (scale if scale > 0 else 1.0))


#: max |g − g_tf| / max |g_tf| for a layer's gradient to pass (the bound the tests hold them to).
GRADIENT_REL = 1e-4


def compare_backward(trace, keras_model) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, bool]]]:
    """tf.GradientTape's gradients of `keras_model` for a backward trace's sample and label. Returns (layer → the tape's ∂L/∂y for the sample, layer → (max |g − g_tf| / max |g_tf|,
    passed)); the loss row compares the loss, the input row the input's gradient, and the layer
    whose softmax the loss reads its input's gradient."""
    label = np.array([int(trace.context["label"])])
    tape = keras_gradients(keras_model, trace.context.get("model_input"), label)
    grads = {name: g for name, g in tape["outputs"].items() if isinstance(g, np.ndarray)}
    inbound = getattr(trace.model, "inbound", None) or {}
    names = [n for n, _ in trace.layers]
    diffs: dict[str, tuple[float, bool]] = {}
    loss = next(e for e in trace.events if e.kind == "loss_gradient")
    err = abs(loss.loss - tape["loss"]) / max(abs(tape["loss"]), 1e-12)
    diffs["loss"] = (err, err <= GRADIENT_REL)
    for e in trace.events:
        if e.kind != "layer_gradient" or e.output_gradient is None:
            continue
        got, want = e.output_gradient, grads.get(e.layer)
        if e.from_loss or want is None:  # compare what the layer passes on instead
            sources = inbound.get(e.layer) or ([names[names.index(e.layer) + 1]] if names.index(e.layer) + 1 < len(names)
                                               else [])
            got, want = e.input_gradient, grads.get(sources[0]) if len(sources) == 1 else None
        if got is None or want is None or np.shape(want[0]) != np.shape(got):
            continue
        err = rel_error(got, want[0])
        diffs[e.layer] = (err, err <= GRADIENT_REL)
    saliency = trace.recorded_steps.get("input")
    if saliency and tape["inputs"] is not None:
        err = rel_error(saliency[0].gradient, tape["inputs"][0])
        diffs["input"] = (err, err <= GRADIENT_REL)
    return {k: v[0] for k, v in grads.items()}, diffs


