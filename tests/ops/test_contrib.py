"""Fused attention and normalisation ops (com.microsoft, opset-23 Attention): heads found from the op's
attributes and layouts, masked equivalence in ONNX Runtime, attributes rewritten."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.passes import apply_plan, make_plan
from tests.graphs import GraphBuilder
from tests.harness import assert_group_equivalent, load

X = {"x": ["batch", "seq", 16]}
MS = "com.microsoft"


def with_ms(model: onnx.ModelProto) -> onnx.ModelProto:
    model.opset_import.append(onnx.helper.make_opsetid(MS, 1))
    return model


def heads_of(model) -> list:
    return [g for g in analyze(load(model)).prunable() if g.kind == "head"]


def check_all(model, heads: int) -> None:
    groups = heads_of(model)
    assert [g.size for g in groups] == [heads], [g.summary() for g in analyze(load(model)).groups]
    for group in analyze(load(model)).prunable():
        assert_group_equivalent(model, group)


def test_fused_attention_packed_qkv():
    b = GraphBuilder()
    att = b.op("Attention", ["x", b.weight(16, 48), b.weight(48)], domain=MS, num_heads=4)
    model = with_ms(b.build(X, {b.op("MatMul", [att, b.weight(16, 8)]): ["batch", "seq", 8]}))
    check_all(model, 4)
    analysis = analyze(load(model))
    pruned = apply_plan(analysis, make_plan(analysis, "l2", 0.5))
    node = next(n for n in pruned.graph if n.op_type == "Attention")
    assert node.attributes["num_heads"].as_int() == 2 and node.inputs[1].const_value.shape[1] == 24


def test_multi_head_attention_with_packed_bias():
    b = GraphBuilder()
    q, k, v = (b.op("MatMul", ["x", b.weight(16, 16)]) for _ in range(3))
    att = b.op("MultiHeadAttention", [q, k, v, b.weight(48)], domain=MS, num_heads=4)
    model = with_ms(b.build(X, {b.op("MatMul", [att, b.weight(16, 8)]): ["batch", "seq", 8]}))
    check_all(model, 4)


def split_heads(b: GraphBuilder, x: str, heads: int) -> str:
    """[B, S, heads·8] → [B, heads, S, 8]."""
    return b.op("Transpose", [b.op("Reshape", [x, b.const(np.array([0, 0, heads, 8]))])], perm=[0, 2, 1, 3])


def test_onnx_attention_4d_gqa():
    b = GraphBuilder()
    q = split_heads(b, b.op("MatMul", ["x", b.weight(16, 32)]), 4)
    k = split_heads(b, b.op("MatMul", ["x", b.weight(16, 16)]), 2)
    v = split_heads(b, b.op("MatMul", ["x", b.weight(16, 16)]), 2)
    att = b.op("Transpose", [b.op("Attention", [q, k, v])], perm=[0, 2, 1, 3])
    merged = b.op("Reshape", [att, b.const(np.array([0, 0, 32]))])
    model = b.build(X, {b.op("MatMul", [merged, b.weight(32, 8)]): ["batch", "seq", 8]}, opset=23)
    model.ir_version = 10
    check_all(model, 2)  # two KV groups of two query heads


def test_onnx_attention_3d_gqa_rewrites_head_counts():
    b = GraphBuilder()
    q, k, v = (b.op("MatMul", ["x", b.weight(16, n)]) for n in (32, 16, 16))
    att = b.op("Attention", [q, k, v], q_num_heads=4, kv_num_heads=2)
    model = b.build(X, {b.op("MatMul", [att, b.weight(32, 8)]): ["batch", "seq", 8]}, opset=23)
    model.ir_version = 10
    check_all(model, 2)
    analysis = analyze(load(model))
    pruned = apply_plan(analysis, make_plan(analysis, "l2", 0.5))
    node = next(n for n in pruned.graph if n.op_type == "Attention")
    assert (node.attributes["q_num_heads"].as_int(), node.attributes["kv_num_heads"].as_int()) == (2, 1)


def test_skip_layernorm_and_bias_gelu():
    b = GraphBuilder()
    hidden = b.op("BiasGelu", [b.op("MatMul", ["x", b.weight(16, 32)]), b.weight(32)], domain=MS)
    ffn = b.op("MatMul", [hidden, b.weight(32, 16)])
    normed = b.op("SkipLayerNormalization", [ffn, "x", b.weight(16, positive=True), b.weight(16), b.weight(16)],
                  domain=MS, epsilon=1e-5)
    model = with_ms(b.build(X, {b.op("MatMul", [normed, b.weight(16, 8)]): ["batch", "seq", 8]}))
    analysis = analyze(load(model), allow_approximate=True)
    assert {g.kind for g in analysis.prunable()} == {"neuron"}  # hidden is frozen: x is a graph input
    for group in analyze(load(model)).prunable():
        assert_group_equivalent(model, group)


def test_contrib_group_query_attention():
    b = GraphBuilder()
    q, k, v = (b.op("MatMul", ["x", b.weight(16, n)]) for n in (32, 16, 16))
    seqlens = b.const(np.array([4], dtype=np.int32))
    total = b.const(np.array([5], dtype=np.int32))
    att = b.op("GroupQueryAttention", [q, k, v, "", "", seqlens, total], outputs=3, domain=MS, num_heads=4,
               kv_num_heads=2)[0]
    model = with_ms(b.build({"x": [1, 5, 16]}, {b.op("MatMul", [att, b.weight(32, 8)]): [1, 5, 8]}))
    check_all(model, 2)  # two KV groups of two query heads
    analysis = analyze(load(model))
    pruned = apply_plan(analysis, make_plan(analysis, "l2", 0.5))
    node = next(n for n in pruned.graph if n.op_type == "GroupQueryAttention")
    assert (node.attributes["num_heads"].as_int(), node.attributes["kv_num_heads"].as_int()) == (2, 1)


@pytest.mark.parametrize("op", ["PackedAttention", "EmbedLayerNormalization"])
def test_unmodelled_fused_ops_freeze(op):
    b = GraphBuilder()
    y = b.op("MatMul", ["x", b.weight(16, 16)])
    z = b.op(op, [y, y, y], domain=MS, num_heads=2, kv_num_heads=2)
    model = with_ms(b.build(X, {b.op("MatMul", [z, b.weight(16, 4)]): ["batch", "seq", 4]}))
    reasons = [r for g in analyze(load(model)).groups for r in g.frozen_reasons]
    assert any(f"{MS}::{op} is not modelled yet" in r for r in reasons), reasons
