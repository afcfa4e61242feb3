"""The graph behind a scratch model: order, inbound layers, shared layers, nested models, saving."""
import json

import keras
import numpy as np
import pytest

from nntrace import trace
from nntrace.layers import UnsupportedLayerError
from nntrace.layers.errors import ModelFileError
from nntrace.models import load_scratch
from nntrace.models.graph import Graph, Node, Ref
from tests.keras_models import small_cnn
from tests.parity import assert_parity, randomise_weights

L = keras.layers


def shared_and_nested() -> keras.Model:
    """A Dense called twice, a nested model called twice, masks from an Embedding."""
    inner_in = keras.Input((None, 4))
    inner = keras.Model(inner_in, L.Dense(4, activation="tanh", name="inner_dense")(inner_in), name="inner")
    ids = keras.Input((6,), dtype="int32", name="ids")
    x = L.Embedding(20, 4, mask_zero=True, name="emb")(ids)
    shared = L.Dense(4, name="shared")
    a = shared(x)
    b = shared(inner(a))
    c = inner(L.Add(name="sum")([a, b]))
    out = L.Dense(3, activation="softmax", name="out")(L.GRU(3, name="gru")(L.Concatenate(name="join")([b, c])))
    model = keras.Model(ids, out, name="shared_and_nested")
    randomise_weights(model, 4)
    return model


IDS = np.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6], [7, 0, 0, 0, 0, 0]], np.int32)


def test_shared_layers_and_nested_models_become_one_node_per_call():
    model = shared_and_nested()
    scratch = load_scratch(model)
    assert scratch.order == ["emb", "shared", "inner_dense", "shared:1", "sum", "inner_dense:1", "join", "gru", "out"]
    assert scratch.inbound["shared:1"] == ["inner_dense"] and scratch.inbound["inner_dense:1"] == ["sum"]
    assert [l.name for l in scratch.layers] == ["emb", "shared", "inner_dense", "sum", "join", "gru", "out"]
    assert scratch.layer("shared:1") is scratch.layer("shared")
    assert [l.name for l, _, _ in scratch.forward_layers(IDS)].count("shared") == 2
    assert_parity(model, IDS, scratch)


def test_graphs_round_trip_through_npz(tmp_path):
    scratch = load_scratch(shared_and_nested())
    path = scratch.save_weights(tmp_path / "g.npz")
    again = load_scratch(path)
    assert again.order == scratch.order and again.inbound == scratch.inbound
    assert again.graph.scopes == scratch.graph.scopes and again.graph.scopes
    np.testing.assert_array_equal(again.forward(IDS), scratch.forward(IDS))


def test_a_chain_is_stored_as_before(tmp_path):
    scratch = load_scratch(small_cnn())
    with np.load(scratch.save_weights(tmp_path / "c.npz"), allow_pickle=False) as data:
        arch = json.loads(str(data["__architecture__"]))
    assert "graph" not in arch
    assert scratch.graph.is_chain and scratch.order == [l.name for l in scratch.layers]
    assert scratch.inbound[scratch.order[1]] == [scratch.order[0]]


def tampered(tmp_path, change) -> str:
    path = load_scratch(shared_and_nested()).save_weights(tmp_path / "g.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arch = json.loads(str(arrays["__architecture__"]))
    change(arch["graph"])
    arrays["__architecture__"] = np.array(json.dumps(arch))
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("change,message", [
    (lambda g: g["nodes"].reverse(), "topological order"),
    (lambda g: g["nodes"][0].update(layer="nowhere"), "not a layer of the model"),
    (lambda g: g["nodes"][1]["args"].__setitem__(0, {"$ref": {"node": 3}}), "tensor reference"),
    (lambda g: g.update(output={"node": "missing", "index": 0}), "output"),
    (lambda g: g.pop("nodes"), "'nodes'"),
    (lambda g: g["nodes"][2].update(scope="elsewhere"), "scope"),
])
def test_a_damaged_graph_names_the_file_and_the_fault(tmp_path, change, message):
    with pytest.raises(ModelFileError, match=rf"bad\.npz.*graph.*{message}"):
        load_scratch(tampered(tmp_path, change))


def test_unsupported_layer_inside_a_graph_is_named():
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(2, 3, padding="same")(inputs)
    b = L.GroupNormalization(2, name="gn")(inputs)
    model = keras.Model(inputs, L.Add()([a, b]))
    with pytest.raises(UnsupportedLayerError) as info:
        load_scratch(model)
    assert info.value.layer_name == "gn" and info.value.class_name == "GroupNormalization"
    assert "Concatenate" in str(info.value) and "MultiHeadAttention" in str(info.value)


def test_trace_keeps_each_call_of_a_shared_layer():
    model = shared_and_nested()
    t = trace(load_scratch(model), IDS, sample=0)
    assert [n for n, _ in t.layers][:4] == ["emb", "shared", "inner_dense", "shared:1"]
    assert dict(t.layers)["shared:1"] == "Dense"
    x1, _ = t.inputs["shared:1"]
    np.testing.assert_array_equal(x1, t.output("inner_dense")[None])
    merge = next(t.steps("join"))
    np.testing.assert_array_equal(merge.result, t.output("join"))
    np.testing.assert_array_equal(merge.operands[0], t.output("shared:1"))


def test_graph_checks_its_own_order():
    with pytest.raises(Exception, match="topological order"):
        Graph([{"name": "x"}], [Node("b", "b", [Ref("a")]), Node("a", "a", [Ref("x")])], Ref("b"))


def test_a_model_with_two_inputs_traces_one_sample_of_each():
    a_in, b_in = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    model = keras.Model([a_in, b_in], L.Dense(2, activation="softmax", name="out")(
        L.Concatenate(name="join")([L.Dense(2, name="da")(a_in), b_in])))
    randomise_weights(model, 5)
    rng = np.random.default_rng(5)
    x = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)]
    scratch = load_scratch(model)
    t = trace(scratch, x, sample=2)
    np.testing.assert_allclose(t.probabilities, scratch.forward(x)[2], rtol=1e-6)
    (merge,) = t.steps("join")
    np.testing.assert_array_equal(merge.operands[1], x[1][2])
    with pytest.raises(Exception, match="same batch size"):
        scratch.forward([x[0], x[1][:3]])


def test_call_arguments_nntrace_cannot_reproduce_are_refused():
    ids = keras.Input((5,), dtype="int32")
    state = keras.Input((3,), name="state")
    x = L.Embedding(9, 4)(ids)
    model = keras.Model([ids, state], L.GRU(3, name="gru")(x, initial_state=state))
    with pytest.raises(UnsupportedLayerError, match="'gru'.*initial_state"):
        load_scratch(model)
