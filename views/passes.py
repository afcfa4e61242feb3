"""The forward and the backward pass of one input, each with its replay and its Keras side; `b`
switches between them. The backward trace is built on first use (and again for a new input or
label) by the function the app hands over, or read from a recorded trace file."""
from __future__ import annotations

from typing import Any, Callable

from nntrace.layers.errors import NNTraceError
from nntrace.views.keras_side import KerasSide
from nntrace.views.replay import JumpError, Replay


class Passes:
    def __init__(self, replay: Replay, keras: KerasSide, keras_path: Any, recorded_backward: Any = None) -> None:
        self.forward, self.forward_keras = replay, keras
        self.backward: Replay | None = None
        self.backward_keras = KerasSide(keras_path, "GradientTape")
        self.recorded = recorded_backward  # a backward trace read from a file, or None
        self.label: int | None = None      # the class chosen with `l` (None: the predicted class)
        self.source = None                 # the forward trace the backward one belongs to

    def classes(self) -> int:
        """How many classes the model's output has (from the forward trace's last layer)."""
        out = self.forward.trace.output(self.forward.trace.layers[-1][0])
        return int(out.shape[-1])

    def backward_for(self, build: Callable[[Any, int | None], Any] | None, label: int | None) -> bool:
        """Make the backward replay current for the forward trace's input and `label` (None: the
        predicted class); True when a new backward trace was made."""
        forward = self.forward.trace
        current = self.backward.trace if self.backward is not None else None
        if current is not None and self.source is forward and (label is None or current.context.get("label") == label):
            return False
        if build is None:
            if self.recorded is None:
                raise JumpError("this trace holds no backward pass: record one with "
                                "nntrace trace … --backward")
            if label is not None and label != self.recorded.context.get("label"):
                raise JumpError(f"the recorded backward pass is against class {self.recorded.context.get('label')}; "
                                "another class needs the model (nntrace cnn|rnn|lstm|gru|attention, or --model)")
            made = self.recorded
        else:
            try:
                made = build(forward.context.get("model_input"), label)
            except NNTraceError as exc:  # e.g. a layer without a backward pass: said on screen, once
                raise JumpError(f"no backward pass for this model: {exc}") from None
            made.context.setdefault("model_input", forward.context.get("model_input"))
            made.context.setdefault("true_label", forward.context.get("true_label"))
        if self.backward is None:
            self.backward = Replay(made)
        else:
            self.backward.set_trace(made)
        self.source = forward
        self.backward_keras.reset()
        return True
