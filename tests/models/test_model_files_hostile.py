"""Hostile model files: empty, truncated, garbage, pickled, malformed architecture JSON, arrays of the
wrong type. Every one is refused with an NNTraceError naming the file, never another exception;
`save_weights` writes atomically and never replaces a file unless asked."""
import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nntrace.layers import UnsupportedLayerError, WeightMismatchError
from nntrace.layers.errors import ModelFileError, NNTraceError, UnsafeModelError
from nntrace.models import load_scratch
from nntrace.models.scratch import ARCH_KEY
from tests.scratch_models import tiny_cnn, tiny_lstm

#: A modest number of examples in CI; `HYPOTHESIS_PROFILE=thorough` runs 1,000 per property.
FUZZ = settings(max_examples=1000 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 40,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOURCES = {}


def source(kind: str) -> bytes:
    """The bytes of a real weights file written by save_weights (built once per session)."""
    if kind not in SOURCES:
        with tempfile.TemporaryDirectory() as d:
            path = (tiny_cnn() if kind == "cnn" else tiny_lstm()).save_weights(Path(d) / f"{kind}.npz")
            SOURCES[kind] = path.read_bytes()
    return SOURCES[kind]


def arrays_of(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def write_npz(path: Path, arrays: dict, arch=None) -> Path:
    """An `.npz` like save_weights writes, with `arch` (any JSON value, or raw text) as its architecture."""
    arrays = dict(arrays)
    if arch is not None:
        arrays[ARCH_KEY] = np.array(arch if isinstance(arch, str) else json.dumps(arch))
    np.savez(path, **arrays)
    return path


def architecture(kind: str = "cnn") -> dict:
    return json.loads(str(arrays_of(source(kind))[ARCH_KEY]))


def loads_or_refuses(path: Path) -> None:
    """The property: a file either loads, or is refused with an NNTraceError that names it."""
    try:
        load_scratch(path)
    except NNTraceError as exc:
        assert str(path) in str(exc), exc


# -- .npz weights files ----------------------------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    (lambda p: p.write_bytes(source("cnn")[:100]), "not a readable zip archive"),
    (lambda p: p.write_bytes(source("cnn")[:len(source("cnn")) // 2]), "not a readable zip archive"),
    (lambda p: p.write_bytes(b"hello, I am not a zip file" * 20), "not a readable zip archive"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: np.savez(p, kernel=np.array([{"a": 1}], dtype=object), allow_pickle=True), "pickled Python objects"),
    (lambda p: write_npz(p, {}, "{not json"), "not valid JSON"),
    (lambda p: write_npz(p, {}, [1, 2]), "must be a JSON object"),
])
def test_unreadable_npz_files_are_refused_naming_the_file(tmp_path, make, message):
    path = tmp_path / "m.npz"
    make(path)
    with pytest.raises(ModelFileError, match=re.escape(message)) as info:
        load_scratch(path)
    assert str(path) in str(info.value)


def test_a_single_npy_array_saved_as_npz_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
        f.write(b"PK\x05\x06" + b"\0" * 18)  # an empty zip's end record: it passes for a zip archive
    with pytest.raises(ModelFileError, match="m.npz' holds a single array"):
        load_scratch(path)


@pytest.mark.parametrize("change,message", [
    (lambda a: a.pop("layers"), "'layers' must be a non-empty list of layers, got nothing"),
    (lambda a: a.update(layers=[]), "'layers' must be a non-empty list"),
    (lambda a: a.update(layers="conv"), "'layers' must be a non-empty list"),
    (lambda a: a.pop("name"), "'name' must be a string, got nothing"),
    (lambda a: a.update(name=7), "'name' must be a string, got 7"),
    (lambda a: a.pop("input"), "'input' must be an object"),
    (lambda a: a["input"].update(shape=[None, "8", 8, 3]), "'input.shape' must be a list of positive integers"),
    (lambda a: a["input"].update(shape=[None, 0, 8, 3]), "'input.shape' must be a list of positive integers"),
    (lambda a: a.update(meta=[1]), "'meta' must be an object"),
    (lambda a: a["meta"].update(labels="cat"), "'meta.labels' must be a list of strings"),
    (lambda a: a["layers"].__setitem__(1, "Conv2D"), r"'layers\[1\]' must be an object"),
    (lambda a: a["layers"][1].pop("class_name"), r"'layers\[1\].class_name' must be a string"),
    (lambda a: a["layers"][1].update(config=None), r"'layers\[1\].config' must be an object"),
    (lambda a: a["layers"][1]["config"].pop("name"), r"'layers\[1\].config.name' must be a non-empty string"),
    (lambda a: a["layers"][2]["config"].update(name="conv2d_1"), "two layers are named 'conv2d_1'"),
    (lambda a: a["layers"][1]["config"].update(filters="four"), "layer 'conv2d_1'"),
    (lambda a: a["layers"][1]["config"].update(kernel_size=None), "layer 'conv2d_1'"),
    (lambda a: a["layers"][1]["config"].update(strides=[]), "cannot run on an input of its own shape"),
    (lambda a: a["layers"][0]["config"].update(scale=[1, 2]), "cannot run on an input of its own shape"),
    (lambda a: a["layers"][0]["config"].update(scale=float("nan")), "NaN is not a JSON value"),
    # text a terminal would act on: refused, named by its code point, never echoed
    (lambda a: a.update(name="\x1b[31mRED\x1b[0m"), r"'name' holds a control character or a bidi override \(U\+001B at position 0\)"),
    (lambda a: a["meta"].update(labels=["cat", "\x1b[2Jdog", "ship"]), r"'meta.labels\[1\]' holds .*U\+001B"),
    (lambda a: a["meta"].update(labels=["cat", "dog", "s\u202ehip"]), r"'meta.labels\[2\]' holds .*U\+202E at position 1"),
    (lambda a: a["layers"][1]["config"].update(name="conv\n2d"), r"'layers\[1\].config.name' holds .*U\+000A"),
    (lambda a: a["layers"][1].update(class_name="Conv\x9b2D"), r"'layers\[1\].class_name' holds .*U\+009B"),
    # labels that do not match the outputs, and an input no machine could hold
    (lambda a: a["meta"].update(labels=["only"]), "'meta.labels' names 1 class, but the model gives 3 outputs"),
    (lambda a: a["meta"].update(labels=[]), "'meta.labels' names 0 classes, but the model gives 3 outputs"),
    (lambda a: a["input"].update(shape=[None, 100000, 100000, 100000]),
     r"'input.shape' \[null, 100000, 100000, 100000\] holds more than 67,108,864 values per sample"),
])
def test_malformed_architecture_json_names_the_field(tmp_path, change, message):
    arch = architecture()
    change(arch)
    path = write_npz(tmp_path / "m.npz", {k: v for k, v in arrays_of(source("cnn")).items() if k != ARCH_KEY}, arch)
    with pytest.raises(NNTraceError, match=message) as info:
        load_scratch(path)
    assert str(path) in str(info.value) and not isinstance(info.value, KeyError)


def test_unknown_layer_class_is_the_unsupported_layer_error_naming_the_file(tmp_path):
    arch = architecture()
    arch["layers"][1]["class_name"] = "Conv3D"
    path = write_npz(tmp_path / "m.npz", {k: v for k, v in arrays_of(source("cnn")).items() if k != ARCH_KEY}, arch)
    with pytest.raises(UnsupportedLayerError, match=r"m\.npz.*'conv2d_1' of class Conv3D is not supported"):
        load_scratch(path)


def test_architecture_entry_of_the_wrong_type(tmp_path):
    arrays = arrays_of(source("cnn"))
    arrays[ARCH_KEY] = np.frombuffer(str(arrays[ARCH_KEY]).encode(), np.uint8)
    with pytest.raises(ModelFileError, match="must be one JSON string, got an array of dtype uint8"):
        load_scratch(write_npz(tmp_path / "m.npz", arrays))


@pytest.mark.parametrize("kind,weight,array,message", [
    ("cnn", "conv2d_1/kernel", np.full((3, 3, 3, 4), "x"), "must hold real numbers, got dtype <U1"),
    ("cnn", "conv2d_1/kernel", np.zeros((3, 3, 3, 4), np.complex64), "must hold real numbers, got dtype complex64"),
    ("cnn", "conv2d_1/bias", np.zeros(4, bool), "must hold real numbers, got dtype bool"),
    ("cnn", "conv2d_1/bias", np.array([0, np.nan, 0, 0], np.float32), "NaN or infinite"),
    ("cnn", "conv2d_1/bias", np.zeros(5, np.float32), r"'conv2d_1' \(Conv2D\) weight 'bias' must have shape \(4\)"),
    ("cnn", "predictions/kernel", np.zeros((64,), np.float32), "weight 'kernel' must have shape"),
    ("lstm", "text_vectorization/vocabulary", np.arange(6.0), "must be an array of strings, got dtype float64"),
])
def test_weight_arrays_of_the_wrong_dtype_or_shape(tmp_path, kind, weight, array, message):
    arrays = arrays_of(source(kind))
    arrays[weight] = array
    path = write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises((ModelFileError, WeightMismatchError), match=message) as info:
        load_scratch(path)
    assert str(path) in str(info.value)


# -- save_weights --------------------------------------------------------------------------------
def test_save_weights_is_atomic_and_leaves_nothing_behind(tmp_path, monkeypatch):
    model = tiny_cnn()
    path = tmp_path / "m.npz"
    path.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_weights(path)
    assert path.read_bytes() == b"the user's own file"

    def half_written(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", half_written)
    with pytest.raises(OSError, match="No space left"):
        model.save_weights(path, overwrite=True)
    assert path.read_bytes() == b"the user's own file"  # not replaced by half a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temporary file left
    monkeypatch.undo()
    model.save_weights(path, overwrite=True)
    assert load_scratch(path).name == "tiny_cnn"


def test_save_weights_never_replaces_a_file_that_appears_while_it_writes(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    real_savez = np.savez

    def user_saves_meanwhile(file, **arrays):
        real_savez(file, **arrays)
        path.write_bytes(b"written by someone else meanwhile")

    monkeypatch.setattr(np, "savez", user_saves_meanwhile)
    with pytest.raises(FileExistsError, match="m.npz"):
        tiny_cnn().save_weights(path)
    assert path.read_bytes() == b"written by someone else meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


# -- .keras files --------------------------------------------------------------------------------
def keras_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    (lambda p: p.write_bytes(b"\x89HDF\r\n garbage" * 30), "not a readable zip archive"),
    (lambda p: p.write_bytes(source("cnn")[:300]), "not a readable zip archive"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: keras_zip(p, {"metadata.json": "{}"}), "without config.json"),
    (lambda p: keras_zip(p, {"config.json": "{not json"}), "config.json is not valid JSON"),
    (lambda p: keras_zip(p, {"config.json": "[1, 2]"}), "does not describe a Keras model"),
    (lambda p: keras_zip(p, {"config.json": json.dumps({"class_name": "Sequential", "config": {"layers": 3}}),
                             "metadata.json": "{}"}), "Keras cannot load this model"),
])
def test_damaged_keras_files_are_refused_before_keras_reads_them(tmp_path, make, message):
    from nntrace.models.convert import load_keras

    path = tmp_path / "m.keras"
    make(path)
    with pytest.raises(ModelFileError, match=re.escape(message)) as info:
        load_keras(path)
    assert str(path) in str(info.value) and "File not found" not in str(info.value)
    with pytest.raises(ModelFileError):
        load_scratch(path)


def test_a_truncated_keras_file_is_not_reported_as_missing(tmp_path):
    import keras

    from nntrace.models.convert import load_keras

    good = tmp_path / "good.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(good)
    data = good.read_bytes()
    for cut in (len(data) // 3, len(data) - 30):
        path = tmp_path / f"cut{cut}.keras"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=rf"cut{cut}\.keras") as info:
            load_keras(path)
        assert "File not found" not in str(info.value)
    damaged = bytearray(data)
    with zipfile.ZipFile(good) as zf:
        info_ = zf.getinfo("config.json")
    damaged[info_.header_offset + 30 + len(info_.filename) + 5] ^= 0xFF  # inside config.json's data
    path = tmp_path / "flipped.keras"
    path.write_bytes(bytes(damaged))
    with pytest.raises(ModelFileError, match="flipped.keras"):
        load_keras(path)


def test_a_lambda_layer_is_refused_as_code_nntrace_does_not_run(tmp_path):
    import keras

    from nntrace.models.convert import load_keras

    path = tmp_path / "lambda.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2, name="double"),
                      keras.layers.Dense(2)]).save(path)
    with pytest.raises(UnsafeModelError, match=r"lambda\.keras.*contains code \(Lambda layer 'double'\) that "
                                               r"nntrace does not run, for safety"):
        load_keras(path)


def test_keras_safe_mode_refusals_become_one_clear_error(tmp_path, monkeypatch):
    import keras

    from nntrace.models.convert import load_keras

    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    seen = {}

    def refuse(filepath, safe_mode=True, **kwargs):
        seen["safe_mode"] = safe_mode
        raise ValueError("Requested the deserialization of a function... pass `safe_mode=False` to load it")

    monkeypatch.setattr(keras.models, "load_model", refuse)
    with pytest.raises(UnsafeModelError, match=r"m\.keras.*contains code that nntrace does not run"):
        load_keras(path)
    assert seen["safe_mode"] is True


# -- fuzzing -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@FUZZ
@given(kind=st.sampled_from(["cnn", "lstm"]), cut=st.floats(0, 1, exclude_max=True),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=6))
def test_fuzz_truncated_and_flipped_bytes(fuzz_dir, kind, cut, flips):
    data = bytearray(source(kind))
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    if not flips:
        data = data[:int(cut * len(data))]
    path = fuzz_dir / "bytes.npz"
    path.write_bytes(bytes(data))
    loads_or_refuses(path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8)


