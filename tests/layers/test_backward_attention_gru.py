"""The backward pass of GRU, Attention, MultiHeadAttention, LayerNormalization and Masking against
tf.GradientTape: random masked GRU stacks (bidirectional, go_backwards, reset_after), random
transformer-ish models (padding, causal and explicit attention masks, self- and cross-attention,
residual Add + LayerNormalization), and one explicit case per setting. Per gradient:
max |g − g_tf| / max |g_tf| ≤ 1e-4; the loss to 1e-6 (see `tests.gradient_parity`)."""
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nntrace.layers import LAYER_CLASSES, Layer
from tests.gradient_parity import assert_gradient_parity
from tests.layers.test_backward_parity import padded_ids
from tests.layers.test_recurrent_parity import VOCAB, post_padded
from tests.parity import randomise_weights

L = keras.layers
#: GlobalAveragePooling1D's backward is written beside this one; pooled heads join once it exists.
POOL_BACKWARD = LAYER_CLASSES["GlobalAveragePooling1D"].backward is not Layer.backward


def randomise(model: keras.Model, seed: int) -> None:
    """Non-trivial weights everywhere: every bias (a GRU's `(2, 3u)` and attention's `(heads, dim)`
    too), scalar weights (Attention's scale) around 1, embeddings N(0, 1) so attention is sharp."""
    randomise_weights(model, seed)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        for v in layer.weights:
            if not v.trainable:
                continue
            if isinstance(layer, L.Embedding):
                v.assign(rng.normal(0, 1, v.shape).astype(np.float32))
            elif len(v.shape) == 0:
                v.assign(np.float32(rng.uniform(0.5, 1.5)))
            elif "bias" in v.name:
                v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))


def labels_for(model: keras.Model, rng: np.random.Generator, batch: int) -> np.ndarray:
    """Class ids for every output position (one per step for a sequence output)."""
    return rng.integers(0, model.output_shape[-1], (batch,) + tuple(model.output_shape[1:-1]))


def check(model: keras.Model, x, seed: int, null: tuple[str, ...] = ()):
    """Randomise the weights, then the loss and every gradient against TensorFlow's."""
    randomise(model, seed)
    rng = np.random.default_rng(seed + 2)
    batch = len(x[0] if isinstance(x, list) else x)
    return assert_gradient_parity(model, x, labels_for(model, rng, batch), null=null)


def padded_floats(rng: np.random.Generator, batch: int, steps: int, features: int, padding: str,
                  mask_value: float = 0.0) -> np.ndarray:
    """Float sequences whose padding steps (at the end, or anywhere) are all `mask_value`."""
    x = rng.normal(0, 1, (batch, steps, features)).astype(np.float32)
    keep = padded_ids(rng, batch, steps, padding) != 0
    x[~keep] = mask_value
    return x


def key_biases(model: keras.Model) -> tuple[str, ...]:
    """The variables whose gradient is zero in exact arithmetic: a MultiHeadAttention's key bias
    (it shifts all of a query's scores alike, which the softmax ignores) — unless Keras adds it
    per key step: key_dim 1 and as many key steps as heads (see `layers.attention.tf_bias_shape`)."""
    null = []
    for layer in model.layers:
        if not isinstance(layer, L.MultiHeadAttention) or not layer._use_bias:
            continue
        args = layer._inbound_nodes[0].arguments
        key = args.kwargs.get("key")
        key = key if key is not None else (args.args[2] if len(args.args) > 2 else args.args[1])
        if not (layer._key_dim == 1 and layer._num_heads > 1 and key.shape[1] == layer._num_heads):
            null += [v.path for v in layer.trainable_weights if v.path.endswith("key/bias")]
    return tuple(null)


