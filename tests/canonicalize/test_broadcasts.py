"""A shared Expand gets one copy per reader: the model computes the same, and its readers are no longer tied."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.canonicalize.broadcasts import unshare_broadcasts
from graphprune.io import runtime
from tests.graphs import GraphBuilder


def test_each_reader_of_a_shared_expand_gets_its_own_and_outputs_stay_the_same():
    b = GraphBuilder()
    shape = b.op("Shape", ["x"])
    mask = b.op("Expand", [b.const(np.ones((1, 4), np.float32)), shape])
    outputs = [b.op("Mul", [b.op("MatMul", ["x", b.weight(4, 4)]), mask]) for _ in range(3)]
    proto = b.build({"x": ["batch", 4]}, [b.op("Sum", outputs)], opset=17)
    model = ir.from_proto(proto)
    assert unshare_broadcasts(model) == 2
    expands = [n for n in model.graph if n.op_type == "Expand"]
    assert len(expands) == 3 and all(len(n.outputs[0].uses()) == 1 for n in expands)
    x = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    before = runtime.run(runtime.session(ir.from_proto(proto)), x)[0]
    after = runtime.run(runtime.session(model), x)[0]
    np.testing.assert_array_equal(after, before)
    assert unshare_broadcasts(model) == 0
