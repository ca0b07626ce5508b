"""Canonicalisation folds only what it can prove: static shape reads, pass-through shape arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphprune.canonicalize import fold_pass_throughs, fold_static_shapes
from graphprune.io import from_proto


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
