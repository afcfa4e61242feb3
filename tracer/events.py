"""The trace event schema: small frozen records, one per step a learner can look at.

Every event has `layer` (the scratch layer's name) and a `kind` (its class's `KIND`). Array fields
are NumPy arrays for the traced sample only; shapes are written beside each field. Bump
`SCHEMA_VERSION` whenever a field changes meaning.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Optional

import numpy as np

SCHEMA_VERSION = 2
#: Schemas this version reads. 2 added the parts of each LSTM gate, activations' names, per-channel
#: conv sums and the dense remainder, and masked recurrent steps carry no fresh gate values.
READABLE_SCHEMAS = (1, 2)


@dataclass(frozen=True, slots=True)
class Event:
    layer: str
    KIND: ClassVar[str] = "event"

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def label(self) -> str:
        """A short torchlens-style label, e.g. `conv2d_1:r3c4f7`."""
        return f"{self.layer}:{self.KIND}"


@dataclass(frozen=True, slots=True)
class LayerStart(Event):
    layer_class: str = ""
    input_shape: tuple = ()           # batch shape of the layer's input
    KIND: ClassVar[str] = "layer_start"


@dataclass(frozen=True, slots=True)
class LayerEnd(Event):
    layer_class: str = ""
    output_shape: tuple = ()          # batch shape of the layer's output
    output: Optional[np.ndarray] = None  # the traced sample's output, e.g. (h, w, filters) or (units,)
    mask: Optional[np.ndarray] = None    # (timesteps,) bools when a mask leaves this layer
    KIND: ClassVar[str] = "layer_end"


@dataclass(frozen=True, slots=True)
class ConvPatch(Event):
    """One output cell of one filter: a patch · kernel slice + bias, then the activation."""

    row: int = 0
    col: int = 0
    filter: int = 0
    patch: np.ndarray = None            # (kh, kw, in_ch) input values (zeros where padded)
    kernel: np.ndarray = None           # (kh, kw, in_ch) the filter's weights
    products: np.ndarray = None         # (kh, kw, in_ch) patch * kernel
    channel_totals: np.ndarray = None   # (in_ch,) products summed over each input channel
    total: float = 0.0                  # products.sum()
    bias: float = 0.0
    pre_activation: float = 0.0         # total + bias
    value: float = 0.0                  # activation(pre_activation): the output cell
    activation: str = "linear"
    padding: np.ndarray = None          # (kh, kw) True where the cell is padding
    origin: tuple = (0, 0)              # input (row, col) of the patch's top-left cell (may be < 0)
    input_size: tuple = ()              # (rows, cols) of the layer's input
    strides: tuple = (1, 1)
    pad: tuple = (0, 0)                 # total padding added to (rows, cols): top + bottom, left + right
    output_size: tuple = ()             # (rows, cols) of the output: ⌊(n + pad − k)/s⌋ + 1
    dilation: tuple = (1, 1)            # patch cell (i, j) is input cell origin + (i·dilation[0], j·dilation[1]);
                                        # the output size uses k = (taps − 1)·dilation + 1
    group: int = 0                      # grouped/depthwise: the filter reads input channels
                                        # group·in_ch … (group + 1)·in_ch − 1 (in_ch = the patch's channels)
    stage: str = ""                     # SeparableConv2D: "depthwise" or "pointwise"
    KIND: ClassVar[str] = "conv_patch"

    @property
    def label(self) -> str:
        return f"{self.layer}:r{self.row}c{self.col}f{self.filter}"


@dataclass(frozen=True, slots=True)
class PoolWindow(Event):
    row: int = 0
    col: int = 0
    channel: int = 0
    mode: str = "max"                   # max | average
    window: np.ndarray = None           # (ph, pw) values (padding shown as nan)
    real: np.ndarray = None             # (ph, pw) True for real (unpadded) cells
    winner: Optional[tuple] = None      # (i, j) inside the window, for max
    value: float = 0.0
    origin: tuple = (0, 0)
    input_size: tuple = ()              # (rows, cols) of the layer's input
    strides: tuple = (1, 1)
    pad: tuple = (0, 0)                 # total padding added to (rows, cols): top + bottom, left + right
    output_size: tuple = ()             # (rows, cols) of the output: ⌊(n + pad − k)/s⌋ + 1
    KIND: ClassVar[str] = "pool_window"

    @property
    def label(self) -> str:
        return f"{self.layer}:r{self.row}c{self.col}ch{self.channel}"


@dataclass(frozen=True, slots=True)
class FlattenMap(Event):
    input_shape: tuple = ()             # (h, w, c) of one sample
    sources: np.ndarray = None          # (h*w*c, 3): the (h, w, c) index behind each flat index
    KIND: ClassVar[str] = "flatten_map"


@dataclass(frozen=True, slots=True)
class DenseNeuron(Event):
    unit: int = 0
    inputs: np.ndarray = None           # (k,) indices of the k largest |x_i * w_i|, largest first
    contributions: np.ndarray = None    # (k,) x_i * w_i for those indices
    rest: float = 0.0                   # the sum of x_i * w_i over the other inputs (total - top sum)
    n_inputs: int = 0                   # how many inputs the unit sums over
    total: float = 0.0                  # sum over all inputs of x_i * w_i
    bias: float = 0.0
    pre_activation: float = 0.0
    activation: str = "linear"
    value: float = 0.0                  # the unit's output (before softmax, see SoftmaxStep)
    KIND: ClassVar[str] = "dense_neuron"

    @property
    def label(self) -> str:
        return f"{self.layer}:u{self.unit}"


@dataclass(frozen=True, slots=True)
class SoftmaxStep(Event):
    logits: np.ndarray = None           # (classes,)
    exps: np.ndarray = None             # (classes,) exp(logits - max(logits))
    total: float = 0.0                  # exps.sum()
    probabilities: np.ndarray = None    # (classes,) exps / total
    KIND: ClassVar[str] = "softmax"


@dataclass(frozen=True, slots=True)
class EmbeddingLookup(Event):
    position: int = 0
    token: Optional[str] = None         # the token text when a TextVectorization came first
    token_id: int = 0
    oov: bool = False
    padding: bool = False
    vector: np.ndarray = None           # (output_dim,)
    KIND: ClassVar[str] = "embedding_lookup"

    @property
    def label(self) -> str:
        return f"{self.layer}:t{self.position}"


@dataclass(frozen=True, slots=True)
class RNNStep(Event):
    """One SimpleRNN step: h_t = activation(x_t·W + h_prev·U + bias), or carried over when masked.

    A masked step did not happen: `x_part`, `h_part`, `bias` and `pre_activation` are None and
    h == h_prev.
    """

    direction: str = "forward"          # forward | backward
    step: int = 0                       # processing order
    time: int = 0                       # index in the input sequence
    x_part: Optional[np.ndarray] = None          # (units,) x_t · kernel
    h_part: Optional[np.ndarray] = None          # (units,) h_prev · recurrent_kernel
    bias: Optional[np.ndarray] = None            # (units,)
    pre_activation: Optional[np.ndarray] = None  # (units,) x_part + bias + h_part
    h_prev: np.ndarray = None           # (units,)
    h: np.ndarray = None                # (units,) state after the step (h_prev when masked)
    masked: bool = False
    activation: str = "tanh"
    KIND: ClassVar[str] = "rnn_step"

    @property
    def label(self) -> str:
        return f"{self.layer}:{self.direction[0]}t{self.time}"


@dataclass(frozen=True, slots=True)
class LSTMStep(Event):
    """One LSTM step: gates i, f, g (candidate), o; c = f*c_prev + i*g; h = o*tanh(c).

    Each gate is `recurrent_activation(x·W + h_prev·U + b)` (the candidate g uses `activation`); the
    three parts are kept per gate, rows in the order i, f, g, o. A masked step did not happen: the
    gates and their parts are None, c == c_prev and h == h_prev.
    """

    direction: str = "forward"
    step: int = 0
    time: int = 0
    i: Optional[np.ndarray] = None      # (units,) input gate
    f: Optional[np.ndarray] = None      # (units,) forget gate
    g: Optional[np.ndarray] = None      # (units,) candidate
    o: Optional[np.ndarray] = None      # (units,) output gate
    x_part: Optional[np.ndarray] = None          # (4, units) x_t · kernel, per gate
    h_part: Optional[np.ndarray] = None          # (4, units) h_prev · recurrent_kernel, per gate
    bias: Optional[np.ndarray] = None            # (4, units)
    pre_activation: Optional[np.ndarray] = None  # (4, units) x_part + bias + h_part
    c_prev: np.ndarray = None
    c: np.ndarray = None                # (units,) cell state after the step (c_prev when masked)
    h_prev: np.ndarray = None
    h: np.ndarray = None                # (units,) hidden state after the step (h_prev when masked)
    masked: bool = False
    activation: str = "tanh"            # for g and for h = o * activation(c)
    recurrent_activation: str = "sigmoid"  # for i, f, o
    KIND: ClassVar[str] = "lstm_step"

    @property
    def label(self) -> str:
        return f"{self.layer}:{self.direction[0]}t{self.time}"


@dataclass(frozen=True, slots=True)
class GRUStep(Event):
    """One GRU step: gates z (update), r (reset), the candidate h̃; h = z·h_prev + (1 − z)·h̃.

    `z` and `r` are `recurrent_activation(x·W + b + h_prev·U [+ rb])`; the candidate is
    `activation(x·W_h + b_h + r·(h_prev·U_h + rb_h))` with `reset_after` (Keras's default), else
    `activation(x·W_h + b_h + (r·h_prev)·U_h)`. The parts are kept per gate, rows in the order z,
    r, h; the h row of `h_part` is h_prev·U_h with `reset_after` and (r·h_prev)·U_h without. A
    masked step did not happen: the gates and their parts are None and h == h_prev.
    """

    direction: str = "forward"
    step: int = 0
    time: int = 0
    z: Optional[np.ndarray] = None      # (units,) update gate: how much of h_prev is kept
    r: Optional[np.ndarray] = None      # (units,) reset gate
    h_tilde: Optional[np.ndarray] = None  # (units,) candidate state
    x_part: Optional[np.ndarray] = None          # (3, units) x_t · kernel, per gate
    h_part: Optional[np.ndarray] = None          # (3, units) h_prev · recurrent_kernel (h row: see above)
    bias: Optional[np.ndarray] = None            # (3, units) input bias
    recurrent_bias: Optional[np.ndarray] = None  # (3, units) with reset_after, else None
    pre_activation: Optional[np.ndarray] = None  # (3, units) the argument of each gate's activation
    h_prev: np.ndarray = None
    h: np.ndarray = None                # (units,) state after the step (h_prev when masked)
    masked: bool = False
    reset_after: bool = True
    activation: str = "tanh"            # for the candidate
    recurrent_activation: str = "sigmoid"  # for z and r
    KIND: ClassVar[str] = "gru_step"

    @property
    def label(self) -> str:
        return f"{self.layer}:{self.direction[0]}t{self.time}"


@dataclass(frozen=True, slots=True)
class BidirectionalMerge(Event):
    merge_mode: str = "concat"
    forward: np.ndarray = None          # (units,) or (timesteps, units)
    backward: np.ndarray = None         # same shape, already in input time order
    merged: np.ndarray = None
    KIND: ClassVar[str] = "bidirectional_merge"


@dataclass(frozen=True, slots=True)
class DropoutStep(Event):
    rate: float = 0.0
    training: bool = False              # at inference dropout is the identity
    KIND: ClassVar[str] = "dropout"


@dataclass(frozen=True, slots=True)
class NormalizeStep(Event):
    """One group of values LayerNormalization normalises together (e.g. one token's features):
    `normalized = (values − mean) / √(variance + epsilon)`, `output = normalized·gamma + beta`
    (with the deprecated `rms_scaling`: `normalized = values / √(variance + epsilon)`, no beta)."""

    position: tuple = ()                # index of the group along the axes that are not normalised
    values: np.ndarray = None           # the group's inputs, shaped like gamma (e.g. (features,))
    mean: float = 0.0
    variance: float = 0.0               # the mean of (values − mean)²
    epsilon: float = 0.0
    normalized: np.ndarray = None       # same shape as values
    gamma: Optional[np.ndarray] = None  # None without `scale`
    beta: Optional[np.ndarray] = None   # None without `center`
    output: np.ndarray = None           # same shape as values
    KIND: ClassVar[str] = "normalize"

    @property
    def label(self) -> str:
        return f"{self.layer}:p{'.'.join(map(str, self.position))}"


@dataclass(frozen=True, slots=True)
class AttentionStep(Event):
    """One query position of one attention head reading the keys and values.

    `scaled = scores · scale`; the softmax reads `logits` (`scaled` where `mask` is True; where it
    is False, Keras's masked value: `scaled − 1e9` for Attention, a large negative for
    MultiHeadAttention); `weights = softmax(logits)`; `output = weights · values`. For
    MultiHeadAttention q, keys and values are the head's projections, `scale = 1/√key_dim`, and the
    output is the head's, before the output projection. For Attention with `score_mode`
    "concat", `scores[j] = Σ tanh(inner_scale · (q + keys[j]))` and `scale` is its
    concat_score_weight; a masked query (`query_masked`) has output 0.
    """

    head: int = 0
    query: int = 0                      # the query's position
    q: np.ndarray = None                # (key_dim,)
    keys: np.ndarray = None             # (S, key_dim)
    scores: np.ndarray = None           # (S,) q · keys[j] (concat: see above)
    scale: float = 1.0
    scaled: np.ndarray = None           # (S,) scores · scale
    mask: Optional[np.ndarray] = None   # (S,) True where the query may read key j; None: every key
    logits: np.ndarray = None           # (S,) what the softmax reads
    weights: np.ndarray = None          # (S,) the softmax: attention weights
    values: np.ndarray = None           # (S, value_dim)
    output: np.ndarray = None           # (value_dim,) Σ_j weights[j] · values[j]
    score_mode: str = "dot"             # dot | concat
    inner_scale: float = 1.0            # concat: the factor inside tanh
    query_masked: bool = False          # Attention: a masked query's output is 0
    KIND: ClassVar[str] = "attention"

    @property
    def label(self) -> str:
        return f"{self.layer}:h{self.head}q{self.query}"


@dataclass(frozen=True, slots=True)
class ActivationStep(Event):
    """An activation layer applied to the sample, element by element: `y = function(x)`.

    `relu`: x > threshold gives x, else 0, capped at `max_value`; with a `negative_slope`, x ≤
    threshold gives negative_slope·(x − threshold) (Keras's ReLU layer). `leaky_relu`: x > 0 gives
    x, else negative_slope·x. `elu`: x > 0 gives x, else alpha·(exp(x) − 1). `prelu`: x > 0 gives
    x, else alpha·x with one slope per position of `alpha` (broadcast over the sample).
    """

    function: str = "relu"              # relu | leaky_relu | elu | prelu
    x: np.ndarray = None                # the sample's input
    y: np.ndarray = None                # the sample's output, same shape
    negative_slope: float = 0.0
    max_value: Optional[float] = None
    threshold: float = 0.0
    alpha: Optional[np.ndarray] = None  # elu: its alpha (one value); prelu: the slopes
    KIND: ClassVar[str] = "activation"


@dataclass(frozen=True, slots=True)
class MaskingStep(Event):
    """A Masking layer on the sample: a step whose features all equal `mask_value` is padding
    (`keep` False): its output is 0 and the mask passed on is `keep`."""

    mask_value: float = 0.0
    x: np.ndarray = None                # (steps, features)
    keep: np.ndarray = None             # (steps,) bools
    y: np.ndarray = None                # (steps, features)
    KIND: ClassVar[str] = "masking"


@dataclass(frozen=True, slots=True)
class MergeStep(Event):
    """A merge layer's inputs and what it made of them (one event per traced sample).

    `operands` are the inputs as the merge combines them, so `result` follows from them alone:
    `add` Σ, `subtract` a − b, `multiply` Π (a masked position of an input holds 1; where every
    input is masked the result is 0), `average` Σ / n, `maximum`/`minimum` (a masked position holds
    the result: it took no part), `concatenate` along `axis`, `dot` Σ over `axes` (of the
    L2-normalised operands when `normalize`).
    """

    mode: str = "add"                   # add | subtract | multiply | average | maximum | minimum | concatenate | dot
    operands: tuple = ()                # one array per input, the sample's (no batch axis)
    result: np.ndarray = None           # the merged output for the sample
    masks: tuple = ()                   # each input's mask `(timesteps,)` bools, or None
    axis: Optional[int] = None          # concatenate: the joined axis of the sample's arrays
    axes: tuple = ()                    # dot: the summed axis of each operand (sample axes)
    normalize: bool = False             # dot: operands L2-normalised first
    KIND: ClassVar[str] = "merge"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.KIND: cls for cls in (LayerStart, LayerEnd, ConvPatch, PoolWindow, FlattenMap, DenseNeuron, SoftmaxStep,
                              EmbeddingLookup, RNNStep, LSTMStep, GRUStep, BidirectionalMerge, DropoutStep,
                              MergeStep, NormalizeStep, AttentionStep, ActivationStep, MaskingStep)
}


def event_fields(event: Event) -> dict:
    return {f.name: getattr(event, f.name) for f in fields(event)}