# -- random GRU stacks ------------------------------------------------------------------------
@dataclass
class GRUStack:
    """A masked GRU stack as data (so hypothesis reports a failing example readably)."""

    seq_len: int
    features: int
    source: str                       # "ids": Embedding(mask_zero=True); "floats": Masking
    padding: str                      # "post" or "holes"
    head: str                         # the last Dense's activation
    layers: list = field(default_factory=list)  # (GRU kwargs, Bidirectional merge mode or None, dropout)

    def build(self) -> keras.Model:
        if self.source == "ids":
            inputs = keras.Input((self.seq_len,), dtype="int32")
            x = L.Embedding(VOCAB, self.features, mask_zero=True)(inputs)
        else:
            inputs = keras.Input((self.seq_len, self.features))
            x = L.Masking(mask_value=0.0)(inputs)
        for kwargs, merge_mode, dropout in self.layers:
            gru = L.GRU(**kwargs)
            x = (L.Bidirectional(gru, merge_mode=merge_mode) if merge_mode else gru)(x)
            if dropout:
                x = L.Dropout(0.3)(x)
        return keras.Model(inputs, L.Dense(3, activation=self.head)(x))

    def data(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        if self.source == "ids":
            return padded_ids(rng, batch, self.seq_len, self.padding)
        return padded_floats(rng, batch, self.seq_len, self.features, self.padding)


@st.composite
def gru_stacks(draw) -> GRUStack:
    stack = GRUStack(draw(st.integers(1, 7)), draw(st.integers(1, 4)), draw(st.sampled_from(["ids", "floats"])),
                     draw(st.sampled_from(["post", "holes"])), draw(st.sampled_from(["softmax", "linear"])))
    depth = draw(st.integers(1, 3))
    for i in range(depth):
        kwargs = {"units": draw(st.integers(1, 5)), "reset_after": draw(st.booleans()),
                  "return_sequences": i < depth - 1 or draw(st.booleans()), "use_bias": draw(st.booleans()),
                  "activation": draw(st.sampled_from(["tanh", "tanh", "relu"])),
                  "recurrent_activation": draw(st.sampled_from(["sigmoid", "hard_sigmoid"]))}
        merge_mode = draw(st.sampled_from([None, None, "concat", "sum", "mul", "ave"]))
        if merge_mode is None:
            kwargs["go_backwards"] = draw(st.booleans())
            kwargs["zero_output_for_mask"] = draw(st.booleans())
        stack.layers.append((kwargs, merge_mode, draw(st.booleans())))
    return stack


@given(gru_stacks(), st.integers(0, 2**16), st.integers(1, 4))
def test_random_masked_gru_stacks_gradients_match_tensorflow(stack, seed, batch):
    model = stack.build()
    check(model, stack.data(np.random.default_rng(seed), batch), seed)


# -- random transformer-ish models --------------------------------------------------------------
@dataclass
class AttentionStack:
    """Attention blocks with residual Add + LayerNormalization over (masked) sequences, as data.

    Blocks: ("mha", settings, causal) self-attention; ("cross", settings, causal) attention of the
    sequence over a second input's sequence (its own length and width); ("attention", settings,
    causal, projected) Keras's Attention over [query, sequence]; ("ffn", width) Dense(relu) + Dense.
    """

    seq_len: int
    dim: int
    source: str                      # "ids", "ids_unmasked" (no mask_zero) or "floats" (Masking)
    head: str                        # "sequence" (a class per step) or "pool"
    memory: tuple | None = None      # (length, width) of the cross-attention input
    blocks: list = field(default_factory=list)
    norms: list = field(default_factory=list)  # LayerNormalization kwargs after each block

    def build(self) -> keras.Model:
        if self.source == "floats":
            inputs = [keras.Input((self.seq_len, self.dim))]
            x = L.Masking()(inputs[0])
        else:
            inputs = [keras.Input((self.seq_len,), dtype="int32")]
            x = L.Embedding(VOCAB, self.dim, mask_zero=self.source == "ids")(inputs[0])
        memory = None
        if self.memory:
            inputs.append(keras.Input((self.memory[0],), dtype="int32"))
            memory = L.Embedding(VOCAB, self.memory[1], mask_zero=self.source != "ids_unmasked")(inputs[1])
        for block, norm in zip(self.blocks, self.norms):
            kind = block[0]
            if kind in ("mha", "cross"):
                value = x if kind == "mha" else memory
                out = L.MultiHeadAttention(**block[1])(x, value, use_causal_mask=block[2])
            elif kind == "attention":
                query = L.Dense(self.dim)(x) if block[3] else x
                out = L.Attention(**block[1])([query, x], use_causal_mask=block[2])
            else:
                out = L.Dense(self.dim)(L.Dense(block[1], activation="relu")(x))
            x = L.LayerNormalization(**norm)(L.Add()([x, out]))
        if self.head == "pool":
            x = L.GlobalAveragePooling1D()(x)
        return keras.Model(inputs if len(inputs) > 1 else inputs[0], L.Dense(3, activation="softmax")(x))

    def data(self, rng: np.random.Generator, batch: int):
        if self.source == "floats":
            x = padded_floats(rng, batch, self.seq_len, self.dim, "post")
        else:
            x = post_padded(rng, batch, self.seq_len)
        if not self.memory:
            return x
        return [x, post_padded(rng, batch, self.memory[0])]


@st.composite
def mha_settings(draw) -> dict:
    return {"num_heads": draw(st.integers(1, 3)), "key_dim": draw(st.integers(1, 4)),
            "value_dim": draw(st.sampled_from([None, 2, 5])), "use_bias": draw(st.booleans()),
            "dropout": draw(st.sampled_from([0.0, 0.0, 0.2])), "use_gate": draw(st.booleans())}


@st.composite
def attention_stacks(draw) -> AttentionStack:
    heads = ["sequence", "pool"] if POOL_BACKWARD else ["sequence"]
    # width ≥ 3: LayerNormalization over 2 values gives ±1 whatever the input, its gradient round-off
    stack = AttentionStack(draw(st.integers(1, 6)), draw(st.integers(3, 6)),
                           draw(st.sampled_from(["ids", "ids", "ids_unmasked", "floats"])),
                           draw(st.sampled_from(heads)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["mha", "mha", "cross", "attention", "ffn"]))
        if kind == "ffn":
            block = ("ffn", draw(st.integers(2, 8)))
        elif kind == "attention":
            block = ("attention", {"use_scale": draw(st.booleans()),
                                   "score_mode": draw(st.sampled_from(["dot", "concat"]))},
                     draw(st.booleans()), draw(st.booleans()))
        else:
            if kind == "cross" and stack.memory is None:
                stack.memory = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
            block = (kind, draw(mha_settings()), draw(st.booleans()))
        stack.blocks.append(block)
        stack.norms.append({"center": draw(st.booleans()), "scale": draw(st.booleans()),
                            "epsilon": draw(st.sampled_from([1e-3, 1e-6]))})
    return stack


@given(attention_stacks(), st.integers(0, 2**16), st.integers(1, 4))
def test_random_attention_stacks_gradients_match_tensorflow(stack, seed, batch):
    model = stack.build()
    check(model, stack.data(np.random.default_rng(seed), batch), seed, null=key_biases(model))


# -- GRU, setting by setting ------------------------------------------------------------------------
def gru_model(seq_len: int = 6, features: int = 4, **kwargs) -> keras.Model:
    """Embedding(mask_zero) → GRU(5, **kwargs) → Dense softmax (per step with return_sequences)."""
    inputs = keras.Input((seq_len,), dtype="int32")
    x = L.GRU(5, **kwargs)(L.Embedding(VOCAB, features, mask_zero=True)(inputs))
    return keras.Model(inputs, L.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_settings_on_post_padded_sequences(reset_after, go_backwards, return_sequences, use_bias):
    """Every combination on post-padded ids: the bias's recurrent row (reset_after), the reversed
    scan, a sequence output (a loss per valid step) and no bias at all."""
    model = gru_model(reset_after=reset_after, go_backwards=go_backwards, return_sequences=return_sequences,
                      use_bias=use_bias)
    check(model, post_padded(np.random.default_rng(1), 5, 6), 1)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("recurrent_activation", ["sigmoid", "hard_sigmoid"])
def test_gru_unmasked_float_input_gets_its_gradient(reset_after, recurrent_activation):
    """No mask, floats in: the input gradient is compared too."""
    model = keras.Sequential([keras.Input((5, 3)), L.GRU(4, reset_after=reset_after,
                                                          recurrent_activation=recurrent_activation,
                                                          return_sequences=True),
                              L.GRU(3, reset_after=not reset_after), L.Dense(3)])
    check(model, np.random.default_rng(2).normal(0, 1.5, (4, 5, 3)).astype(np.float32), 2)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_bidirectional_merge_modes_stacked(merge_mode, reset_after):
    """A return_sequences Bidirectional(GRU) under another, on sequences with holes."""
    inputs = keras.Input((7,), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    x = L.Bidirectional(L.GRU(5, return_sequences=True, reset_after=reset_after), merge_mode=merge_mode)(x)
    x = L.Bidirectional(L.GRU(3, reset_after=reset_after), merge_mode=merge_mode)(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(x))
    check(model, padded_ids(np.random.default_rng(3), 4, 7, "holes"), 3)


@pytest.mark.parametrize("return_sequences", [False, True])
def test_gru_bidirectional_merge_mode_none_into_a_merge(return_sequences):
    """merge_mode=None gives a pair; a Concatenate joins it and sends a pair of gradients back."""
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(VOCAB, 3, mask_zero=True)(inputs)
    forward, backward = L.Bidirectional(L.GRU(4, return_sequences=return_sequences), merge_mode=None)(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Concatenate()([forward, backward])))
    check(model, post_padded(np.random.default_rng(4), 4, 6), 4)


def test_gru_stack_with_go_backwards_between_layers():
    """A reversed GRU (outputs in processing order) feeding a forward GRU and a bidirectional one."""
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    x = L.GRU(4, go_backwards=True, return_sequences=True, reset_after=False)(x)
    x = L.GRU(4, return_sequences=True, zero_output_for_mask=True)(x)
    x = L.Bidirectional(L.GRU(3, return_sequences=True))(x)
    model = keras.Model(inputs, L.Dense(3)(x))
    check(model, post_padded(np.random.default_rng(5), 5, 6), 5)


# -- Attention ----------------------------------------------------------------------------------
@pytest.mark.parametrize("score_mode", ["dot", "concat"])
@pytest.mark.parametrize("use_scale", [False, True])
@pytest.mark.parametrize("use_causal_mask", [False, True])
def test_attention_self_with_padding_masks(score_mode, use_scale, use_causal_mask):
    """Attention([query, value]) over one masked sequence: scale and concat_score_weight, the
    value mask (and the causal mask) on the scores, the query mask zeroing outputs."""
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    a = L.Attention(score_mode=score_mode, use_scale=use_scale)([L.Dense(4)(x), x], use_causal_mask=use_causal_mask)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(a))
    check(model, post_padded(np.random.default_rng(6), 4, 6), 6)


@pytest.mark.parametrize("score_mode", ["dot", "concat"])
@pytest.mark.parametrize("with_key", [False, True])
def test_attention_cross_with_a_key_of_its_own(score_mode, with_key):
    """Query and value of different lengths and widths, each with its padding mask; the key (when
    given) comes from its own Dense, whose bias only a dot score ignores."""
    q_ids, v_ids = keras.Input((5,), dtype="int32"), keras.Input((3,), dtype="int32")
    q = L.Embedding(VOCAB, 4, mask_zero=True)(q_ids)
    v = L.Embedding(VOCAB, 6, mask_zero=True)(v_ids)
    args = [q, v, L.Dense(4, name="key_dense")(v)] if with_key else [L.Dense(6)(q), v]
    a = L.Attention(score_mode=score_mode, use_scale=True)(args)
    model = keras.Model([q_ids, v_ids], L.Dense(3, activation="softmax")(a))
    rng = np.random.default_rng(7)
    null = ("key_dense/bias",) if with_key and score_mode == "dot" else ()
    check(model, [post_padded(rng, 4, 5), post_padded(rng, 4, 3)], 7, null=null)


def test_attention_unmasked_floats():
    """No masks at all, floats in: the input gradient goes through query and value."""
    inputs = keras.Input((4, 3))
    a = L.Attention(use_scale=True)([inputs, L.Dense(3)(inputs)], use_causal_mask=True)
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(a)))
    check(model, np.random.default_rng(8).normal(0, 1, (3, 4, 3)).astype(np.float32), 8)


# -- MultiHeadAttention ---------------------------------------------------------------------------
def mha_self_model(use_causal_mask: bool = False, mask_zero: bool = True, **settings) -> keras.Model:
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(VOCAB, 5, mask_zero=mask_zero)(inputs)
    a = L.MultiHeadAttention(**settings)(x, x, use_causal_mask=use_causal_mask)
    return keras.Model(inputs, L.Dense(3, activation="softmax")(L.LayerNormalization()(L.Add()([x, a]))))


@pytest.mark.parametrize("num_heads, key_dim, value_dim", [(1, 1, None), (2, 3, None), (3, 2, 4), (4, 5, 1)])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("use_causal_mask", [False, True])
def test_mha_self_attention_with_padding(num_heads, key_dim, value_dim, use_bias, use_causal_mask):
    model = mha_self_model(use_causal_mask, num_heads=num_heads, key_dim=key_dim, value_dim=value_dim,
                           use_bias=use_bias)
    check(model, post_padded(np.random.default_rng(9), 4, 6), 9, null=key_biases(model))


@pytest.mark.parametrize("key_dim, value_dim", [(1, None), (2, 1), (1, 3)])
def test_mha_width_one_biases_over_as_many_steps_as_heads(key_dim, value_dim):
    """A `(heads, 1)` bias over a sequence of exactly `heads` steps: Keras's TensorFlow `ops.add`
    sends it through `tf.nn.bias_add` on axis 1, one value per step; forward and backward follow,
    and the key bias is then no longer ignored by the softmax."""
    inputs = keras.Input((3,), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    a = L.MultiHeadAttention(3, key_dim, value_dim=value_dim)(x, x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(a))
    check(model, post_padded(np.random.default_rng(19), 4, 3), 19, null=key_biases(model))


@pytest.mark.parametrize("use_causal_mask", [False, True])
def test_mha_without_padding_masks(use_causal_mask):
    """No Keras masks: with use_causal_mask alone Keras takes TensorFlow's is_causal kernel."""
    model = mha_self_model(use_causal_mask, mask_zero=False, num_heads=2, key_dim=3)
    check(model, post_padded(np.random.default_rng(10), 4, 6), 10, null=key_biases(model))


@pytest.mark.parametrize("settings", [{"dropout": 0.3}, {"use_gate": True}, {"output_shape": 7},
                                      {"use_gate": True, "dropout": 0.1, "value_dim": 2, "use_bias": False}])
def test_mha_dropout_gate_and_output_shape(settings):
    """dropout > 0 (Keras's own masked Softmax path, identity at inference), the sigmoid gate, an
    output width other than the query's."""
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(VOCAB, 5, mask_zero=True)(inputs)
    a = L.MultiHeadAttention(2, 3, **settings)(x, x, use_causal_mask=True)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(a))
    check(model, post_padded(np.random.default_rng(11), 4, 6), 11, null=key_biases(model))