def paths_in(value, prefix=()):
    """Every key path into a JSON value (the value itself first)."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield from paths_in(inner, prefix + (key,))


@FUZZ
@given(kind=st.sampled_from(["cnn", "lstm"]), data=st.data())
def test_fuzz_architecture_fields(fuzz_dir, kind, data):
    arch = architecture(kind)
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        where = data.draw(st.sampled_from(list(paths_in(arch))[1:]), label="field")
        parent = arch
        for key in where[:-1]:
            parent = parent[key]
        if data.draw(st.booleans(), label="delete"):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(JSON_VALUES, label="value")
    arrays = {k: v for k, v in arrays_of(source(kind)).items() if k != ARCH_KEY}
    loads_or_refuses(write_npz(fuzz_dir / "arch.npz", arrays, arch))


ARRAYS = st.one_of(
    st.builds(lambda shape, dtype: np.zeros(shape, dtype), st.lists(st.integers(0, 5), max_size=4).map(tuple),
              st.sampled_from(["float32", "float64", "int8", "uint16", "bool", "complex64", "U3", "S2", "V4"])),
    st.just(np.array("text")), st.just(np.array([np.inf, 1.0])))


@FUZZ
@given(kind=st.sampled_from(["cnn", "lstm"]), data=st.data())
def test_fuzz_weight_arrays(fuzz_dir, kind, data):
    arrays = arrays_of(source(kind))
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        key = data.draw(st.sampled_from(sorted(arrays)) | st.text("abc/_", min_size=1, max_size=5), label="array")
        if key in arrays and data.draw(st.booleans(), label="delete"):
            del arrays[key]
        else:
            arrays[key] = data.draw(ARRAYS, label="value")
    loads_or_refuses(write_npz(fuzz_dir / "weights.npz", arrays))


@pytest.mark.parametrize("given, message", [
    (None, "expects input an array .* got None"),
    ([[1.0, 2.0], [3.0]], "got nested lists of uneven lengths"),
    ("abc", "expects input of shape \\(batch, 8, 8, 3\\), got shape \\(\\)"),
])
def test_predict_proba_on_what_is_not_a_batch_is_one_clear_error(given, message):
    with pytest.raises(NNTraceError, match=message):
        tiny_cnn().predict_proba(given)


def test_a_path_that_is_not_a_model_file_is_named(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, not a model file"):
        load_scratch(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_scratch(tmp_path / "nothing.txt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NNTraceError, match="expected a model file: a scratch model '.npz' or a Keras v3 '.keras'"):
        load_scratch(tmp_path / "notes.txt")


def test_a_keras_file_whose_weights_do_not_fit_says_why(tmp_path):
    import keras

    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="head")])
    small.save(tmp_path / "three.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "three.keras").read("config.json"))
    config["config"]["layers"][-1]["config"]["units"] = 5  # the stored kernel is 4×3
    with zipfile.ZipFile(tmp_path / "three.keras") as src, zipfile.ZipFile(tmp_path / "five.keras", "w") as dst:
        for item in src.infolist():
            dst.writestr(item, json.dumps(config) if item.filename == "config.json" else src.read(item))
    with pytest.raises(NNTraceError, match=r"variable.shape=\(4, 5\), Received: value.shape=\(4, 3\)") as info:
        load_scratch(tmp_path / "five.keras")
    assert "\n" not in str(info.value) and len(str(info.value)) < 500


def test_save_weights_to_a_directory_asks_for_a_file_name(tmp_path):
    for given in (f"{tmp_path}/", f"{tmp_path}/.", "."):
        with pytest.raises(IsADirectoryError, match="give the weights file a name"):
            tiny_cnn().save_weights(given)
    (tmp_path / "cnn").mkdir()  # a directory beside: `cnn` still names the file cnn.npz
    assert tiny_cnn().save_weights(tmp_path / "cnn") == tmp_path / "cnn.npz"
    (tmp_path / "taken.npz").mkdir()
    with pytest.raises(IsADirectoryError, match="give the weights file another name"):
        tiny_cnn().save_weights(tmp_path / "taken")


@pytest.mark.parametrize("labels", [["negatif", "netral", "pe\u200cnting"], ["👍", "😐", "👨\u200d💻"],
                                    ["Zu\u00adcker", "שלום\u200f", "\u061cعربي"],
                                    ["wj\u2060x", "🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F", "b"]])
def test_labels_with_the_format_characters_of_real_text_save_and_load(tmp_path, labels):
    """Joiners (Persian, Hindi, emoji sequences), the soft hyphen, the direction marks, the word
    joiner and emoji tag sequences belong to real text: kept. Only controls and the bidi
    embeddings, overrides and isolates are refused."""
    model = tiny_cnn()
    model.meta["labels"] = labels
    assert load_scratch(model.save_weights(tmp_path / "m.npz")).meta["labels"] == labels


@pytest.mark.parametrize("labels, message", [(["cat", "\x1b[2Jdog", "ship"], r"'meta.labels\[1\]' holds .*U\+001B"),
                                             (["cat", "dog"], "names 2 classes, but the model gives 3 outputs")])
def test_what_load_would_refuse_is_not_saved(tmp_path, labels, message):
    model = tiny_cnn()
    model.meta["labels"] = labels
    with pytest.raises(ModelFileError, match=message):
        model.save_weights(tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []
