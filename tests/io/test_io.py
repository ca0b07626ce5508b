"""Loading and saving: external data, Constant-node weights, atomic writes that leave the input alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphprune import verify
from graphprune.analysis.coupling import analyze
from graphprune.errors import GraphpruneError, ModelLoadError
from graphprune.io import runtime
from graphprune.io.load import from_proto, load_model
from graphprune.io.save import model_files, save_model
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes import apply_plan, make_plan, prune_file
from tests.graphs import GraphBuilder


def test_external_data_round_trip_and_prune(tmp_path):
    source = tmp_path / "ext.onnx"
    onnx.save(onnx.load(DEMO_MODEL), source, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    original = source.read_bytes(), (tmp_path / "ext.onnx.data").read_bytes()
    result = prune_file(source, tmp_path / "out" / "small.onnx", ratio=0.5)
    assert "onnxruntime run" in result.verification.passed
    (data,) = (tmp_path / "out").glob("small.onnx.*.data")  # named by the run that wrote it
    assert model_files(tmp_path / "out" / "small.onnx") == [tmp_path / "out" / "small.onnx", data]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small.onnx", data.name]
    assert (source.read_bytes(), (tmp_path / "ext.onnx.data").read_bytes()) == original
    feeds = {"x": np.zeros((2, 1, 8, 8), np.float32)}
    assert runtime.run(runtime.session(tmp_path / "out" / "small.onnx"), feeds)[0].shape == (2, 10)


def test_constant_node_weights_become_initializers():
    b = GraphBuilder(constant_nodes=True)
    y = b.conv("x", 3, 6)
    model = from_proto(b.build({"x": [1, 3, 4, 4]}, [b.head(y, 6)]))
    assert not [n for n in model.graph if n.op_type == "Constant"]
    assert analyze(model).prunable()


def test_failed_save_leaves_no_partial_output(tmp_path, monkeypatch):
    analysis = analyze(load_model(DEMO_MODEL))
    pruned = apply_plan(analysis, make_plan(analysis, "l2", 0.5))
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("onnx_ir.save", explode)
    with pytest.raises(GraphpruneError, match=f"cannot write {target}: disk full"):
        save_model(pruned, target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_saved_model_passes_full_check(tmp_path):
    analysis = analyze(load_model(DEMO_MODEL))
    save_model(apply_plan(analysis, make_plan(analysis, "l2", 0.3)), tmp_path / "m.onnx")
    verify.check(tmp_path / "m.onnx")


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage", b"hello world" * 50])
def test_unreadable_files_raise_model_load_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        load_model(path)


def test_incomplete_shape_inference_writes_nothing_to_the_working_directory(tmp_path, monkeypatch):
    b = GraphBuilder()
    y = b.conv(b.op("Mystery", [b.conv("x", 3, 8)], domain="com.vendor"), 8, 6)
    proto = b.build({"x": ["batch", 3, 4, 4]}, [b.head(y, 6)])
    proto.opset_import.append(onnx.helper.make_opsetid("com.vendor", 1))
    monkeypatch.chdir(tmp_path)
    from_proto(proto)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "from-our-maps"])
def test_sessions_on_external_data_models_read_the_files_in_place(tmp_path, monkeypatch, in_place):
    """An in-memory model whose weights live in external data (calibration of the original) gets its ORT
    session over the data files themselves — ORT maps them from their folder, told where it is, or (data in
    several folders) copies them from our memory maps: nothing is spilled, nothing is written (not even for a
    moment, so a killed run leaves nothing beside the input), and the outputs are the file's."""
    source = tmp_path / "ext.onnx"
    onnx.save(onnx.load(DEMO_MODEL), source, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    model = load_model(source)

    def fail(*args, **kwargs):
        raise AssertionError("the model was spilled to disk")

    monkeypatch.setattr("graphprune.io.runtime.as_file", fail)
    monkeypatch.setattr("tempfile.mkstemp", fail)
    monkeypatch.setattr("graphprune.io.runtime._session_over_mapped_files" if in_place
                        else "graphprune.io.runtime._session_reading_data_in_place",
                        fail if in_place else lambda *args: None)
    feeds = {"x": np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)}
    in_memory = runtime.run(runtime.session(model), feeds)
    monkeypatch.undo()
    np.testing.assert_array_equal(in_memory[0], runtime.run(runtime.session(source), feeds)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "weights.bin"]


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "from-our-maps"])
def test_weights_changed_in_memory_reach_onnx_runtime_unserialised(tmp_path, monkeypatch, in_place):
    """Weights refit, masked or compensated in memory, in a model whose others stay in external data, are
    never serialised: a weight only linear ops read becomes a graph input fed at every run (callers do not
    see it among the inputs); another (a BatchNormalization's scale) is handed over as a buffer. The outputs
    are those of the same model written out whole."""
    b = GraphBuilder()
    y = b.conv(b.op("Relu", [b.bn(b.conv("x", 3, 8, k=3), 8)]), 8, 4)
    source = tmp_path / "ext.onnx"
    onnx.save(b.build({"x": [2, 3, 6, 6]}, [y]), source, save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    model = load_model(source)
    conv = next(n for n in model.graph if n.op_type == "Conv").inputs[1]
    scale = next(n for n in model.graph if n.op_type == "BatchNormalization").inputs[1]
    for value in (conv, scale):
        value.const_value = ir.tensor(value.const_value.numpy() * -1.5, name=value.name)
    serialised = []
    to_proto = runtime.to_proto
    monkeypatch.setattr("graphprune.io.runtime.to_proto", lambda m: serialised.append(to_proto(m)) or serialised[-1])
    monkeypatch.setattr("graphprune.io.runtime.HANDED_OVER_BYTES", 0)
    if not in_place:
        monkeypatch.setattr("graphprune.io.runtime._session_reading_data_in_place", lambda *args: None)
    feeds = {"x": np.random.default_rng(0).random((2, 3, 6, 6), dtype=np.float32)}
    sess = runtime.session(model)
    outputs = runtime.run(sess, feeds)
    monkeypatch.undo()
    graph = serialised[0].graph
    assert conv.name in {i.name for i in graph.input} and conv.name not in {t.name for t in graph.initializer}
    assert [i.name for i in sess.get_inputs()] == ["x"]
    (stand_in,) = [t for t in graph.initializer if t.name == scale.name]
    assert not stand_in.raw_data and stand_in.external_data[0].value == runtime.IN_MEMORY
    assert all(isinstance(v.const_value, ir.Tensor) and v.name in model.graph.initializers for v in (conv, scale))
    assert [v.name for v in model.graph.inputs] == ["x"]  # the model is given back as it was
    assert list(model.graph.initializers) == list(load_model(source).graph.initializers)
    save_model(model, tmp_path / "whole" / "m.onnx")
    np.testing.assert_allclose(outputs[0], runtime.run(runtime.session(tmp_path / "whole" / "m.onnx"), feeds)[0],
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(outputs[0], runtime.run(runtime.session(source), feeds)[0])  # the change counted


def test_pruned_weights_are_sliced_lazily_and_written_exactly(tmp_path):
    """The rewrite slices weights when they are written (one at a time): nothing is materialised before, and
    what is written equals np.take of the original along the kept positions."""
    analysis = analyze(load_model(DEMO_MODEL))
    plan = make_plan(analysis, "l2", 0.5)
    originals = {name: v.const_value.numpy().copy() for name, v in analysis.model.graph.initializers.items()}
    kept = {}
    for gid, units in plan.removed.items():
        for member in analysis.group(gid).members:
            if member.value.const_value is not None:
                keep = np.setdiff1d(np.arange(len(member.unit_of)), member.positions(units))
                kept.setdefault(member.value.name, {})[member.axis] = keep
    pruned = apply_plan(analysis, plan)
    lazy = [n for n, v in pruned.graph.initializers.items() if isinstance(v.const_value, ir.LazyTensor)]
    assert sorted(lazy) == sorted(kept)
    save_model(pruned, tmp_path / "m.onnx")
    written = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    for name, axes in kept.items():
        expected = originals[name]
        for axis, keep in axes.items():
            expected = np.take(expected, keep, axis=axis)
        np.testing.assert_array_equal(written[name], expected)


def test_random_inputs_index_their_tables_and_masks_attend_everywhere():
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((7, 4), np.float32), "table")
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "ids64"], ["emb"]),
             helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["emb", "maskf"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT32, ["b", "s"]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", "s", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table])
    model = from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8))
    assert runtime.index_ranges(model) == {"ids": 7}
    feeds = runtime.random_feeds(runtime.session(model), batch=4, dims={"s": 50})
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() == 6 and feeds["ids"].dtype == np.int32
    assert np.all(feeds["mask"] == 1)


def test_stale_declared_shapes_lose_to_inference(tmp_path):
    """jax2onnx leaves NHWC value_info on tensors that are NCHW: re-inferred, the convs prune (exactly), and
    the written model declares the true, pruned shapes (it passes the full checker)."""
    from graphprune.passes import prune_file
    from tests.graphs import GraphBuilder
    from tests.harness import assert_group_equivalent

    b = GraphBuilder()
    first = b.op("Relu", [b.conv("x", 4, 16)])
    second = b.op("Relu", [b.conv(first, 16, 8)])
    proto = b.build({"x": [1, 4, 6, 6]}, [b.head(second, 8)], value_info={first: [1, 6, 6, 16], second: [1, 6, 6, 8]})
    groups = analyze(from_proto(proto)).prunable()
    assert sorted(g.size for g in groups) == [8, 16]
    for group in groups:
        assert_group_equivalent(proto, group)
    source, target = tmp_path / "stale.onnx", tmp_path / "out.onnx"
    onnx.save(proto, source)
    prune_file(source, target, ratio=0.5)
    onnx.checker.check_model(str(target), full_check=True)
    declared = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in onnx.load(target).graph.value_info}
    assert declared[first] == [1, 8, 6, 6] and declared[second] == [1, 4, 6, 6]