@pytest.mark.parametrize("with_key", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_mha_cross_attention(with_key, use_bias):
    """Query (5 steps, width 4) over a value of 3 steps and width 6, each padded; a key from its
    own Dense (its bias is ignored by the softmax too) or the value itself."""
    q_ids, v_ids = keras.Input((5,), dtype="int32"), keras.Input((3,), dtype="int32")
    q = L.Embedding(VOCAB, 4, mask_zero=True)(q_ids)
    v = L.Embedding(VOCAB, 6, mask_zero=True)(v_ids)
    key = L.Dense(2, name="key_dense")(v) if with_key else None
    a = L.MultiHeadAttention(3, 2, value_dim=4, use_bias=use_bias)(q, v, key=key)
    model = keras.Model([q_ids, v_ids], L.Dense(3, activation="softmax")(a))
    rng = np.random.default_rng(12)
    null = key_biases(model) + (("key_dense/bias",) if with_key else ())
    check(model, [post_padded(rng, 4, 5), post_padded(rng, 4, 3)], 12, null=null)


@pytest.mark.parametrize("padding_masks", [False, True])
@pytest.mark.parametrize("use_causal_mask", [False, True])
def test_mha_explicit_attention_mask(padding_masks, use_causal_mask):
    """An `attention_mask` input `(batch, T, S)` ANDed with the padding and causal masks; some
    query rows allow no key at all (TensorFlow then reads every key equally)."""
    ids, allowed = keras.Input((5,), dtype="int32"), keras.Input((5, 5), dtype="int32")
    x = L.Embedding(VOCAB, 4, mask_zero=padding_masks)(ids)
    a = L.MultiHeadAttention(2, 3)(x, x, attention_mask=allowed, use_causal_mask=use_causal_mask)
    model = keras.Model([ids, allowed], L.Dense(3, activation="softmax")(L.Add()([x, a])))
    rng = np.random.default_rng(13)
    mask = (rng.random((4, 5, 5)) < 0.6).astype(np.int32)
    mask[0, 2] = 0  # a row with nothing allowed
    check(model, [post_padded(rng, 4, 5), mask], 13, null=key_biases(model))


# -- LayerNormalization ------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [-1, 1, [1, 2], [2, 3], [1, 2, 3], [3, 1]])
@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False), (False, False)])
def test_layer_normalization_axes_center_scale(axis, center, scale):
    """Normalised over any axes of a `(batch, 3, 2, 4)` input (γ and β shaped like those axes).
    The input comes straight in: a bias constant along the normalised axes would be removed with
    the mean, its gradient zero but for round-off."""
    model = keras.Sequential([keras.Input((3, 2, 4)),
                              L.LayerNormalization(axis=axis, center=center, scale=scale, epsilon=1e-4),
                              L.Flatten(), L.Dense(3, activation="softmax")])
    check(model, np.random.default_rng(14).normal(0, 2, (4, 3, 2, 4)).astype(np.float32), 14)


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_layer_normalization_rms_scaling(axis):
    """The deprecated rms_scaling: x / √(variance + ε) · γ, no β."""
    model = keras.Sequential([keras.Input((3, 4)), L.Dense(4), L.LayerNormalization(axis=axis, rms_scaling=True),
                              L.Flatten(), L.Dense(3)])
    check(model, np.random.default_rng(15).normal(0, 2, (4, 3, 4)).astype(np.float32), 15)


