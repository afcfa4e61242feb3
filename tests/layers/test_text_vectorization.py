"""TextVectorization: tokenised exactly as Keras does, from the layer's own vocabulary and settings."""
import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nntrace.layers import InputShapeError
from nntrace.models import load_scratch

CORPUS = ["Makanannya enak sekali!", "Pelayanan BURUK, tidak ramah.", "harga-nya murah... tapi tempatnya kotor",
          "Saya   suka\tsekali\ndengan rasa kopi-nya", "Tidak enak; tidak murah?"]
TRICKY = ["", "   ", "ÀPA kabar DÉJÀ vu", "kata\u00a0nbsp tidak", "emoji 😀 senang", "TIDAK!!!enak",
          "a\x0bb\x0cc\rd", "[UNK] token", "ÇA va", "'kutip' \"ganda\" (kurung) {kurawal}"]


def vectorizer_model(**kwargs):
    vec = keras.layers.TextVectorization(**kwargs)
    vec.adapt(np.array(CORPUS))
    inputs = keras.Input((1,), dtype="string")
    return keras.Model(inputs, vec(inputs)), vec


@pytest.mark.parametrize("kwargs", [
    {"output_sequence_length": 8},
    {"output_sequence_length": 3, "max_tokens": 6},
    {"output_sequence_length": 12, "standardize": "lower"},
    {"output_sequence_length": 12, "standardize": None},
    {"output_sequence_length": 12, "standardize": "strip_punctuation"},
    {"output_sequence_length": 30, "split": "character"},
])
def test_token_ids_match_keras(kwargs):
    model, vec = vectorizer_model(**kwargs)
    texts = CORPUS + TRICKY
    expected = np.asarray(vec(np.array(texts)))
    got = load_scratch(model).forward(texts)
    np.testing.assert_array_equal(got, expected)


PIECES = st.sampled_from(list("abcAB Ç.,!?-'\t\n") + ["enak", "tidak", "Murah", "  "])


@given(st.lists(st.lists(PIECES, max_size=15).map("".join), min_size=1, max_size=5))
def test_random_strings_tokenise_like_keras(texts):
    model, vec = vectorizer_model(output_sequence_length=10)
    np.testing.assert_array_equal(load_scratch(model).forward(texts), np.asarray(vec(np.array(texts))))


def test_non_string_input_names_the_layer():
    model, _ = vectorizer_model(output_sequence_length=4)
    with pytest.raises(InputShapeError, match="TextVectorization"):
        load_scratch(model).forward(np.ones((2, 3, 4), np.float32))
