"""The trace event schema: small frozen records, one per step a learner can look at.

Every event has `layer` (the scratch layer's name) and a `kind` (its class's `KIND`). Array fields
are NumPy arrays for the traced sample only; shapes are written beside each field. Bump
`SCHEMA_VERSION` whenever a field changes meaning.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Optional

import numpy as np

SCHEMA_VERSION = 3
#: Schemas this version reads. 2 added the parts of each LSTM gate, activations' names, per-channel
#: conv sums and the dense remainder, and masked recurrent steps carry no fresh gate values. 3 added
#: the backward pass: the loss gradient, per-layer gradients and the backward steps of each layer.
READABLE_SCHEMAS = (1, 2, 3)


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
    exps: Optional[np.ndarray] = None   # (S,) exp(logits − the largest logit the query reads); 0 where masked
    total: Optional[float] = None       # Σ of exps over the keys the query reads (weights = exps / total)
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


# -- the backward pass -------------------------------------------------------------------------
# A backward trace replays the gradients of one sample's loss from the loss back to the input.
# Its layers run in backward order; `∂L/∂y` is the gradient of the loss with respect to a layer's
# output, `δ` the gradient with respect to a pre-activation (z in `y = activation(z)`).


@dataclass(frozen=True, slots=True)
class LossGradient(Event):
    """The loss of one sample and its gradient with respect to the logits: `∂L/∂z = p − onehot`.

    `L = −log p[label]` with `p = softmax(logits)` (Keras's SparseCategoricalCrossentropy of one
    sample; a model whose last layer ends in a softmax gives `p`, and the loss reads the logits
    behind it, as Keras does).
    """

    label: int = 0                      # the class the loss is taken against
    logits: np.ndarray = None           # (classes,)
    probabilities: np.ndarray = None    # (classes,) softmax(logits)
    onehot: np.ndarray = None           # (classes,) 1 at the label
    gradient: np.ndarray = None         # (classes,) probabilities − onehot
    loss: float = 0.0                   # −log probabilities[label]
    from_logits: bool = False           # the model's output is the logits (no final softmax)
    KIND: ClassVar[str] = "loss_gradient"


@dataclass(frozen=True, slots=True)
class LayerGradient(Event):
    """A layer's backward pass for the sample: the gradient it received and the one it passed on.

    `output_gradient` is ∂L/∂(output) (for the layer whose softmax the loss reads: ∂L/∂z, and
    `from_loss` is True); `input_gradient` is ∂L/∂(input), None where the input is token ids or
    strings. `weight_norms` gives each weight's gradient norm ‖∂L/∂W‖.
    """

    layer_class: str = ""
    output_gradient: Optional[np.ndarray] = None  # the sample's ∂L/∂y, shaped like its output
    input_gradient: Optional[np.ndarray] = None   # the sample's ∂L/∂x, shaped like its input
    norm: float = 0.0                   # ‖∂L/∂y‖
    weight_norms: dict = field(default_factory=dict)  # weight name → ‖∂L/∂W‖
    from_loss: bool = False
    KIND: ClassVar[str] = "layer_gradient"


@dataclass(frozen=True, slots=True)
class DenseGradient(Event):
    """One dense unit backward: `δ = ∂L/∂y · activation'(z)`, then `∂L/∂W[i] = x_i · δ` for every
    input i (the `top` largest |x_i·δ| are kept) and `∂L/∂b = δ`.

    For the unit of a final softmax the loss gives δ directly (`from_loss`): δ = p − onehot, and
    `output_gradient` and `slope` are None.
    """

    unit: int = 0
    output_gradient: Optional[float] = None  # ∂L/∂y_unit
    slope: Optional[float] = None       # activation'(z) at the unit's pre-activation
    delta: float = 0.0                  # ∂L/∂z_unit
    inputs: np.ndarray = None           # (k,) indices of the k largest |x_i·δ|, largest first
    x: np.ndarray = None                # (k,) x_i at those indices
    weight_gradients: np.ndarray = None  # (k,) x_i · δ: ∂L/∂kernel[i, unit]
    n_inputs: int = 0
    bias_gradient: Optional[float] = None  # δ (None without a bias)
    activation: str = "linear"
    from_loss: bool = False
    KIND: ClassVar[str] = "dense_gradient"

    @property
    def label(self) -> str:
        return f"{self.layer}:du{self.unit}"


@dataclass(frozen=True, slots=True)
class ConvKernelGradient(Event):
    """One conv kernel weight's gradient: the sum over every output cell of the input value that
    weight read there times that cell's δ: `∂L/∂W[i, j, ch, f] = Σ_cells x · δ`.

    `inputs[r, c]` is the input value under tap (i, j, ch) when the filter sat at output cell
    (r, c) (0 on padding); `deltas[r, c]` is ∂L/∂z of filter f at (r, c).
    """

    filter: int = 0
    tap: tuple = (0, 0, 0)              # (i, j, ch): the weight's place in the kernel
    inputs: np.ndarray = None           # (out_h, out_w)
    deltas: np.ndarray = None           # (out_h, out_w)
    products: np.ndarray = None         # (out_h, out_w) inputs · deltas
    running: np.ndarray = None          # (out_h, out_w) the sum of products up to each cell, row-major
    total: float = 0.0                  # products.sum(): ∂L/∂W[i, j, ch, f]
    weight: float = 0.0                 # the weight's value
    KIND: ClassVar[str] = "conv_kernel_gradient"

    @property
    def label(self) -> str:
        i, j, ch = self.tap
        return f"{self.layer}:dW{i}.{j}.{ch}f{self.filter}"


@dataclass(frozen=True, slots=True)
class ConvInputGradient(Event):
    """One input cell's gradient: every (output cell, filter) whose patch read it sends back
    weight · δ: `∂L/∂x[row, col, ch] = Σ_cells Σ_f W[tap, ch, f] · δ[cell, f]`.

    `cells` are the output cells whose patch covers the input cell, `taps` where in the kernel it
    sat; `cell_sums[k]` is the sum over filters for cell k.
    """

    row: int = 0
    col: int = 0
    channel: int = 0
    cells: np.ndarray = None            # (n, 2) output (row, col)
    taps: np.ndarray = None             # (n, 2) kernel (i, j)
    weights: np.ndarray = None          # (n, filters) W[i, j, ch, :]
    deltas: np.ndarray = None           # (n, filters) δ at each cell
    cell_sums: np.ndarray = None        # (n,) Σ_f weights · deltas
    total: float = 0.0                  # cell_sums.sum(): ∂L/∂x[row, col, ch]
    KIND: ClassVar[str] = "conv_input_gradient"

    @property
    def label(self) -> str:
        return f"{self.layer}:dx{self.row}.{self.col}.{self.channel}"


@dataclass(frozen=True, slots=True)
class PoolRouting(Event):
    """One pooling window backward: its output gradient goes back into the window. Max pooling
    sends all of it to the winner (the first maximum in row-major order, as TensorFlow); average
    pooling shares it equally among the real (unpadded) cells."""

    row: int = 0
    col: int = 0
    channel: int = 0
    mode: str = "max"                   # max | average
    window: np.ndarray = None           # (ph, pw) the forward window's values (padding nan)
    real: np.ndarray = None             # (ph, pw) True for real cells
    winner: Optional[tuple] = None      # (i, j) for max
    output_gradient: float = 0.0        # ∂L/∂y at (row, col, channel)
    routed: np.ndarray = None           # (ph, pw) the gradient each window cell receives
    origin: tuple = (0, 0)              # input (row, col) of the window's top-left cell
    KIND: ClassVar[str] = "pool_routing"

    @property
    def label(self) -> str:
        return f"{self.layer}:dr{self.row}c{self.col}ch{self.channel}"


@dataclass(frozen=True, slots=True)
class RecurrentGradient(Event):
    """Backpropagation through one time step of a recurrent layer, in backward processing order.

    `dh = dh_out + dh_next`: what reaches h_t from the layer's output at t and from the next
    step. LSTM: `dc = dc_next + dh·o·activation'(c)`; the gate gradients (with respect to each
    gate's pre-activation) are `δi = dc·g·σ'`, `δf = dc·c_prev·σ'`, `δg = dc·i·tanh'`,
    `δo = dh·tanh(c)·σ'` (`slopes` hold each gate's activation derivative). SimpleRNN:
    `δz = dh·activation'(z)`. GRU (`gates` z, r, h̃): `δh̃ = dh·(1 − z)·tanh'`,
    `δz = dh·(h_prev − h̃)·σ'` and, with reset_after, `δr = δh̃·h_in·σ'`. `dh_prev` (and
    `dc_prev = dc·f`) go on to step t − 1. A masked step did not happen: its gradients pass through
    unchanged (`dh_prev = dh`) and the gate fields are None.
    """

    direction: str = "forward"
    step: int = 0                       # forward processing order of the step
    time: int = 0                       # index in the input sequence
    cell: str = "lstm"                  # simple_rnn | lstm | gru
    dh_out: np.ndarray = None           # (units,) ∂L/∂h_t from the layer's output
    dh_next: np.ndarray = None          # (units,) ∂L/∂h_t carried back from the next step
    dh: np.ndarray = None               # (units,) dh_out + dh_next
    dz: Optional[np.ndarray] = None     # (gates, units) ∂L/∂(pre-activation) per gate (LSTM rows i, f, g, o)
    slopes: Optional[np.ndarray] = None  # (gates, units) each gate's activation derivative
    gates: Optional[np.ndarray] = None  # (gates, units) the forward gate values (LSTM i, f, g, o)
    dc_next: Optional[np.ndarray] = None  # LSTM (units,) ∂L/∂c_t from the next step
    dc: Optional[np.ndarray] = None     # LSTM (units,) ∂L/∂c_t in all
    c_prev: Optional[np.ndarray] = None  # LSTM (units,)
    c: Optional[np.ndarray] = None      # LSTM (units,)
    c_slope: Optional[np.ndarray] = None  # LSTM (units,) activation'(c): 1 − tanh(c)²
    c_act: Optional[np.ndarray] = None  # LSTM (units,) activation(c)
    dh_prev: np.ndarray = None          # (units,) ∂L/∂h_{t−1} passed on
    dc_prev: Optional[np.ndarray] = None  # LSTM (units,) dc·f passed on
    h_prev: Optional[np.ndarray] = None  # GRU (units,) the state before the step: δz = δh·(h_prev − h̃)·σ'
    h_in: Optional[np.ndarray] = None   # GRU with reset_after (units,): what r multiplies, h_prev·U_h + rb_h,
                                        # so δr = δh̃·h_in·σ' (None without reset_after)
    norm: float = 0.0                   # ‖dh‖
    masked: bool = False
    KIND: ClassVar[str] = "recurrent_gradient"

    @property
    def label(self) -> str:
        return f"{self.layer}:d{self.direction[0]}t{self.time}"


@dataclass(frozen=True, slots=True)
class Saliency(Event):
    """The input's gradient: how much each pixel would change the loss. `saliency = max over
    channels of |∂L/∂x|` (the layer is "input")."""

    gradient: np.ndarray = None         # (h, w, c) ∂L/∂x of the raw input
    saliency: np.ndarray = None         # (h, w)
    KIND: ClassVar[str] = "saliency"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.KIND: cls for cls in (LayerStart, LayerEnd, ConvPatch, PoolWindow, FlattenMap, DenseNeuron, SoftmaxStep,
                              EmbeddingLookup, RNNStep, LSTMStep, GRUStep, BidirectionalMerge, DropoutStep,
                              MergeStep, NormalizeStep, AttentionStep, ActivationStep, MaskingStep,
                              LossGradient, LayerGradient, DenseGradient, ConvKernelGradient, ConvInputGradient,
                              PoolRouting, RecurrentGradient, Saliency)
}


def event_fields(event: Event) -> dict:
    return {f.name: getattr(event, f.name) for f in fields(event)}
