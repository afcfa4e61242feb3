"""model.gradients / apply_gradients / train_step: the shipped models against tf.GradientTape,
Keras variable paths for models loaded every way, Keras's SGD and Adam, and gradients from an
`.npz` without TensorFlow."""
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from nntrace.layers import InputShapeError, NNTraceError, UnsupportedLayerError
from nntrace.layers.errors import ModelFileError
from nntrace.models import load_scratch
from nntrace.models.variables import META_KEY, variables
from tests.gradient_parity import LOSS_REL, assert_gradient_parity
from tests.parity import randomise_weights

ROOT = Path(__file__).resolve().parents[2]
PRETRAINED = ROOT / "models" / "pretrained"
L = keras.layers
TEXTS = ["Makanannya enak sekali!", "tidak enak, mahal dan pelayanannya lambat", "biasa saja",
         "enak enak enak", "kata yang tidak ada di kosakata"]


def small_model(head: str = "softmax") -> keras.Sequential:
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Rescaling(1 / 255.0), L.Conv2D(3, 3, activation="relu"),
                              L.BatchNormalization(), L.MaxPooling2D(), L.Flatten(), L.Dropout(0.3),
                              L.Dense(4, activation=head)])
    randomise_weights(model, 12)
    return model


def images(n: int, shape=(6, 6, 2), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n,) + shape).astype(np.float32)


# -- the shipped models -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "simple_rnn", "lstm"])
def test_shipped_models_gradients_match_tensorflow(name):
    """The shipped `.npz` (written before variable paths were stored) against its `.keras` twin."""
    km = keras.models.load_model(PRETRAINED / f"{name}.keras", compile=False)
    x = images(4, (32, 32, 3), seed=1) if name == "cnn" else np.array(TEXTS)
    y = np.random.default_rng(1).integers(0, km.output_shape[-1], len(x))
    g = assert_gradient_parity(km, x, y, scratch=load_scratch(PRETRAINED / f"{name}.npz"))
    assert list(g.weights) == [v.path for v in km.trainable_variables]
    from_keras = load_scratch(PRETRAINED / f"{name}.keras").gradients(x, y)
    assert list(from_keras.weights) == list(g.weights)
    assert (g.inputs is None) == (name != "cnn")


# -- variable paths -----------------------------------------------------------------------------
def test_variable_paths_are_those_of_the_loaded_model(tmp_path):
    """A model built in this process, the `.npz` saved from it and the `.keras` file loaded again
    each report the paths Keras gives the model that was loaded."""
    built = small_model()
    x, y = images(3), np.array([0, 3, 1])
    scratch = load_scratch(built)
    built_paths = [v.path for v in built.trainable_variables]
    assert list(scratch.gradients(x, y).weights) == built_paths
    assert built_paths[0].startswith(built.name + "/")  # Keras prefixes a model built in this process
    npz = load_scratch(scratch.save_weights(tmp_path / "m.npz"))
    assert list(npz.gradients(x, y).weights) == built_paths
    built.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    g = assert_gradient_parity(loaded, x, y, scratch=load_scratch(tmp_path / "m.keras"))
    assert list(g.weights) == [v.path for v in loaded.trainable_variables]


def test_npz_without_paths_derives_them_as_keras_loads_the_model(tmp_path):
    inputs = keras.Input((5,), dtype="int32")
    h = L.Embedding(9, 3, mask_zero=True)(inputs)
    h = L.Bidirectional(L.LSTM(2, return_sequences=True))(h)
    h = L.SimpleRNN(2, go_backwards=True)(h)
    built = keras.Model(inputs, L.Dense(3, activation="softmax")(h))
    randomise_weights(built, 3)
    built.save(tmp_path / "m.keras")
    scratch = load_scratch(built)
    del scratch.meta[META_KEY]
    old = load_scratch(scratch.save_weights(tmp_path / "old.npz"))
    assert META_KEY not in old.meta
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    ids = np.array([[1, 2, 3, 0, 0], [4, 4, 8, 1, 0]], np.int32)
    g = assert_gradient_parity(loaded, ids, np.array([2, 0]), scratch=old)
    assert list(g.weights) == [v.path for v in loaded.trainable_variables]


