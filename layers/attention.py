"""Attention (dot-product or additive, one head) and MultiHeadAttention, with Keras's masks.

Shapes: query `(batch, T, dim)`, value and key `(batch, S, dim)`; masks `(batch, T)` / `(batch, S)`
bools; an attention mask `(batch, T, S)` says which keys each query may read.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from nntrace.layers import activations, vector_ops
from nntrace.layers.base import Layer, as_float32
from nntrace.layers.errors import InputShapeError

#: What TensorFlow's dot_product_attention puts in place of a masked score (−0.7 × float32 max).
TF_LARGE_NEGATIVE = np.float32(-0.7 * 3.38953e38)
#: What Keras's Softmax layer and Attention layer use for a masked score.
KERAS_LARGE_NEGATIVE = np.float32(1e9)


def causal_mask(t: int, s: int) -> np.ndarray:
    """`(1, T, S)`: query i may read keys 0…i."""
    return (np.arange(t)[:, None] >= np.arange(s)[None, :])[None]


def softmax_last(x: np.ndarray) -> np.ndarray:
    """`activations.softmax` over the last axis, with one temporary array instead of three. The
    row maximum is `fmax.reduce` (the same value for numbers; NumPy's `max` over a short last axis
    is several times slower)."""
    e = x - np.fmax.reduce(x, axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= np.sum(e, axis=-1, keepdims=True)
    return e


def tf_bias_shape(y_shape: tuple, bias_shape: tuple) -> tuple:
    """The shape a bias takes when Keras's TensorFlow `ops.add(y, bias)` adds it to `y`.

    Normally its own (broadcast against y's last axes). But a bias with one dimension above 1, of
    size n, goes through `tf.nn.bias_add`: along y's last axis when that has n entries, else along
    axis 1 when that has n. So a MultiHeadAttention projection bias `(heads, 1)` (key_dim or
    value_dim 1) over a sequence of exactly `heads` steps is added per step, not per head.
    """
    big = [d for d in bias_shape if d > 1]
    if len(big) == 1 and len(y_shape) > 1 and big[0] in (y_shape[1], y_shape[-1]):
        return (big[0],) if y_shape[-1] == big[0] else (1, big[0]) + (1,) * (len(y_shape) - 2)
    return tuple(bias_shape)


class AttentionLayer(Layer):
    """What both attention layers share: the output of `parts`, and the query's mask passed on."""

    def parts(self, x, mask, use_causal_mask: bool) -> dict:
        raise NotImplementedError

    def call(self, x, mask, training, use_causal_mask=False):
        return self.parts(x, mask, bool(use_causal_mask))["output"]

    def forward_with_cache(self, x, mask=None, use_causal_mask=False):
        """The output, and every stage of `parts` for `backward`."""
        if self.weight_shapes() and not self.weights:
            return self.forward(x, mask), None  # says the weights are missing
        p = self.parts(x, mask, bool(use_causal_mask))
        return p["output"], p

    def compute_mask(self, x, mask):
        if mask is None or mask[0] is None:
            return None
        return np.asarray(mask[0], bool)


class Attention(AttentionLayer):
    """Keras's `Attention`: each query reads the values through a softmax of its scores with the keys.

    Inputs: `[query (batch, T, dim), value (batch, S, dim)]` or `[query, value, key]` (the key is
    the value when not given). Scores: `dot` — query·key (times the `scale` weight with
    `use_scale`); `concat` — `concat_score_weight · Σ tanh(scale·(query + key))`. A masked value
    (or, with `use_causal_mask`, a later key) has 1e9 subtracted from its score; a masked query's
    output is 0. The output mask is the query's.

    Weights: scale `()` (with `use_scale`), concat_score_weight `()` (with `score_mode='concat'`).
    """

    config_keys = ("use_scale", "score_mode", "dropout")
    defaults = {"use_scale": False, "score_mode": "dot", "dropout": 0.0}
    supports_masking = True
    call_options = ("use_causal_mask",)

    def check_config(self, config):
        super().check_config(config)
        if config.get("score_mode", "dot") not in ("dot", "concat"):
            self.unsupported(f"score_mode '{config.get('score_mode')}' is not supported (dot, concat)")

    def weight_shapes(self):
        shapes = {}
        if self.config.get("use_scale", False):
            shapes["scale"] = ()
        if self.config.get("score_mode", "dot") == "concat":
            shapes["concat_score_weight"] = ()
        return shapes

    def unpack(self, x, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, Any]:
        """(query, value, key, query mask, value mask), checked."""
        if not isinstance(x, (tuple, list)) or len(x) not in (2, 3):
            raise InputShapeError(self.name, "Attention", "[query, value] or [query, value, key]",
                                  type(x).__name__ if not isinstance(x, (tuple, list)) else f"{len(x)} inputs")
        q, v = as_float32(x[0]), as_float32(x[1])
        k = as_float32(x[2]) if len(x) > 2 else v
        if q.ndim != 3 or v.ndim != 3 or k.shape[:2] != v.shape[:2] or q.shape[-1] != k.shape[-1] \
                or q.shape[0] != v.shape[0]:
            raise InputShapeError(self.name, "Attention", "query (batch, T, dim), value and key (batch, S, dim)",
                                  f"shapes {q.shape}, {v.shape}, {k.shape}")
        masks = list(mask) if mask is not None else []
        q_mask = masks[0] if len(masks) > 0 else None
        v_mask = masks[1] if len(masks) > 1 else None
        return q, v, k, q_mask, v_mask

    def parts(self, x, mask, use_causal_mask: bool = False) -> dict[str, Any]:
        """Every stage for the batch: scores `(batch, T, S)` before and after scaling, the allowed
        keys, the softmax input and weights, the output `(batch, T, dim_v)`."""
        q, v, k, q_mask, v_mask = self.unpack(x, mask)
        scale = self.weights.get("scale")
        if self.config.get("score_mode", "dot") == "dot":
            scores = q @ np.swapaxes(k, -2, -1)
            factor, inner = (1.0, 1.0) if scale is None else (float(scale), 1.0)
            scaled = scores if scale is None else scores * scale
        else:
            factor, inner = float(self.weights["concat_score_weight"]), 1.0 if scale is None else float(scale)
            summed = q[:, :, None, :] + k[:, None, :, :]
            scores = np.tanh(summed if scale is None else scale * summed).sum(-1, dtype=np.float32)
            scaled = self.weights["concat_score_weight"] * scores
        allowed = None
        if v_mask is not None:
            allowed = np.asarray(v_mask, bool)[:, None, :]
        if use_causal_mask:
            causal = causal_mask(q.shape[1], k.shape[1])
            allowed = causal if allowed is None else allowed & causal
        logits = scaled if allowed is None else np.where(allowed, scaled, scaled - KERAS_LARGE_NEGATIVE)
        weights = softmax_last(logits)
        out = weights @ v
        if q_mask is not None:
            out = np.where(np.asarray(q_mask, bool)[:, :, None], out, np.float32(0))
        return {"q": q, "k": k, "v": v, "scores": scores, "factor": factor, "inner": inner, "scaled": scaled,
                "allowed": None if allowed is None else np.broadcast_to(allowed, scores.shape),
                "logits": logits, "weights": weights, "output": out, "q_mask": q_mask}

    def backward(self, dy, x, mask=None, y=None, cache=None, use_causal_mask=False):
        """dL/d[query, value(, key)] — `(batch, T, dim)`, `(batch, S, dim_v)`, `(batch, S, dim)`;
        without a key its gradient joins the value's — and {scale, concat_score_weight} for dy
        `(batch, T, dim_v)`. A masked query's output is 0, so it sends nothing back; a masked
        key's score had a constant subtracted, so its gradient is the softmax's (≈ 0)."""
        p = self.parts(x, mask, bool(use_causal_mask)) if cache is None else cache
        q, k, v, w = p["q"], p["k"], p["v"], p["weights"]
        d_out = as_float32(dy)
        if p["q_mask"] is not None:
            d_out = np.where(np.asarray(p["q_mask"], bool)[:, :, None], d_out, np.float32(0))
        d_weights = d_out @ np.swapaxes(v, -2, -1)                      # (batch, T, S)
        dv = np.swapaxes(w, -2, -1) @ d_out                             # (batch, S, dim_v)
        d_scaled = activations.softmax_grad(d_weights, None, w)         # = dL/d(scores after scaling)
        grads: dict[str, np.ndarray] = {}
        scale = self.weights.get("scale")
        if self.config.get("score_mode", "dot") == "dot":
            d_scores = d_scaled
            if scale is not None:
                grads["scale"] = np.float32(np.sum(d_scaled * p["scores"], dtype=np.float32)).reshape(())
                d_scores = d_scaled * scale
            dq = d_scores @ k
            dk = np.swapaxes(d_scores, -2, -1) @ q
        else:  # scaled = w_c · Σ_d tanh(scale · (q + k))
            weight = self.weights["concat_score_weight"]
            grads["concat_score_weight"] = np.float32(np.sum(d_scaled * p["scores"], dtype=np.float32)).reshape(())
            summed = q[:, :, None, :] + k[:, None, :, :]                # (batch, T, S, dim)
            th = np.tanh(summed if scale is None else scale * summed)
            d_inner = (d_scaled * weight)[..., None] * (1 - th * th)   # dL/d(the tanh's input)
            if scale is not None:
                grads["scale"] = np.float32(np.sum(d_inner * summed, dtype=np.float32)).reshape(())
                d_inner = d_inner * scale
            dq = d_inner.sum(axis=2, dtype=np.float32)
            dk = d_inner.sum(axis=1, dtype=np.float32)
        if len(x) > 2:
            return (dq, dv, dk), grads
        return (dq, dv + dk), grads

    def steps(self, x, mask=None, context=None, queries=None, use_causal_mask=False):
        """One `AttentionStep` per query position of the sample (head 0)."""
        from nntrace.tracer.events import AttentionStep

        p = self.parts(x, mask, bool(use_causal_mask))
        for t in range(p["q"].shape[1]) if queries is None else queries:
            yield AttentionStep(self.name, head=0, query=t, q=p["q"][0, t], keys=p["k"][0], scores=p["scores"][0, t],
                                scale=p["factor"], scaled=p["scaled"][0, t],
                                mask=None if p["allowed"] is None else p["allowed"][0, t].copy(),
                                logits=p["logits"][0, t], weights=p["weights"][0, t], values=p["v"][0],
                                **softmax_parts(p["logits"][0, t], None if p["allowed"] is None else p["allowed"][0, t]),
                                output=p["output"][0, t], score_mode=self.config.get("score_mode", "dot"),
                                inner_scale=p["inner"],
                                query_masked=p["q_mask"] is not None and not bool(np.asarray(p["q_mask"])[0, t]))


def softmax_parts(logits: np.ndarray, allowed: np.ndarray | None) -> dict:
    """One query's softmax written out: `exps` `(S,)` = exp(logit − the largest logit it reads) on
    the keys it reads (0 on the others) and their sum `total`, so that weights = exps / total."""
    read = np.ones(logits.shape, bool) if allowed is None else np.asarray(allowed, bool)
    if not read.any():  # a query with nothing to read: the softmax runs over every (equally masked) key
        read = np.ones(logits.shape, bool)
    exps = np.where(read, np.exp(logits - logits[read].max()), np.float32(0)).astype(np.float32)
    return {"exps": exps, "total": float(exps.sum(dtype=np.float32))}


class MultiHeadAttention(AttentionLayer):
    """Keras's `MultiHeadAttention` over one sequence axis: per head, `query·W_q` against `key·W_k`
    (scores scaled by 1/√key_dim), a softmax over the allowed keys, the weighted sum of `value·W_v`;
    the heads' outputs (times a sigmoid gate with `use_gate`) go through the output projection.

    Inputs (`input_names`): query `(batch, T, dim_q)`, value `(batch, S, dim_v)`, key (default the
    value), attention_mask `(batch, T, S)`. The allowed keys are the AND of the attention mask, the
    query's mask, the value's and key's masks, the causal mask (`use_causal_mask`) and the sliding
    window. Keras computes it through TensorFlow's dot_product_attention (a fully masked query row
    reads every key equally) unless `dropout` > 0, when its Softmax layer gives such a row zero
    weights. The output mask is the query's.

    Weights: query_kernel `(dim_q, heads, key_dim)`, query_bias `(heads, key_dim)`, key_kernel,
    key_bias, [gate_kernel `(dim_q, heads, value_dim)`, gate_bias], value_kernel `(dim_v, heads,
    value_dim)`, value_bias, output_kernel `(heads, value_dim, *output_shape)`, output_bias
    `(*output_shape)` — biases only with `use_bias`.
    """

    config_keys = ("num_heads", "key_dim", "value_dim", "dropout", "use_bias", "output_shape", "attention_axes",
                   "use_gate", "sliding_window")
    defaults = {"value_dim": None, "dropout": 0.0, "use_bias": True, "output_shape": None, "attention_axes": None,
                "use_gate": False, "sliding_window": None}
    supports_masking = True
    input_names = ("query", "value", "key", "attention_mask")
    call_options = ("use_causal_mask",)
    #: Keras's call removes the masks of the query, value and key tensors it was given.
    clears_input_masks = ("query", "value", "key")

    def check_config(self, config):
        super().check_config(config)
        axes = config.get("attention_axes")
        if axes is not None and list(axes if isinstance(axes, (list, tuple)) else [axes]) not in ([1], [-2]):
            self.unsupported(f"attention_axes {axes} is not supported (attention over the sequence axis, 1)")

    def check_build_shapes(self, shapes):
        for name, shape in shapes.items():
            if name in ("query_shape", "value_shape", "key_shape") and len(shape) != 3:
                self.unsupported(f"its {name.removesuffix('_shape')} has shape {tuple(shape)}; only "
                                 "(batch, sequence, features) inputs are supported")

    @property
    def heads(self) -> int:
        return int(self.config["num_heads"])

    @property
    def key_dim(self) -> int:
        return int(self.config["key_dim"])

    @property
    def value_dim(self) -> int:
        return int(self.config.get("value_dim") or self.config["key_dim"])

    def weight_shapes(self):
        n, kd, vd, bias = self.heads, self.key_dim, self.value_dim, self.config.get("use_bias", True)
        out = self.config.get("output_shape")
        out = None if out is None else ((int(out),) if isinstance(out, int) else tuple(int(o) for o in out))
        shapes = {}
        for name, width in (("query", kd), ("key", kd)) + ((("gate", vd),) if self.config.get("use_gate") else ()) \
                + (("value", vd),):
            shapes[f"{name}_kernel"] = (None, n, width)
            if bias:
                shapes[f"{name}_bias"] = (n, width)
        shapes["output_kernel"] = (n, vd) + (out or (None,))
        if bias:
            shapes["output_bias"] = out or (None,)
        return shapes

    def project(self, x: np.ndarray, name: str) -> np.ndarray:
        """`(batch, L, dim)` → `(batch, L, heads, width)`."""
        kernel = self.weights[f"{name}_kernel"]
        # one matrix product over every (sample, position): NumPy runs `(b, L, d) @ (d, n)` as b products
        y = (x.reshape(-1, x.shape[-1]) @ kernel.reshape(kernel.shape[0], -1)).reshape(x.shape[:2] + kernel.shape[1:])
        if f"{name}_bias" in self.weights:
            bias = self.weights[f"{name}_bias"]
            y += bias.reshape(tf_bias_shape(y.shape, bias.shape))
        return y

    def unpack(self, x) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        if not isinstance(x, (tuple, list)) or len(x) < 2 or x[0] is None or x[1] is None:
            raise InputShapeError(self.name, "MultiHeadAttention", "query and value (and key, attention_mask)",
                                  type(x).__name__)
        q, v = as_float32(x[0]), as_float32(x[1])
        k = as_float32(x[2]) if len(x) > 2 and x[2] is not None else v
        given = x[3] if len(x) > 3 else None
        dq, dk, dv = (self.weights[f"{n}_kernel"].shape[0] for n in ("query", "key", "value"))
        if q.ndim != 3 or v.ndim != 3 or k.ndim != 3 or q.shape[-1] != dq or k.shape[-1] != dk \
                or v.shape[-1] != dv or k.shape[:2] != v.shape[:2] or q.shape[0] != v.shape[0]:
            raise InputShapeError(self.name, "MultiHeadAttention",
                                  f"query (batch, T, {dq}), value (batch, S, {dv}), key (batch, S, {dk})",
                                  f"shapes {q.shape}, {v.shape}, {k.shape}")
        return q, v, k, given

    def allowed(self, x, mask, use_causal_mask: bool) -> np.ndarray | None:
        """The keys each query may read, `(batch or 1, T, S)`, or None when every one."""
        q, v, k, given = self.unpack(x)
        masks = list(mask) if mask is not None else []
        masks += [None] * (3 - len(masks))
        t, s = q.shape[1], v.shape[1]
        parts = []
        if masks[0] is not None:
            parts.append(np.asarray(masks[0], bool)[:, :, None])
        for m in masks[1:3]:
            if m is not None:
                parts.append(np.asarray(m, bool)[:, None, :])
        if use_causal_mask:
            parts.append(causal_mask(t, s))
        window = self.config.get("sliding_window")
        if window is not None:
            parts.append((np.abs(np.arange(t)[:, None] - np.arange(s)[None, :]) < int(window))[None])
        if given is not None:
            parts.insert(0, np.asarray(given).astype(bool))
        if not parts:
            return None
        out = parts[0]
        for p in parts[1:]:
            out = out & p
        return out

    def attend(self, qp: np.ndarray, kp: np.ndarray, vp: np.ndarray, allowed: np.ndarray | None, scale: np.float32,
               keep: bool = True) -> tuple:
        """Projections `(batch, L, heads, width)` → (scores, scaled, logits, weights `(batch, heads, T,
        S)`, each head's output `(batch, T, heads, value_dim)`), a few samples at a time so that the
        chain stays in the cache. Without `keep` (the forward pass) only the heads' outputs are made
        and the four others are None.

        `scaled = scores·scale`; the logits are `scaled` where a key is allowed and, elsewhere,
        TensorFlow's large negative (dot_product_attention) or, with `dropout` > 0, Keras's Softmax
        layer's `−1e9` (whose masked weights are then 0); `weights = softmax(logits)`."""
        b, t, n, _ = qp.shape
        shape = (b, n, t, kp.shape[1])
        kept = [np.empty(shape, np.float32) for _ in range(4)] if keep else None
        heads = np.empty((b, n, t, vp.shape[-1]), np.float32)
        qt, kt, vt = qp.transpose(0, 2, 1, 3), kp.transpose(0, 2, 3, 1), vp.transpose(0, 2, 1, 3)
        keras_softmax = float(self.config.get("dropout", 0.0)) > 0
        fill = -KERAS_LARGE_NEGATIVE if keras_softmax else TF_LARGE_NEGATIVE
        chunk = max(1, (1 << 18) // max(1, n * t * shape[-1]))  # about 1 MB of scores per chunk
        for i in range(0, b, chunk):
            part = slice(i, i + chunk)
            scores = np.matmul(qt[part], kt[part], out=kept[0][part] if keep else None)
            scaled = np.multiply(scores, scale, out=kept[1][part] if keep else scores)
            logits = kept[2][part] if keep else scaled
            if keep:
                np.copyto(logits, scaled)
            blocked = None
            if allowed is not None:
                blocked = ~(allowed if allowed.shape[0] == 1 else allowed[part])[:, None]
                np.copyto(logits, fill, where=blocked)
            weights = kept[3][part] if keep else logits  # softmax_last, in place
            np.subtract(logits, np.fmax.reduce(logits, axis=-1, keepdims=True), out=weights)
            np.exp(weights, out=weights)
            weights /= np.sum(weights, axis=-1, keepdims=True)
            if keras_softmax and blocked is not None:
                np.copyto(weights, np.float32(0), where=blocked)
            np.matmul(weights, vt[part], out=heads[part])
        return (*(kept or [None] * 4), heads.transpose(0, 2, 1, 3))

    def call(self, x, mask, training, use_causal_mask=False):
        return self.parts(x, mask, bool(use_causal_mask), keep=False)["output"]

    def parts(self, x, mask, use_causal_mask: bool = False, keep: bool = True) -> dict[str, Any]:
        """Every stage for the batch, heads on axis 1: projections, scores `(batch, heads, T, S)`
        before and after scaling, the softmax input and weights, each head's output, the output.
        Without `keep` (the forward pass) scores, scaled, logits and weights are None."""
        q, v, k, _ = self.unpack(x)
        allowed = self.allowed(x, mask, use_causal_mask)
        qp, kp, vp = self.project(q, "query"), self.project(k, "key"), self.project(v, "value")
        scale = np.float32(1.0 / np.sqrt(float(self.key_dim)))
        scores, scaled, logits, weights, heads = self.attend(qp, kp, vp, allowed, scale, keep)
        full = None if allowed is None or not keep else np.broadcast_to(allowed[:, None], scores.shape)
        gated, gate = heads, None
        if "gate_kernel" in self.weights:
            gate = activations.sigmoid(self.project(q, "gate"))
            gated = heads * gate
        kernel = self.weights["output_kernel"]
        out = gated.reshape(-1, self.heads * self.value_dim) @ kernel.reshape(self.heads * self.value_dim, -1)
        out = out.reshape(q.shape[:2] + kernel.shape[2:])
        if "output_bias" in self.weights:
            out += self.weights["output_bias"]
        return {"q": qp, "k": kp, "v": vp, "scores": scores, "scale": float(scale), "scaled": scaled, "allowed": full,
                "logits": logits, "weights": weights, "heads": heads, "gate": gate, "gated": gated, "output": out}

    def project_backward(self, d: np.ndarray, x: np.ndarray, name: str, grads: dict) -> np.ndarray:
        """Back through `project`: dL/d(projection) `d` `(batch, L, heads, width)` → dL/dx
        `(batch, L, dim)`; the kernel's and bias's gradients go into `grads`."""
        kernel = self.weights[f"{name}_kernel"]
        flat_kernel = kernel.reshape(kernel.shape[0], -1)
        d2 = d.reshape(-1, flat_kernel.shape[1])
        grads[f"{name}_kernel"] = (x.reshape(-1, kernel.shape[0]).T @ d2).reshape(kernel.shape)
        if f"{name}_bias" in self.weights:
            bias_shape = self.weights[f"{name}_bias"].shape
            along = tf_bias_shape(d.shape, bias_shape)
            if along == tuple(bias_shape):
                grads[f"{name}_bias"] = vector_ops.channel_sums(d2).reshape(bias_shape)
            else:  # Keras added it along another axis (see `tf_bias_shape`)
                full = (1,) * (d.ndim - len(along)) + along
                summed = d.sum(axis=tuple(a for a, n in enumerate(full) if n == 1), dtype=np.float32)
                grads[f"{name}_bias"] = summed.reshape(bias_shape)
        return (d2 @ flat_kernel.T).reshape(x.shape[:2] + (kernel.shape[0],))

    def backward(self, dy, x, mask=None, y=None, cache=None, use_causal_mask=False):
        """dL/d(query, value, key, attention_mask) — `(batch, T, dim_q)`, `(batch, S, dim_v)`,
        `(batch, S, dim_k)`, None (the mask is not differentiable; without a key its gradient joins
        the value's) — and every kernel's and bias's gradient, for dy `(batch, T, *output_shape)`.

        Per head `h`: out = Σ_h (weights_h · v_h)·W_o[h] + b_o, weights = softmax(scale·q_h·k_hᵀ)
        over the allowed keys; a disallowed score was replaced by a constant, so it gets nothing.
        """
        q, v, k, _ = self.unpack(x)
        p = self.parts(x, mask, bool(use_causal_mask)) if cache is None else cache
        qp, kp, vp, w, heads = p["q"], p["k"], p["v"], p["weights"], p["heads"]
        batch, t = q.shape[:2]
        grads: dict[str, np.ndarray] = {}
        kernel = self.weights["output_kernel"]
        flat_kernel = kernel.reshape(self.heads * self.value_dim, -1)
        d_out = as_float32(dy).reshape(batch * t, -1)
        grads["output_kernel"] = (p["gated"].reshape(batch * t, -1).T @ d_out).reshape(kernel.shape)
        if "output_bias" in self.weights:
            grads["output_bias"] = vector_ops.channel_sums(d_out).reshape(kernel.shape[2:])
        d_heads = (d_out @ flat_kernel.T).reshape(heads.shape)          # (batch, T, heads, value_dim)
        d_gate = None
        if p["gate"] is not None:
            d_gate = d_heads * heads * p["gate"] * (1 - p["gate"])       # through the gate's sigmoid
            d_heads = d_heads * p["gate"]
        d_heads_n = d_heads.transpose(0, 2, 1, 3)                       # (batch, heads, T, value_dim)
        v_n, k_n, q_n = (a.transpose(0, 2, 1, 3) for a in (vp, kp, qp))
        d_weights = d_heads_n @ np.swapaxes(v_n, -2, -1)                # (batch, heads, T, S)
        dvp = (np.swapaxes(w, -2, -1) @ d_heads_n).transpose(0, 2, 1, 3)
        d_scaled = activations.softmax_grad(d_weights, None, w)
        if p["allowed"] is not None:
            d_scaled = np.where(p["allowed"], d_scaled, np.float32(0))
        d_scores = d_scaled * np.float32(p["scale"])
        dqp = (d_scores @ k_n).transpose(0, 2, 1, 3)
        dkp = (np.swapaxes(d_scores, -2, -1) @ q_n).transpose(0, 2, 1, 3)
        dq = self.project_backward(dqp, q, "query", grads)
        dk = self.project_backward(dkp, k, "key", grads)
        dv = self.project_backward(dvp, v, "value", grads)
        if d_gate is not None:
            dq = dq + self.project_backward(d_gate, q, "gate", grads)
        if len(x) > 2 and x[2] is not None:
            return (dq, dv, dk, None), grads
        return (dq, dv + dk, None, None), grads

    def steps(self, x, mask=None, context=None, heads=None, queries=None,
              use_causal_mask=False) -> Iterator[Any]:
        """One `AttentionStep` per (head, query position) of the sample, head-major; `heads` and
        `queries` keep those indices. Each step's output is its head's, before the output projection."""
        from nntrace.tracer.events import AttentionStep

        p = self.parts(x, mask, bool(use_causal_mask))
        for n in range(self.heads) if heads is None else heads:
            for t in range(p["q"].shape[1]) if queries is None else queries:
                yield AttentionStep(self.name, head=n, query=t, q=p["q"][0, t, n], keys=p["k"][0, :, n],
                                    scores=p["scores"][0, n, t], scale=p["scale"], scaled=p["scaled"][0, n, t],
                                    mask=None if p["allowed"] is None else p["allowed"][0, n, t].copy(),
                                    logits=p["logits"][0, n, t], weights=p["weights"][0, n, t],
                                    **softmax_parts(p["logits"][0, n, t],
                                                    None if p["allowed"] is None else p["allowed"][0, n, t]),
                                    values=p["v"][0, :, n], output=p["heads"][0, t, n])
