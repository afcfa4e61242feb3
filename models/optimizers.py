"""Keras's SGD (with momentum) and Adam update rules in NumPy, float32, in Keras's operation order.

An optimizer's state (momenta, Adam's moments and step count) lives in an `OptimizerState` that the
model keeps between calls, so a second step continues where the first left off.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nntrace.layers.errors import NNTraceError

#: Keras's constructor defaults.
DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
    "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
}


@dataclass
class OptimizerState:
    """What an optimizer carries from one step to the next.

    `slots[key]` holds the per-variable arrays (SGD `momentum`; Adam `m`, `v`) of the weight named
    `key` (`layer/weight`); `iterations` counts the steps taken, as Keras's `optimizer.iterations`.
    """

    name: str
    iterations: int = 0
    slots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def slot(self, key: str, slot: str, like: np.ndarray) -> np.ndarray:
        return self.slots.setdefault(key, {}).setdefault(slot, np.zeros(like.shape, np.float32))


def settings(name: str, **given: Any) -> dict[str, Any]:
    """Keras's defaults for optimizer `name` updated with the `given` values that are not None."""
    if name not in DEFAULTS:
        raise NNTraceError(f"unknown optimizer '{name}'; supported: {', '.join(DEFAULTS)}")
    unknown = set(given) - set(DEFAULTS[name])
    if unknown:
        raise NNTraceError(f"optimizer '{name}' takes {', '.join(DEFAULTS[name])}; got {', '.join(sorted(unknown))}")
    return {**DEFAULTS[name], **{k: v for k, v in given.items() if v is not None}}


def sgd_update(w: np.ndarray, g: np.ndarray, key: str, state: OptimizerState, learning_rate: float,
               momentum: float, nesterov: bool) -> np.ndarray:
    """keras.optimizers.SGD: `m = momentum·m − lr·g; w += m` (Nesterov: `w += momentum·m − lr·g`),
    or `w −= lr·g` without momentum."""
    lr = np.float32(learning_rate)
    if momentum == 0:
        return w - g * lr
    mom = np.float32(momentum)
    m = state.slot(key, "momentum", w)
    m[...] = m * mom - g * lr
    return w + (m * mom - g * lr if nesterov else m)


def adam_update(w: np.ndarray, g: np.ndarray, key: str, state: OptimizerState, learning_rate: float,
                beta_1: float, beta_2: float, epsilon: float, squares: np.ndarray | None = None) -> np.ndarray:
    """keras.optimizers.Adam: `m += (g − m)(1 − β1)`, `v += (g² − v)(1 − β2)`,
    `w −= m·α / (√v + ε)` with `α = lr·√(1 − β2ᵗ) / (1 − β1ᵗ)`, t the step number from 1. Where the
    gradient came as slices (an Embedding's), `squares` (Σ of the slices squared) replaces g²."""
    t = np.float32(state.iterations + 1)
    alpha = (np.float32(learning_rate) * np.sqrt(np.float32(1) - np.power(np.float32(beta_2), t))
             / (np.float32(1) - np.power(np.float32(beta_1), t)))
    m, v = state.slot(key, "m", w), state.slot(key, "v", w)
    m += (g - m) * np.float32(1 - beta_1)
    v += ((np.square(g) if squares is None else squares) - v) * np.float32(1 - beta_2)
    return w - (m * alpha) / (np.sqrt(v) + np.float32(epsilon))


UPDATES = {"sgd": sgd_update, "adam": adam_update}


def update(name: str, w: np.ndarray, g: np.ndarray, key: str, state: OptimizerState, **hyper: Any) -> np.ndarray:
    """The new value of weight `w` `(any shape)` after one step on gradient `g` (same shape);
    `squares` (Adam only, optional) as `adam_update` takes it."""
    return UPDATES[name](np.asarray(w, np.float32), np.asarray(g, np.float32), key, state, **hyper).astype(
        np.float32, copy=False)