def test_a_malformed_variable_table_is_a_clear_error(tmp_path):
    scratch = load_scratch(small_model())
    key = f"{scratch.layers[1].name}/kernel"
    scratch.meta[META_KEY] = {key: "not a table"}
    x, y = images(2), np.array([0, 1])
    scratch.forward(x)  # the forward pass does not need the table
    with pytest.raises(ModelFileError, match=key):
        scratch.gradients(x, y)
    path = tmp_path / "bad.npz"
    scratch.meta[META_KEY] = ["a list"]
    scratch.save_weights(path)
    with pytest.raises(NNTraceError, match=META_KEY):
        load_scratch(path).gradients(x, y)


# -- heads, labels, graphs ------------------------------------------------------------------
def test_logits_head_uses_from_logits():
    model = small_model(head="linear")
    g = assert_gradient_parity(model, images(4), np.array([0, 1, 2, 3]))
    assert g.from_logits
    p = tf.nn.softmax(model(images(4), training=False)).numpy()
    onehot = np.eye(4)[[0, 1, 2, 3]]
    np.testing.assert_allclose(g.outputs[model.layers[-1].name], (p - onehot) / 4, atol=1e-7)


def test_labels_are_checked():
    scratch = load_scratch(small_model())
    with pytest.raises(InputShapeError, match=r"class ids in \[0, 4\)"):
        scratch.gradients(images(2), np.array([0, 4]))
    with pytest.raises(InputShapeError, match="of shape"):
        scratch.gradients(images(2), np.array([0, 1, 2]))


def test_a_shared_layer_sums_the_gradients_of_its_calls():
    inputs = keras.Input((4,))
    shared = L.Dense(4, activation="tanh", name="shared")
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(shared(shared(inputs))))
    randomise_weights(model, 7)
    rng = np.random.default_rng(7)
    g = assert_gradient_parity(model, rng.normal(size=(5, 4)).astype(np.float32), rng.integers(0, 3, 5))
    assert {"shared", "shared:1"} <= set(g.outputs)


def test_a_graph_whose_input_feeds_two_branches():
    """Both branches' gradients reach the input; a layer with no backward pass says so."""
    a = keras.Input((4,))
    model = keras.Model(a, L.Dense(2)(L.Add()([L.Dense(3)(a), L.Dense(3, activation="tanh")(a)])))
    randomise_weights(model, 2)
    x, y = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32), np.array([0, 1, 1])
    try:
        load_scratch(model).gradients(x, y)
    except UnsupportedLayerError as exc:
        assert "backward" in str(exc) and "add" in str(exc)
        return
    assert_gradient_parity(model, x, y)


# -- the optimizer step -----------------------------------------------------------------------
def keras_weights(km) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v) for v in km.trainable_variables}


def scratch_weights(scratch) -> dict[str, np.ndarray]:
    return {v.path: scratch.layer(v.layer).weights[v.weight] for v in variables(scratch) if v.trainable}


@pytest.mark.parametrize("optimizer, hyper, keras_optimizer", [
    ("sgd", {"learning_rate": 0.05}, lambda: keras.optimizers.SGD(learning_rate=0.05)),
    ("sgd", {"learning_rate": 0.05, "momentum": 0.9},
     lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)),
    ("adam", {"learning_rate": 0.01}, lambda: keras.optimizers.Adam(learning_rate=0.01)),
    ("adam", {}, lambda: keras.optimizers.Adam()),
])
def test_optimizer_steps_match_keras(optimizer, hyper, keras_optimizer):
    """Three steps, each on the scratch model's own gradients, equal Keras's optimizer applying the
    same gradients: the momenta and Adam's moments carry over between calls."""
    km = small_model()
    scratch = load_scratch(km)
    opt = keras_optimizer()
    x = images(6, seed=3)
    y = np.array([0, 1, 2, 3, 0, 1])
    for step in range(3):
        g = scratch.gradients(x, y)
        scratch.apply_gradients(g, optimizer=optimizer, **hyper)
        opt.apply_gradients([(tf.constant(g.weights[v.path]), v) for v in km.trainable_variables])
        got, want = scratch_weights(scratch), keras_weights(km)
        for path in want:
            np.testing.assert_allclose(got[path], want[path], rtol=0, atol=1e-6, err_msg=f"{path}, step {step}")
    assert scratch.optimizer_state.iterations == 3


