"""Canonicalisation folds only what it can prove: static shape reads, pass-through shape arithmetic; shared
constants are copied per reader (and merged back where untouched)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphprune.analysis.coupling import analyze
from graphprune.canonicalize.constants import CLONE
from graphprune.canonicalize.folds import fold_pass_throughs, fold_static_shapes
from graphprune.io.load import from_proto
from graphprune.passes import prune_file
from tests.graphs import GraphBuilder
from tests.harness import assert_group_equivalent


def replace_minus_one_model(minus_one_possible: bool) -> onnx.ModelProto:
    """shape = Where(Equal(s, -1), 1, s) with s = Concat(Shape(x)[0], c); Expand(y, shape)."""
    c = np.array([-1 if minus_one_possible else 3], dtype=np.int64)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape_x"]),
        helper.make_node("Gather", ["shape_x", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "c"], ["s"], axis=0),
        helper.make_node("Equal", ["s", "neg"], ["is_neg"]),
        helper.make_node("Where", ["is_neg", "ones", "s"], ["shape"]),
        helper.make_node("Expand", ["y", "shape"], ["out"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]),
             helper.make_tensor("axes0", TensorProto.INT64, [1], [0]),
             helper.make_tensor("c", TensorProto.INT64, [1], c.tolist()),
             helper.make_tensor("neg", TensorProto.INT64, [2], [-1, -1]),
             helper.make_tensor("ones", TensorProto.INT64, [2], [1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3]),
                                           helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_where_replacing_minus_one_folds_only_when_no_entry_can_be_minus_one():
    safe = from_proto(replace_minus_one_model(minus_one_possible=False))
    assert "Where" not in {n.op_type for n in safe.graph}
    unsafe = from_proto(replace_minus_one_model(minus_one_possible=True))
    assert "Where" in {n.op_type for n in unsafe.graph}
    assert fold_pass_throughs(unsafe) == 0


def test_static_shape_reads_fold_and_dynamic_ones_stay():
    model = from_proto(replace_minus_one_model(minus_one_possible=False))
    ops = [n.op_type for n in model.graph]
    assert "Shape" in ops  # the batch size is dynamic: its read stays
    assert fold_static_shapes(model) == 0


def shared_bias_model(channels: int, through_identity: bool) -> onnx.ModelProto:
    """Two convs in parallel branches read one bias (directly, or each through an Identity as the TorchScript
    exporter writes it); a scalar both branches multiply by is shared too; concat → conv."""
    b = GraphBuilder()
    bias, scale = b.const(np.zeros(channels, np.float32)), b.const(np.array(2.0, np.float32))
    branches = []
    for _ in range(2):
        read = b.op("Identity", [bias]) if through_identity else bias
        conv = b.op("Conv", ["x", b.weight(channels, 4, 1, 1), read])
        branches.append(b.op("Mul", [b.op("Relu", [conv]), scale]))
    return b.build({"x": [1, 4, 6, 6]}, [b.conv(b.op("Concat", branches, axis=1), 2 * channels, 3)])


@pytest.mark.parametrize("through_identity", [False, True])
def test_shared_constants_no_longer_couple_layers(through_identity):
    model = shared_bias_model(96, through_identity)
    analysis = analyze(from_proto(model))
    assert sorted(g.size for g in analysis.prunable()) == [96, 96]
    for group in analysis.prunable():
        assert_group_equivalent(model, group)


def test_untouched_copies_are_written_once(tmp_path):
    target = tmp_path / "out.onnx"
    prune_file(tmp_path_model(tmp_path, shared_bias_model(96, False)), target, ratio=0.5)
    written = onnx.load(str(target)).graph.initializer
    assert not any(CLONE in t.name for t in written if t.dims == [])  # the scalar: one initializer again
    assert sum(1 for t in written if list(t.dims) == [48]) == 2  # each branch's bias, sliced its own way


def tmp_path_model(folder, proto: onnx.ModelProto):
    path = folder / "model.onnx"
    onnx.save(proto, path)
    return path


@pytest.mark.parametrize("form", ["gather", "slice", "shape_end"])
def test_flatten_by_the_batch_size_read_at_run_time_prunes(form):
    """x.view(x.size(0), -1) under a dynamic batch, in the three ways exporters read the size: the target
    becomes [0, -1] and the conv's channels prune through the flatten into the Linear."""
    b = GraphBuilder()
    h = b.op("Relu", [b.conv("x", 4, 8)])
    if form == "gather":
        zero = b.const(np.array(0))
        lead = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [h]), zero], axis=0), b.const(np.array([0]))])
    elif form == "slice":
        lead = b.op("Slice", [b.op("Shape", [h]), b.const(np.array([0])), b.const(np.array([1]))])
    else:
        lead = b.op("Shape", [h], end=1)
    flat = b.op("Reshape", [h, b.op("Concat", [lead, b.const(np.array([-1]))], axis=0)])
    model = b.build({"x": ["batch", 4, 8, 8]}, [b.op("Gemm", [flat, b.weight(5, 8 * 64), b.weight(5)], transB=1)],
                    opset=18)
    (group,) = analyze(from_proto(model)).prunable()
    assert group.size == 8
    assert_group_equivalent(model, group)


