"""Layout chains canonicalised by what they do to element positions: a chain ending in a scalar Gather that
takes a contiguous run of one source axis becomes a Slice; one that takes a strided set stays."""

from __future__ import annotations

import numpy as np

from graphprune.analysis.coupling import analyze
from graphprune.io.load import from_proto
from tests.graphs import GraphBuilder
from tests.harness import assert_group_equivalent


def _packed(interleaved: bool):
    """x [batch, 4] → Linear to 12 → view as (2 slots, 6) → slot 0 and slot 1 → two Linears → sum. With
    `interleaved`, the view is (6, 2) and the slot axis the inner one: each slot takes every other channel."""
    b = GraphBuilder()
    packed = b.op("MatMul", ["x", b.weight(4, 12)])
    shape = [0, 6, 2] if interleaved else [0, 2, 6]
    split = b.op("Reshape", [packed, b.const(np.array(shape))])
    slots = b.op("Transpose", [split], perm=[2, 0, 1] if interleaved else [1, 0, 2])
    picked = [b.op("Gather", [slots, b.const(np.array(s))], axis=0) for s in (0, 1)]
    total = b.op("Add", [b.op("MatMul", [picked[0], b.weight(6, 3)]), b.op("MatMul", [picked[1], b.weight(6, 3)])])
    return b.build({"x": ["batch", 4]}, [total])


def test_a_contiguous_pick_becomes_a_slice_and_prunes():
    model = _packed(interleaved=False)
    ops = [n.op_type for n in from_proto(model).graph]
    assert "Gather" not in ops and ops.count("Slice") == 2
    groups = analyze(from_proto(model)).prunable()
    assert sorted(g.size for g in groups) == [6, 6]  # each slot's 6 channels, pruned with its own consumer
    for group in groups:
        assert_group_equivalent(model, group)


def test_a_strided_pick_stays_a_gather():
    ops = [n.op_type for n in from_proto(_packed(interleaved=True)).graph]
    assert ops.count("Gather") == 2 and "Slice" not in ops


def test_paddles_picked_slices_of_a_packed_qkv_give_heads():
    """Paddle's packed attention (PP-OCRv4's SVTR): qkv reshaped to [B, N, 3, heads, head_dim], permuted to
    [3, B, heads, N, head_dim], q, k, v each a Slice of one index then a Squeeze; the token axis is a size
    expression (paddle2onnx's shape inference). The picks are folded and the heads prune exactly."""
    b = GraphBuilder()
    qkv = b.op("Reshape", [b.op("MatMul", ["x", b.weight(24, 72)]), b.const(np.array([0, 0, 3, 2, 12]))])
    stacked = b.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
    q, k, v = (b.op("Squeeze", [b.op("Slice", [stacked, b.const(np.array([i])), b.const(np.array([i + 1])),
                                               b.const(np.array([0]))]), b.const(np.array([0]))]) for i in range(3))
    scores = b.op("Softmax", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])], axis=-1)
    merged = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [scores, v])], perm=[0, 2, 1, 3]),
                              b.const(np.array([0, 0, 24]))])
    tokens = "floor(p2o.DynamicDimension.1/2 - 1/2) + 1"
    model = b.build({"x": ["batch", tokens, 24]}, {b.op("MatMul", [merged, b.weight(24, 8)]): ["batch", tokens, 8]})
    ops = [n.op_type for n in from_proto(model).graph]
    assert "Squeeze" not in ops and ops.count("Slice") == 3
    (heads,) = analyze(from_proto(model)).prunable()
    assert heads.kind == "head" and heads.detail() == "2 heads x head_dim 12"
    assert_group_equivalent(model, heads, dims={"batch": 2, tokens: 5})