def test_train_step_reports_the_loss_before_and_after_like_keras():
    km = small_model()
    scratch = load_scratch(km)
    x, y = images(8, seed=4), np.array([0, 1, 2, 3, 3, 2, 1, 0])
    before, after = scratch.train_step(x, y, optimizer="adam", learning_rate=0.01)
    opt = keras.optimizers.Adam(learning_rate=0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, km(x, training=False))
    opt.apply_gradients(zip(tape.gradient(loss, km.trainable_variables), km.trainable_variables))
    keras_after = float(loss_fn(y, km(x, training=False)))
    assert abs(before - float(loss)) <= LOSS_REL * float(loss)
    assert abs(after - keras_after) <= 1e-5 * keras_after
    assert after < before
    second = scratch.train_step(x, y, optimizer="adam", learning_rate=0.01)
    assert second.loss_before == pytest.approx(after, rel=1e-6)
    assert scratch.optimizer_state.iterations == 2


def test_unknown_optimizer_settings_are_refused():
    scratch = load_scratch(small_model())
    g = scratch.gradients(images(2), np.array([0, 1]))
    with pytest.raises(NNTraceError, match="unknown optimizer"):
        scratch.apply_gradients(g, optimizer="rmsprop")
    with pytest.raises(NNTraceError, match="momentum"):
        scratch.apply_gradients(g, optimizer="adam", momentum=0.9)
    with pytest.raises(NNTraceError, match="no trainable variable"):
        scratch.apply_gradients({"nope/kernel": np.zeros(3)})


# -- without TensorFlow -----------------------------------------------------------------------
def test_gradients_from_an_npz_never_import_tensorflow(tmp_path):
    code = f"""
import sys
import numpy as np
from nntrace.models import load_scratch
cnn = load_scratch({str(PRETRAINED / 'cnn.npz')!r})
g = cnn.gradients(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32), np.array([3, 5]))
assert g.inputs.shape == (2, 32, 32, 3) and 'conv2d_1/kernel' in g.weights
lstm = load_scratch({str(PRETRAINED / 'lstm.npz')!r})
before, after = lstm.train_step(["enak sekali", "tidak enak"], np.array([2, 0]), optimizer="adam")
assert after < before
assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules)
print("ok", g.loss, before, after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


@pytest.mark.parametrize("batch", [5, 40])  # 40 is split between the cores
def test_a_label_per_step_matches_tensorflow_on_split_batches(batch):
    """The loss is the mean over every (sample, step) label, also when each core takes a share."""
    inputs = keras.Input((7, 4))
    x = L.Conv1D(5, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(x))
    randomise_weights(model, 1)
    rng = np.random.default_rng(batch)
    assert_gradient_parity(model, rng.normal(size=(batch, 7, 4)).astype(np.float32), rng.integers(0, 3, (batch, 7)))


def test_a_batch_too_small_to_split_runs_its_backward_once(monkeypatch):
    from nntrace.models import gradients as module

    runs = []
    original = module.backward
    monkeypatch.setattr(module, "backward", lambda *a, **k: runs.append(1) or original(*a, **k))
    scratch = load_scratch(small_model())
    g = scratch.gradients(images(3), np.array([0, 1, 2]))
    assert len(runs) == 1 and np.isfinite(g.loss)


@pytest.mark.parametrize("batch", [3, 20])  # 20 is split between the cores
def test_adam_on_an_embedding_adds_the_squares_of_its_slices_like_keras(batch):
    """TensorFlow gives an Embedding's gradient as one slice per position read; Keras's Adam adds
    the slices' squares to its second moment. Padding and repeated words read a row many times."""
    inputs = keras.Input((6,), dtype="int32")
    shared = L.Embedding(9, 4, mask_zero=True)
    x = L.Bidirectional(L.LSTM(3))(shared(inputs))
    x = L.Concatenate()([x, L.GlobalAveragePooling1D()(shared(inputs))])  # the embedding is called twice
    km = keras.Model(inputs, L.Dense(3, activation="softmax")(x))
    randomise_weights(km, 6)
    scratch = load_scratch(km)
    rng = np.random.default_rng(batch)
    ids = rng.integers(1, 4, (batch, 6))  # few words: every row repeats
    ids[:, 4:] = 0
    labels = rng.integers(0, 3, batch)
    opt = keras.optimizers.Adam(learning_rate=0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    for step in range(3):
        scratch.apply_gradients(scratch.gradients(ids, labels), optimizer="adam", learning_rate=0.01)
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, km(ids, training=False))
        grads = tape.gradient(loss, km.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices)  # the embeddings' gradient comes as slices
        opt.apply_gradients(zip(grads, km.trainable_variables))
        got, want = scratch_weights(scratch), keras_weights(km)
        for path in want:
            np.testing.assert_allclose(got[path], want[path], rtol=0, atol=2e-5, err_msg=f"{path}, step {step}")