def test_a_size_read_at_another_position_is_not_a_copy():
    """view(x.size(2), -1) on [batch, 8, height, 8]: entry 0 reads the height, not the batch — no constant."""
    b = GraphBuilder()
    h = b.op("Relu", [b.conv("x", 4, 8)])
    lead = b.op("Slice", [b.op("Shape", [h]), b.const(np.array([2])), b.const(np.array([3]))])
    b.op("Reshape", [h, b.op("Concat", [lead, b.const(np.array([-1]))], axis=0)])
    model = from_proto(b.build({"x": ["batch", 4, "height", 8]}, [b.nodes[-1].output[0]], opset=18))
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    assert reshape.inputs[1].const_value is None


def _keras_dense(b: GraphBuilder, x: str, d: int, f: int) -> str:
    """tf2onnx's Dense on [batch, seq, d]: flatten, MatMul, unflatten by Cast(Concat(Gather(Cast(Shape(x))),
    [f]))."""
    sizes = b.op("Gather", [b.op("Cast", [b.op("Shape", [x])], to=TensorProto.INT32),
                            b.const(np.array([0, 1], dtype=np.int32))], axis=0)
    target = b.op("Cast", [b.op("Concat", [sizes, b.const(np.array([f], dtype=np.int32))], axis=0)],
                  to=TensorProto.INT64)
    flat = b.op("Reshape", [x, b.const(np.array([-1, d]))])
    return b.op("Reshape", [b.op("MatMul", [flat, b.weight(d, f)]), target])


def test_keras_dense_on_sequences_becomes_a_batched_matmul():
    b = GraphBuilder()
    hidden = b.op("Relu", [_keras_dense(b, "x", 8, 16)])
    model = b.build({"x": ["batch", 6, 8]}, [_keras_dense(b, hidden, 16, 4)])
    loaded = from_proto(model)
    assert [n.op_type for n in loaded.graph] == ["MatMul", "Relu", "MatMul"]
    (group,) = analyze(loaded).prunable()
    assert group.size == 16 and group.kind == "neuron"
    assert_group_equivalent(model, group)


def padded_conv_stack(dynamo: bool, path) -> onnx.ModelProto:
    """F.pad before each conv: the legacy exporter writes constant pads as a ConstantOfShape → Concat →
    Reshape → Slice → Transpose → Cast subgraph, the dynamo exporter as a constant."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    class Padded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Conv1d(4, 16, 3), torch.nn.Conv1d(16, 16, 3)
            self.head = torch.nn.Linear(16, 5)

        def forward(self, x):
            y = torch.relu(self.a(F.pad(x, (1, 1))))
            y = torch.relu(self.b(F.pad(y, (2, 0), mode="reflect")))
            return self.head(y.mean(-1))

    torch.manual_seed(0)
    torch.onnx.export(Padded().eval(), (torch.randn(1, 4, 20),), str(path), dynamo=dynamo, input_names=["x"],
                      dynamic_axes=None if dynamo else {"x": {0: "batch"}}, opset_version=18 if dynamo else 13)
    return onnx.load(str(path))


def test_constant_pad_subgraphs_fold_like_the_dynamo_constant(tmp_path):
    """Any standard op over small constants folds (ONNX's reference implementation computes the ones without a
    folder of their own), so both exports give the same prunable structure, each exact."""
    shapes = {}
    for dynamo in (False, True):
        model = padded_conv_stack(dynamo, tmp_path / f"padded_{dynamo}.onnx")
        analysis = analyze(from_proto(model))
        shapes[dynamo] = sorted((g.kind, g.size) for g in analysis.prunable())
        for group in analysis.prunable():
            assert_group_equivalent(model, group, dims={"batch": 2})
    assert shapes[False] == shapes[True] == [("channel", 16), ("channel", 16)]
