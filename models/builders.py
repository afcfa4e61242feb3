"""Keras architectures of the reference models and the experiment variants."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class CNNSettings:
    """A CIFAR-10 CNN: blocks of two 'same' convolutions, each block followed by pooling."""

    conv_layers: int = 6
    filters: tuple[int, ...] = (32, 64, 128)  # one entry per block of two conv layers
    kernel_size: int = 3
    pooling: str = "max"  # max | average
    batch_norm: bool = True
    dense_units: int = 128
    dropout: float = 0.3
    augment: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TextSettings:
    """A NusaX sentiment model: TextVectorization → Embedding → (Bi)RNN stack → Dropout → Dense."""

    cell: str = "lstm"  # lstm | simple_rnn | gru (AttentionSettings: attention)
    rnn_layers: int = 1
    units: int = 64
    bidirectional: bool = True
    embedding_dim: int = 64
    max_tokens: int = 5000
    sequence_length: int = 64
    dropout: float = 0.5
    learning_rate: float = 2e-3
    embedding_dropout: float = 0.0  # SpatialDropout1D after the embedding (identity at inference)
    #: random | lsa (word vectors from an SVD of the training texts) | lsa_subword (the same SVD with
    #: each word's character 3–5-grams as extra columns, so words sharing a stem or affix start close)
    embedding_init: str = "random"
    split: str = "whitespace"  # whitespace (word tokens) | character
    train_embedding: bool = True  # False keeps the initial (e.g. SVD) word vectors fixed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttentionSettings(TextSettings):
    """A tiny transformer classifier: TextVectorization → Embedding → MultiHeadAttention (the padding
    mask from the embedding) + residual Add → LayerNormalization → masked average → Dropout → Dense.
    With `pre_norm` the LayerNormalization comes before the attention instead (its input and the
    residual are the normalised embeddings), so the scores are not shrunk by small word vectors."""

    cell: str = "attention"
    heads: int = 2
    units: int = 16  # key_dim of each head
    pre_norm: bool = False


def build_cnn(s: CNNSettings, num_classes: int = 10, seed: int = 0):
    """Raw 0–255 RGB `(n, 32, 32, 3)` in (a Rescaling layer inside), class probabilities out."""
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(seed)
    per_block = [2] * (s.conv_layers // 2) + ([1] if s.conv_layers % 2 else [])
    model = [keras.Input((32, 32, 3), name="image"), L.Rescaling(1 / 255.0, name="rescaling")]
    pool = L.MaxPooling2D if s.pooling == "max" else L.AveragePooling2D
    n = 0
    for b, count in enumerate(per_block):
        filters = s.filters[min(b, len(s.filters) - 1)]
        for _ in range(count):
            n += 1
            if s.batch_norm:
                model += [L.Conv2D(filters, s.kernel_size, padding="same", use_bias=False, name=f"conv2d_{n}"),
                          L.BatchNormalization(name=f"batch_norm_{n}"), L.Activation("relu", name=f"relu_{n}")]
            else:
                model.append(L.Conv2D(filters, s.kernel_size, padding="same", activation="relu", name=f"conv2d_{n}"))
        model.append(pool(2, name=f"{s.pooling}_pool_{b + 1}"))
    model += [L.Flatten(name="flatten"), L.Dropout(s.dropout, name="dropout_1"),
              L.Dense(s.dense_units, activation="relu", name="dense_1"), L.Dropout(s.dropout, name="dropout_2"),
              L.Dense(num_classes, activation="softmax", name="predictions")]
    return keras.Sequential(model, name="cifar10_cnn")


def build_text_model(s: TextSettings, train_texts, num_classes: int = 3, seed: int = 0):
    """Raw strings in (a TextVectorization adapted on `train_texts` inside), probabilities out."""
    import keras
    import numpy as np
    from keras import layers as L

    keras.utils.set_random_seed(seed)
    vectorizer = L.TextVectorization(max_tokens=s.max_tokens, output_sequence_length=s.sequence_length,
                                     split=s.split, name="text_vectorization")
    vectorizer.adapt(np.asarray(train_texts))
    vocabulary = vectorizer.get_vocabulary()
    inputs = keras.Input(shape=(1,), dtype="string", name="text")
    x = vectorizer(inputs)
    embedding = L.Embedding(len(vocabulary), s.embedding_dim, mask_zero=True, trainable=s.train_embedding,
                            name="embedding")
    x = embedding(x)
    if s.embedding_init.startswith("lsa"):  # set as weights, not as an initializer: the config stays small
        embedding.set_weights([lsa_vectors(np.asarray(train_texts), vectorizer, s.embedding_dim,
                                           subword=s.embedding_init == "lsa_subword")])
    if s.embedding_dropout:
        x = L.SpatialDropout1D(s.embedding_dropout, name="embedding_dropout")(x)
    if s.cell == "attention":  # the query, value and key masks come from the embedding's mask
        if getattr(s, "pre_norm", False):
            x = L.LayerNormalization(name="layer_norm")(x)
        attended = L.MultiHeadAttention(s.heads, s.units, name="attention")(x, x)
        x = L.Add(name="residual")([x, attended])
        if not getattr(s, "pre_norm", False):
            x = L.LayerNormalization(name="layer_norm")(x)
        x = L.GlobalAveragePooling1D(name="average")(x)
        x = L.Dropout(s.dropout, name="dropout")(x)
        outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
        return keras.Model(inputs, outputs, name="nusax_attention")
    rnn = {"lstm": L.LSTM, "simple_rnn": L.SimpleRNN, "gru": L.GRU}[s.cell]
    for i in range(s.rnn_layers):
        last = i == s.rnn_layers - 1
        layer = rnn(s.units, return_sequences=not last, name=f"{s.cell}_{i + 1}")
        if s.bidirectional:
            layer = L.Bidirectional(layer, name=f"bidirectional_{i + 1}")
        x = layer(x)
    x = L.Dropout(s.dropout, name="dropout")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"nusax_{s.cell}")


def lsa_vectors(texts, vectorizer, dim: int, subword: bool = False):
    """Word vectors from the training texts alone: a truncated SVD of the TF-IDF word × sentence
    matrix (with `subword`, plus word × character 3–5-gram columns), scaled like Keras's uniform
    initializer. Rows follow the vectorizer's vocabulary."""
    import numpy as np
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids = np.asarray(vectorizer(texts))
    vocabulary = vectorizer.get_vocabulary()
    vocab_size = len(vocabulary)
    counts = np.zeros((vocab_size, len(texts)), np.float32)
    for doc, row in enumerate(ids):
        for token in row[row > 1]:  # skip padding and [UNK]
            counts[token, doc] += 1
    df = (counts > 0).sum(axis=1, keepdims=True)
    tfidf = np.log1p(counts) * np.log((1 + len(texts)) / (1 + df))
    if subword:
        words = ["", ""] + [str(w) for w in vocabulary[2:]]  # padding and [UNK] have no spelling
        grams = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit_transform(words)
        grams = grams.toarray().astype(np.float32)
        grams *= np.linalg.norm(tfidf, axis=1, keepdims=True).mean() / max(np.linalg.norm(grams, axis=1).mean(), 1e-6)
        tfidf = np.concatenate([tfidf, grams], axis=1)
    k = min(dim, min(tfidf.shape) - 1)
    vectors = TruncatedSVD(k, random_state=0).fit_transform(tfidf)
    out = np.random.default_rng(0).uniform(-0.05, 0.05, (vocab_size, dim)).astype(np.float32)
    scale = 0.05 / (np.abs(vectors).max() or 1.0)
    out[2:, :k] = vectors[2:] * scale * 2
    return out