def dense_head(*head):
    def build():
        model = keras.Sequential([keras.Input((5,)), L.Dense(6, activation="tanh"), *head])
        randomise_weights(model, 3)
        return model
    return build


@pytest.mark.parametrize("build", [
    dense_head(L.Dense(3, activation="sigmoid")),
    dense_head(L.Dense(3), L.Activation("sigmoid")),
    dense_head(L.Dense(3, activation="softmax"), L.Dropout(0.5)),
    dense_head(L.Dense(3, activation="softmax"), L.GaussianNoise(0.1), L.Activation("linear")),
    dense_head(L.Dense(3), L.Softmax(), L.Dropout(0.2)),
], ids=["sigmoid", "activation-sigmoid", "softmax-dropout", "softmax-noise-linear", "softmax-layer-dropout"])
@pytest.mark.parametrize("batch", [4, 24])
def test_the_loss_reads_the_logits_keras_keeps_behind_a_softmax_or_sigmoid(build, batch):
    """Keras's SparseCategoricalCrossentropy reads a softmax's or sigmoid's input (`_keras_logits`),
    also behind layers that pass it on unchanged at inference, whatever `from_logits` says."""
    model = build()
    rng = np.random.default_rng(batch)
    x, y = rng.normal(size=(batch, 5)).astype(np.float32), rng.integers(0, 3, batch)
    g = assert_gradient_parity(model, x, y)
    keras_loss = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x, training=False)))
    assert g.loss == pytest.approx(keras_loss, rel=LOSS_REL)
    assert not g.from_logits


def test_a_softmax_over_another_axis_reads_its_input_as_logits():
    inputs = keras.Input((4, 5))
    x = L.Conv1D(3, 2, padding="same")(inputs)
    model = keras.Model(inputs, L.Softmax(axis=1)(x))  # over the steps; the loss takes the last axis
    randomise_weights(model, 2)
    rng = np.random.default_rng(2)
    assert_gradient_parity(model, rng.normal(size=(6, 4, 5)).astype(np.float32), rng.integers(0, 3, (6, 4)))


def test_an_empty_batch_is_refused_in_one_line_and_runs_forward_empty():
    scratch = load_scratch(small_model())
    with pytest.raises(InputShapeError, match="at least one sample"):
        scratch.gradients(images(0), np.zeros(0, int))
    assert scratch.forward(images(0)).shape == (0, 4)
    text = keras.Sequential([keras.Input((4,), dtype="int32"), L.Embedding(10, 3, mask_zero=True),
                             L.Bidirectional(L.LSTM(3, return_sequences=True)), L.GRU(2), L.Dense(3)])
    assert load_scratch(text).forward(np.zeros((0, 4), np.int32)).shape == (0, 3)


