"""TextVectorization (inference side) and Embedding: from raw strings to vectors."""
from __future__ import annotations

import re

import numpy as np

from nntrace.layers.base import Layer
from nntrace.layers.errors import InputShapeError

#: TextVectorization's punctuation class (Keras's `lower_and_strip_punctuation` regex).
PUNCTUATION = re.compile(r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
#: tf.strings.split() splits on ASCII whitespace only and drops empty pieces.
WHITESPACE = re.compile(r"[ \t\n\r\x0b\x0c]+")
#: tf.strings.lower() (default encoding) lowercases ASCII letters only.
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class TextVectorization(Layer):
    """Raw strings → token ids `(batch, output_sequence_length)`, exactly as Keras tokenises.

    Vocabulary index 0 is padding (`''`), 1 is `[UNK]` (out of vocabulary).
    Input: a list or array of `batch` strings (or shape `(batch, 1)`).
    Weights: vocabulary `(vocab_size,)` of strings, as returned by `get_vocabulary()`.
    """

    config_keys = ("standardize", "split", "output_mode", "output_sequence_length", "ngrams", "max_tokens")
    defaults = {"standardize": "lower_and_strip_punctuation", "split": "whitespace", "output_mode": "int",
                "output_sequence_length": None, "ngrams": None}
    STANDARDIZE = (None, "lower_and_strip_punctuation", "lower", "strip_punctuation")
    SPLIT = (None, "whitespace", "character")

    def check_config(self, config):
        if config.get("output_mode", "int") != "int":
            self.unsupported(f"output_mode '{config.get('output_mode')}' is not supported (int)")
        if config.get("ngrams") is not None:
            self.unsupported("ngrams are not supported")
        if config.get("standardize", "lower_and_strip_punctuation") not in self.STANDARDIZE:
            self.unsupported(f"standardize '{config.get('standardize')}' is not supported {self.STANDARDIZE}")
        if config.get("split", "whitespace") not in self.SPLIT:
            self.unsupported(f"split '{config.get('split')}' is not supported {self.SPLIT}")

    def weight_shapes(self):
        return {"vocabulary": (None,)}

    def built(self):
        vocab = [str(t) for t in self.weights["vocabulary"]]
        self.weights["vocabulary"] = np.array(vocab, dtype=np.str_)
        self.index = {tok: i for i, tok in enumerate(vocab)}
        self.oov_id = self.index.get("[UNK]", 1)

    @property
    def vocabulary(self) -> list[str]:
        return [str(t) for t in self.weights["vocabulary"]]

    def standardize(self, text: str) -> str:
        mode = self.config["standardize"]
        if mode in ("lower", "lower_and_strip_punctuation"):
            text = text.translate(ASCII_LOWER)
        if mode in ("strip_punctuation", "lower_and_strip_punctuation"):
            text = PUNCTUATION.sub("", text)
        return text

    def tokenize(self, text: str) -> list[str]:
        """One string → its tokens, before lookup and padding."""
        text = self.standardize(text)
        if self.config["split"] == "whitespace":
            return [t for t in WHITESPACE.split(text) if t]
        if self.config["split"] == "character":
            return list(text)
        return [text]

    def as_texts(self, x) -> list[str]:
        if isinstance(x, str):
            x = [x]
        arr = np.asarray(x, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or not all(isinstance(t, (str, bytes)) for t in arr):
            raise InputShapeError(self.name, "TextVectorization", "a list of strings (batch,) or (batch, 1)",
                                  f"{type(x).__name__} of shape {arr.shape}")
        return [t.decode("utf-8") if isinstance(t, bytes) else t for t in arr]

    def tokens(self, text: str) -> list[str]:
        """The token text behind each output position of one string ('' for padding)."""
        length = self.config.get("output_sequence_length")
        toks = self.tokenize(text)
        length = len(toks) if length is None else length
        return (toks + [""] * length)[:length]

    def call(self, x, mask, training):
        token_lists = [self.tokenize(t) for t in self.as_texts(x)]
        length = self.config.get("output_sequence_length")
        if length is None:
            length = max((len(t) for t in token_lists), default=0)
        ids = np.zeros((len(token_lists), length), np.int64)
        for row, tokens in enumerate(token_lists):
            tokens = tokens[:length]
            ids[row, :len(tokens)] = [self.index.get(t, self.oov_id) for t in tokens]
        return ids

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """Strings have no gradient and the vocabulary is not trained."""
        return None, {}


class Embedding(Layer):
    """Row lookup: ids `(batch, seq_len)` → vectors `(batch, seq_len, output_dim)`.

    Weights: embeddings `(input_dim, output_dim)`. With `mask_zero`, id 0 is padding and the mask
    `ids != 0` goes to the next layers.
    """

    config_keys = ("input_dim", "output_dim", "mask_zero")
    defaults = {"mask_zero": False}

    def weight_shapes(self):
        return {"embeddings": (self.config["input_dim"], self.config["output_dim"])}

    def call(self, x, mask, training):
        if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf" or x.ndim < 1:
            raise InputShapeError(self.name, "Embedding", "integer token ids of shape (batch, seq_len)",
                                  f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}")
        ids = x.astype(np.int64)
        if x.dtype.kind == "f" and not np.array_equal(ids, x):
            raise InputShapeError(self.name, "Embedding", "whole-number token ids", "non-integer values")
        n = self.config["input_dim"]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise InputShapeError(self.name, "Embedding", f"token ids in [0, {n})",
                                  f"ids from {ids.min()} to {ids.max()}")
        return self.weights["embeddings"][ids]

    def backward(self, dy, x, mask=None, y=None, cache=None):
        """Token ids have no gradient; the embeddings get dy `(batch, seq_len, output_dim)` scattered
        back to the rows that were read, a row read several times summing its gradients."""
        dy = np.asarray(dy, np.float32)
        d_embeddings = np.zeros(self.weights["embeddings"].shape, np.float32)
        np.add.at(d_embeddings, np.asarray(x).astype(np.int64).reshape(-1), dy.reshape(-1, dy.shape[-1]))
        return None, {"embeddings": d_embeddings}

    def squared_slices(self, dy, x) -> dict[str, np.ndarray]:
        """Per embeddings row, Σ over the positions that read it of dy's row squared (elementwise):
        TensorFlow hands an Embedding's gradient over as one slice per position read
        (`tf.IndexedSlices`), and Keras's Adam adds the slices' squares, not the square of their sum,
        to its second moment."""
        dy = np.asarray(dy, np.float32)
        squares = np.zeros(self.weights["embeddings"].shape, np.float32)
        np.add.at(squares, np.asarray(x).astype(np.int64).reshape(-1), np.square(dy.reshape(-1, dy.shape[-1])))
        return {"embeddings": squares}

    def steps(self, x, mask=None, context=None, positions=None):
        """One `EmbeddingLookup` per position of sample `x` `(1, seq_len)`.

        `context` may carry `tokens` (text per position) and `oov_id` from a TextVectorization.
        """
        from nntrace.tracer.events import EmbeddingLookup

        context = context or {}
        tokens, oov_id = context.get("tokens"), context.get("oov_id")
        ids = np.asarray(x).reshape(-1).astype(np.int64)
        for p in range(len(ids)) if positions is None else positions:
            tid = int(ids[p])
            yield EmbeddingLookup(self.name, position=p, token=tokens[p] if tokens and p < len(tokens) else None,
                                  token_id=tid, oov=oov_id is not None and tid == oov_id,
                                  padding=bool(self.config.get("mask_zero")) and tid == 0,
                                  vector=self.weights["embeddings"][tid])

    def compute_mask(self, x, mask):
        if not self.config.get("mask_zero", False):
            return None
        return np.asarray(x) != 0
