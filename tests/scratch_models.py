"""Deterministic scratch models built from NumPy weights alone (no Keras), for app snapshots."""
import numpy as np

from nntrace.layers import (LSTM, Bidirectional, Conv2D, Dense, Embedding, Flatten, MaxPooling2D, Rescaling,
                    TextVectorization)
from nntrace.models import CNNFromScratch, LSTMFromScratch


def tiny_cnn() -> CNNFromScratch:
    rng = np.random.default_rng(42)
    conv = Conv2D("conv2d_1", filters=4, kernel_size=3, padding="same", activation="relu")
    conv.set_weights([rng.normal(0, 0.3, (3, 3, 3, 4)), rng.normal(0, 0.1, 4)])
    dense = Dense("predictions", units=3, activation="softmax")
    dense.set_weights([rng.normal(0, 0.3, (64, 3)), np.zeros(3)])
    layers = [Rescaling("rescaling", scale=1 / 255.0), conv, MaxPooling2D("max_pool_1", pool_size=2),
              Flatten("flatten"), dense]
    return CNNFromScratch(layers, "tiny_cnn", {"shape": [None, 8, 8, 3], "dtype": "float32"},
                          {"labels": ["cat", "dog", "ship"]})


def tiny_lstm() -> LSTMFromScratch:
    rng = np.random.default_rng(7)
    vec = TextVectorization("text_vectorization", output_sequence_length=6)
    vec.set_weights([np.array(["", "[UNK]", "enak", "tidak", "sekali", "murah"])])
    emb = Embedding("embedding", input_dim=6, output_dim=4, mask_zero=True)
    emb.set_weights([rng.normal(0, 0.5, (6, 4))])
    spec = {"class_name": "LSTM", "config": {"name": "lstm_1", "units": 3}}
    bi = Bidirectional.from_config({"name": "bidirectional_1", "layer": spec})
    bi.set_weights([rng.normal(0, 0.5, s) for s in [(4, 12), (3, 12), (12,)] * 2])
    dense = Dense("predictions", units=3, activation="softmax")
    dense.set_weights([rng.normal(0, 0.5, (6, 3)), np.zeros(3)])
    return LSTMFromScratch([vec, emb, bi, dense], "tiny_lstm", {"shape": [None, 1], "dtype": "string"},
                           {"labels": ["negative", "neutral", "positive"]})
