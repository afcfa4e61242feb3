"""The Keras builders: word vectors from the training texts, character vocabularies, scratch twins."""
import numpy as np
import pytest

from nntrace.models.builders import AttentionSettings, TextSettings, build_text_model, lsa_vectors
from nntrace.models.train import keras_input

TEXTS = np.array(["makanan enak sekali", "makanan murah enak", "pelayanan buruk sekali", "pelayanan lambat buruk",
                  "dimakan habis", "tempatnya bersih nyaman", "kotor dan bau", "nyaman bersih murah"])


def vectorizer_for(texts):
    import keras

    vec = keras.layers.TextVectorization(output_sequence_length=8)
    vec.adapt(texts)
    return vec


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_lsa_vectors_put_co_occurring_words_close():
    vec = vectorizer_for(TEXTS)
    ids = {w: i for i, w in enumerate(vec.get_vocabulary())}
    v = lsa_vectors(TEXTS, vec, 6)
    assert v.shape == (len(ids), 6) and v.dtype == np.float32
    assert np.abs(v).max() <= 0.1  # on the scale of Keras's uniform initializer
    # "pelayanan" and "buruk" share two sentences; "pelayanan" and "nyaman" none
    assert cosine(v[ids["pelayanan"]], v[ids["buruk"]]) > cosine(v[ids["pelayanan"]], v[ids["nyaman"]]) + 0.3


def test_subword_vectors_bring_words_with_one_stem_together():
    vec = vectorizer_for(TEXTS)
    ids = {w: i for i, w in enumerate(vec.get_vocabulary())}
    plain, subword = lsa_vectors(TEXTS, vec, 6), lsa_vectors(TEXTS, vec, 6, subword=True)
    # "makanan" and "dimakan" never share a sentence, only the stem "makan"
    assert cosine(subword[ids["makanan"]], subword[ids["dimakan"]]) > \
        cosine(plain[ids["makanan"]], plain[ids["dimakan"]]) + 0.2
    np.testing.assert_array_equal(plain[:2], subword[:2])  # padding and [UNK] keep their random rows


@pytest.mark.parametrize("settings", [
    TextSettings(cell="lstm", split="character", max_tokens=40, sequence_length=40, embedding_dim=4, units=3),
    TextSettings(cell="simple_rnn", units=3, embedding_dim=6, embedding_init="lsa_subword", bidirectional=False),
    TextSettings(cell="gru", units=3, embedding_dim=6, embedding_init="lsa"),
    AttentionSettings(heads=2, units=3, embedding_dim=6),
    AttentionSettings(heads=2, units=3, embedding_dim=6, embedding_init="lsa", pre_norm=True),
], ids=["character-lstm", "subword-simple-rnn", "bidirectional-gru", "attention", "attention-pre-norm"])
def test_built_text_models_have_exact_scratch_twins(settings):
    from nntrace.models import load_scratch

    model = build_text_model(settings, TEXTS, seed=3)
    probe = np.array(["makanan enak", "dimakan habis sekali", "", "pelayanannya lambat!"])
    p_keras = model.predict(keras_input(probe), verbose=0)
    p_scratch = load_scratch(model).predict_proba(probe)
    np.testing.assert_allclose(p_scratch, p_keras, atol=1e-5)
    vocab = model.get_layer("text_vectorization").get_vocabulary()
    if settings.split == "character":
        assert all(len(token) == 1 for token in vocab[2:])
    classes = [type(layer).__name__ for layer in model.layers]
    if settings.cell == "attention":  # LayerNormalization before the attention with pre_norm, after the Add without
        assert "MultiHeadAttention" in classes and "GlobalAveragePooling1D" in classes
        assert (classes.index("LayerNormalization") < classes.index("MultiHeadAttention")) == settings.pre_norm
