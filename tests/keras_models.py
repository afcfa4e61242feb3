"""Small Keras models with randomised weights, shared by tests."""
import keras
import numpy as np

from tests.parity import randomise_weights


def small_cnn():
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Rescaling(1 / 255.0, name="scale"),
                              L.Conv2D(4, 3, padding="same", use_bias=False, name="conv"),
                              L.BatchNormalization(name="bn"), L.Activation("relu", name="relu"),
                              L.MaxPooling2D(name="pool"), L.Flatten(name="flat"), L.Dropout(0.2, name="drop"),
                              L.Dense(3, activation="softmax", name="out")], name="small_cnn")
    randomise_weights(model, 1)
    return model


def small_text_model(cell=keras.layers.LSTM):
    vec = keras.layers.TextVectorization(output_sequence_length=6, name="vec")
    vec.adapt(np.array(["enak sekali", "tidak enak", "murah dan enak", "buruk sekali"]))
    inputs = keras.Input((1,), dtype="string")
    x = keras.layers.Embedding(len(vec.get_vocabulary()), 4, mask_zero=True)(vec(inputs))
    x = keras.layers.Bidirectional(cell(3))(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="small_text")
    randomise_weights(model, 2)
    return model