def test_a_masked_softmax_head_is_read_as_logits_like_keras():
    """Keras's Softmax zeroes masked entries after the softmax: a new tensor without cached logits,
    so its loss reads the output itself."""
    inputs = keras.Input((4,), dtype="int32")  # 4 steps of 4 classes: Keras broadcasts the (batch, 4) mask
    x = L.Dense(4)(L.Embedding(9, 3, mask_zero=True)(inputs))
    model = keras.Model(inputs, L.Softmax()(x))
    randomise_weights(model, 4)
    rng = np.random.default_rng(4)
    ids = rng.integers(1, 9, (4, 4))
    ids[0, 2:] = 0
    ids[1, 3] = 0
    g = assert_gradient_parity(model, ids.astype(np.int32), rng.integers(0, 4, (4, 4)))
    assert g.from_logits and np.isfinite(g.loss)


def test_a_masked_output_runs_its_backward_once(monkeypatch):
    from nntrace.models import gradients as module

    runs = []
    original = module.backward
    monkeypatch.setattr(module, "backward", lambda *a, **k: runs.append(k.get("total")) or original(*a, **k))
    inputs = keras.Input((5,), dtype="int32")
    x = L.LSTM(3, return_sequences=True)(L.Embedding(9, 3, mask_zero=True)(inputs))
    scratch = load_scratch(keras.Model(inputs, L.Dense(3, activation="softmax")(x)))
    ids = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]], np.int32)
    scratch.gradients(ids, np.zeros((2, 5), int))
    assert runs == [None]


@pytest.mark.parametrize("x", [np.float32(1.0), 5, None])
def test_a_scalar_input_is_refused_in_one_line(x):
    with pytest.raises(NNTraceError):
        load_scratch(small_model()).gradients(x, np.zeros(1, int))


def test_bias_gradients_summed_over_many_positions_keep_their_precision():
    """A bias's gradient adds dL/dz over every (sample, pixel): 32,768 rows here, nearly cancelling.
    Added row after row in float32 they were 2.5e-4 off; summed in groups every gradient stays
    within 1e-5 of the same model's gradients in float64 (TensorFlow's own float32 LayerNormalization
    β is 1e-4 off them, so the float64 model is the reference)."""

    def build(policy: str) -> keras.Model:
        keras.mixed_precision.set_global_policy(policy)
        try:
            inputs = keras.Input((64, 64, 3))
            x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
            x = keras.layers.BatchNormalization(name="bn")(x)
            x = keras.layers.Dense(6, name="per_pixel")(x)  # on a 4-D tensor: one bias over every pixel
            x = keras.layers.LayerNormalization(name="ln")(x)
            pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
            return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(pooled))
        finally:
            keras.mixed_precision.set_global_policy("float32")

    model, model64 = build("float32"), build("float64")
    rng = np.random.default_rng(1)
    randomise_weights(model, rng)
    for mine, theirs in zip(model64.layers, model.layers):
        mine.set_weights([w.astype(np.float64) for w in theirs.get_weights()])
    images = (10 * rng.standard_normal((8, 64, 64, 3))).astype(np.float32)
    labels = rng.integers(0, 3, 8)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy()(labels, model64(images.astype(np.float64), training=False))
    exact = {v.path: np.asarray(g) for v, g in zip(model64.trainable_variables,
                                                    tape.gradient(loss, model64.trainable_variables))}
    got = load_scratch(model).gradients(images, labels).weights
    assert set(got) == set(exact) and len(got) == 10
    for path, g in got.items():
        err = np.abs(g - exact[path]).max() / np.abs(exact[path]).max()
        assert err <= 1e-5, f"{path}: {err:.1e} off the float64 gradient"
