"""Scratch containers: API, save/load round trips (exact, without TensorFlow), mismatch errors."""
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from nntrace.layers import ModelStructureError, UnsupportedLayerError, WeightMismatchError
from nntrace.models import CNNFromScratch, LSTMFromScratch, RNNFromScratch, load_scratch
from tests.keras_models import small_cnn, small_text_model

ROOT = Path(__file__).resolve().parents[2]


def test_seed_api_on_cnn(tmp_path):
    model = small_cnn()
    x = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    cnn = CNNFromScratch()
    assert cnn.load_keras_model(model) is cnn
    assert [type(l).__name__ for l in cnn.layers][:2] == ["Rescaling", "Conv2D"]
    probs = cnn.predict_proba(x)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_array_equal(cnn.predict(x), probs.argmax(1))
    # a .keras path works too, loaded in safe mode
    path = tmp_path / "m.keras"
    model.save(path)
    np.testing.assert_allclose(CNNFromScratch().load_keras_model(path).forward(x), probs, atol=0)


def test_text_models_take_strings_and_token_ids():
    model = small_text_model()
    lstm = LSTMFromScratch().load_keras_model(model)
    texts = ["enak sekali", "TIDAK enak!", "kata baru"]
    ids = lstm.layers[0].forward(texts)
    np.testing.assert_allclose(lstm.forward(texts), lstm.forward(ids), atol=0)
    from nntrace.models.train import keras_input
    np.testing.assert_allclose(lstm.forward(texts), model.predict(keras_input(np.array(texts)), verbose=0), atol=1e-5)
    assert isinstance(load_scratch(small_text_model(keras.layers.SimpleRNN)), RNNFromScratch)


def test_wrong_container_says_which_to_use():
    with pytest.raises(ModelStructureError, match="load_scratch"):
        LSTMFromScratch().load_keras_model(small_cnn())


def test_save_load_round_trip_is_exact(tmp_path):
    for model, x in [(small_cnn(), np.random.default_rng(1).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)),
                     (small_text_model(), np.array(["enak sekali", "buruk"]))]:
        scratch = load_scratch(model)
        path = scratch.save_weights(tmp_path / f"{model.name}.npz")
        again = load_scratch(path)
        assert type(again) is type(scratch)
        np.testing.assert_array_equal(again.forward(x), scratch.forward(x))
        for a, b in zip(scratch.layers, again.layers):
            for wa, wb in zip(a.get_weights(), b.get_weights()):
                np.testing.assert_array_equal(wa, wb)
        # into an existing model of the same architecture
        np.testing.assert_array_equal(type(scratch)().load_weights(path).forward(x), scratch.forward(x))


def test_save_refuses_to_overwrite(tmp_path):
    scratch = load_scratch(small_cnn())
    path = scratch.save_weights(tmp_path / "a.npz")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        scratch.save_weights(path)
    scratch.save_weights(path, overwrite=True)


def test_loading_runs_without_tensorflow(tmp_path):
    path = load_scratch(small_text_model()).save_weights(tmp_path / "t.npz")
    code = ("import sys; from nntrace import load_scratch; m = load_scratch(sys.argv[1]); "
            "p = m.forward(['enak sekali']); assert p.shape == (1, 3); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_mismatched_weight_file_says_what_differs(tmp_path):
    scratch = load_scratch(small_cnn())
    path = scratch.save_weights(tmp_path / "a.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    conv = next(l for l in scratch.layers if type(l).__name__ == "Conv2D").name
    arrays[f"{conv}/kernel"] = np.zeros((3, 3, 3, 5), np.float32)
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, **arrays)
    with pytest.raises(WeightMismatchError, match=rf"'{conv}/kernel'.*\(3, 3, 3, 5\).*\(3, 3, 3, 4\)"):
        load_scratch(small_cnn()).load_weights(bad_shape)
    del arrays[f"{conv}/kernel"]
    arrays["extra/bias"] = np.zeros(2, np.float32)
    bad_names = tmp_path / "names.npz"
    np.savez(bad_names, **arrays)
    with pytest.raises(WeightMismatchError, match=rf"missing {conv}/kernel; unexpected extra/bias"):
        load_scratch(small_cnn()).load_weights(bad_names)
    arch = json.loads(str(arrays["__architecture__"]))
    arch["version"] = 99
    arrays["__architecture__"] = np.array(json.dumps(arch))
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(WeightMismatchError, match="version 99"):
        load_scratch(tmp_path / "v.npz")


def test_functional_model_with_branches_runs_as_a_graph():
    inputs = keras.Input((4,), name="x")
    a = keras.layers.Dense(3, name="a")(inputs)
    b = keras.layers.Dense(3, name="b")(inputs)
    model = keras.Model(inputs, keras.layers.Add(name="sum")([a, b]))
    scratch = load_scratch(model)
    assert scratch.order == ["a", "b", "sum"]
    assert scratch.inbound == {"a": ["x"], "b": ["x"], "sum": ["a", "b"]}
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(scratch.forward(x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_models_nntrace_cannot_show_are_refused():
    inputs = keras.Input((4,))
    a = keras.layers.Dense(3)(inputs)
    with pytest.raises(ModelStructureError, match="2 outputs"):
        load_scratch(keras.Model(inputs, [a, keras.layers.Dense(2)(inputs)]))
    with pytest.raises(UnsupportedLayerError, match="keras.ops"):
        load_scratch(keras.Model(inputs, keras.layers.Dense(2)(keras.ops.tanh(a))))


def test_dropout_trains_with_a_seeded_rng():
    scratch = load_scratch(small_cnn())
    drop = next(l for l in scratch.layers if type(l).__name__ == "Dropout")
    x = np.ones((1000, 10), np.float32)
    drop.rng = np.random.default_rng(7)
    y = drop.forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.8) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.8)
    np.testing.assert_array_equal(drop.forward(x, training=False), x)


def test_layers_that_are_identity_at_inference_convert():
    """Augmentation and spatial dropout run only in training: Keras skips them at inference, so do we."""
    L = keras.layers
    cnn = keras.Sequential([keras.Input((8, 8, 3)), L.RandomFlip("horizontal", name="flip"),
                            L.RandomTranslation(0.1, 0.1, name="shift"), L.Conv2D(2, 3, name="c"),
                            L.GaussianNoise(0.5, name="noise"), L.Flatten(), L.Dense(2, activation="softmax")])
    x = np.random.default_rng(3).uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    scratch = load_scratch(cnn)
    assert [type(l).__name__ for l in scratch.layers][:2] == ["Identity", "Identity"]
    assert scratch.layers[0].config["keras_class"] == "RandomFlip"
    np.testing.assert_allclose(scratch.forward(x), cnn.predict(x, verbose=0), atol=1e-6)
    inputs = keras.Input((5,), dtype="int32")
    h = L.SpatialDropout1D(0.3)(L.Embedding(9, 3, mask_zero=True)(inputs))
    text = keras.Model(inputs, L.Dense(2, activation="softmax")(L.LSTM(2)(h)))
    ids = np.array([[3, 4, 0, 0, 0], [1, 2, 3, 4, 5]], np.int32)
    np.testing.assert_allclose(load_scratch(text).forward(ids), text.predict(ids, verbose=0), atol=1e-6)