# -- Masking --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_value", [0.0, -1.0])
@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_masking_before_a_recurrent_layer(mask_value, cell):
    """Padding steps become 0 and get no gradient; the mask reaches the recurrent layer."""
    model = keras.Sequential([keras.Input((6, 3)), L.Masking(mask_value=mask_value),
                              getattr(L, cell)(4, return_sequences=True), L.Dense(3, activation="softmax")])
    x = padded_floats(np.random.default_rng(16), 4, 6, 3, "holes", mask_value)
    x[0, 1, 0] = mask_value  # one feature equal to mask_value does not mask the step
    g = check(model, x, 16)
    padding = np.all(x == mask_value, axis=-1)
    assert padding.any() and not g.inputs[padding].any()


@pytest.mark.filterwarnings("ignore:Layer 'flatten")  # Flatten drops the mask, as intended here
def test_masking_on_its_own():
    model = keras.Sequential([keras.Input((5, 2)), L.Masking(), L.Flatten(), L.Dense(3)])
    check(model, padded_floats(np.random.default_rng(17), 3, 5, 2, "holes"), 17)


# -- a tiny transformer ---------------------------------------------------------------------------
@pytest.mark.skipif(not POOL_BACKWARD, reason="GlobalAveragePooling1D has no backward pass yet")
def test_tiny_transformer_with_pooled_head():
    """The model kind of `tests.models.test_model_kinds`: MHA, residual Adds, LayerNormalization,
    a feed-forward block and a masked GlobalAveragePooling1D."""
    from tests.models.test_model_kinds import tiny_transformer

    model = tiny_transformer()
    check(model, post_padded(np.random.default_rng(18), 4, 8), 18, null=key_biases(model))
