"""Helpers for gradient parity tests: TensorFlow's gradients of the same loss beside the scratch
backward pass, compared per variable, per layer output and for the input."""
from __future__ import annotations

from typing import Any

import numpy as np

from nntrace.models import load_scratch
from nntrace.models.gradient_check import dense, keras_gradients, rel_error  # noqa: F401 — used by the tests

#: max |g − g_tf| / max |g_tf| for every gradient; relative error of the loss.
REL, LOSS_REL = 1e-4, 1e-6
#: Below this, a whole gradient is float32 round-off of an exact 0: compared in absolute terms.
NOISE = 1e-9


def assert_close(got: Any, want: Any, what: str) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), what
        for k, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, f"{what}[{k}]")
        return
    scale = float(np.abs(np.asarray(want, np.float64)).max(initial=0.0))
    if scale <= NOISE:  # a gradient that is 0 in exact arithmetic (e.g. a key bias before a softmax):
        top = float(np.abs(np.asarray(got, np.float64)).max(initial=0.0))  # TensorFlow gives round-off
        assert top <= NOISE, f"{what}: TensorFlow's gradient is round-off (≤ {NOISE}), ours reaches {top:.2e}"
        return
    err = rel_error(got, want)
    assert err <= REL, f"{what}: max|g − g_tf| / max|g_tf| = {err:.2e} > {REL}"


def assert_loss_close(scratch, x: Any, y: np.ndarray, loss: float, want: dict) -> None:
    """The loss equals Keras's to LOSS_REL: computed from Keras's own logits it must; from the
    scratch forward pass's logits it may differ further only by what their float32 round-off
    explains (|ΔL| ≤ 2·max|Δlogits|, each logit's gradient being at most 1 in size)."""
    from nntrace.models.gradients import cross_entropy, forward_pass, logits_of, logits_source

    labels = np.asarray(y)
    mask = want["mask"]
    tf_loss = want["loss"]
    on_keras_logits = cross_entropy(want["logits"], labels, mask)[0]
    assert abs(on_keras_logits - tf_loss) <= LOSS_REL * tf_loss, (on_keras_logits, tf_loss)
    fwd = forward_pass(scratch, x, keep=False)
    logits = logits_of(logits_source(fwd), fwd.output)
    assert logits.shape == want["logits"].shape, (logits.shape, want["logits"].shape)
    weight = 1.0 if mask is None else mask.size / max(mask.sum(), 1)
    apart = float(np.abs(logits.astype(np.float64) - want["logits"]).max())
    assert apart <= REL * max(1.0, float(np.abs(want["logits"]).max())), f"the loss reads other logits ({apart:.2e})"
    slack = 2 * weight * apart
    assert abs(loss - tf_loss) <= LOSS_REL * tf_loss + slack, (loss, tf_loss, slack)


def assert_null_close(got: np.ndarray, want: np.ndarray, scale: float, what: str) -> None:
    """A gradient that is zero in exact arithmetic: both sides are round-off, within REL of `scale`."""
    for side, value in (("scratch", got), ("TensorFlow", want)):
        size = float(np.abs(np.asarray(value, np.float64)).max(initial=0.0))
        assert size <= REL * scale, f"{what}: the {side} gradient {size:.2e} is not round-off next to {scale:.2e}"


def assert_gradient_parity(keras_model, x: Any, y: np.ndarray, scratch=None, null: tuple[str, ...] = ()):
    """The scratch gradients of `keras_model` equal TensorFlow's: the loss, every trainable
    variable (under Keras's own path), the input and every layer output.

    `null` names variables whose gradient is zero in exact arithmetic (an attention key's bias:
    the softmax ignores a shift common to all of a query's scores), where both sides hold only
    round-off: each must be within REL of the largest TensorFlow gradient of the same layer."""
    scratch = scratch or load_scratch(keras_model)
    want = keras_gradients(keras_model, x, y)
    g = scratch.gradients(x, y)
    assert_loss_close(scratch, x, y, g.loss, want)
    assert sorted(g.weights) == sorted(want["weights"])
    assert set(null) <= set(want["weights"]), sorted(set(null) - set(want["weights"]))
    for path, grad in want["weights"].items():
        if path in null:
            layer = path.split("/")[0]
            scale = max(float(np.abs(w).max(initial=0.0)) for p, w in want["weights"].items()
                        if p.split("/")[0] == layer and p not in null)
            assert_null_close(g.weights[path], grad, scale, f"variable {path}")
            continue
        assert_close(g.weights[path], grad, f"variable {path}")
    several = isinstance(want["inputs"], tuple)  # a model with several inputs
    assert not several or len(g.inputs) == len(want["inputs"])
    for k, (got, grad) in enumerate(zip(g.inputs, want["inputs"]) if several else [(g.inputs, want["inputs"])]):
        what = f"input {k}" if several else "input"
        if grad is None:
            assert got is None, what
        else:
            assert_close(got, grad, what)
    output = scratch.graph.output.node
    for name, grad in want["outputs"].items():
        p = want["probabilities"]
        if grad is None and name == output and not want["from_logits"] and np.allclose(p.sum(-1), 1, atol=1e-4):
            # Keras's loss reads the logits behind a final softmax: dL/dp as if it read p
            grad = probability_gradient(p, np.asarray(y), want["mask"])
        if grad is None:
            assert g.outputs[name] is None, name
            continue
        assert_close(g.outputs[name], grad, f"output of {name}")
    return g


def probability_gradient(p: np.ndarray, y: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """dL/dp of Keras's mean −log p[y], masked entries weighted 0 and the others total / valid."""
    flat, ids = p.reshape(-1, p.shape[-1]).astype(np.float64), y.reshape(-1)
    weights = np.ones(len(ids)) if mask is None else mask.reshape(-1) * len(ids) / max(mask.sum(), 1)
    grad = np.zeros_like(flat)
    grad[np.arange(len(ids)), ids] = -weights / (len(ids) * flat[np.arange(len(ids)), ids])
    return grad.reshape(p.shape)
