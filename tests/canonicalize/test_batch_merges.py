"""Attention as batched products over merged batch·heads axes, with reshape targets computed at run time (the
form tf2onnx writes for Keras MultiHeadAttention): after canonicalisation heads are prunable, and pruning them
is masked-equivalent — on a hand-built graph and on a real tf2onnx export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.canonicalize.batch_merges import fold_inferred_targets
from graphprune.io.load import load_model
from graphprune.ir.values import const_of
from tests.graphs import GraphBuilder
from tests.harness import assert_group_equivalent, load

DATA = Path(__file__).parents[1] / "data"  # tf2onnx exports: see tests/data/make_keras_mha.py
KERAS = {"block": (DATA / "keras_mha_tf2onnx_op13.onnx", ["4 heads x head_dim 8"]),
         "cross": (DATA / "keras_cross_attention_tf2onnx_op13.onnx", ["3 heads x head_dim 8", "2 heads x head_dim 12"])}


def _merged(b: GraphBuilder, t: str, rest: list[int]) -> str:
    """Reshape(t, Concat(ReduceProd(Shape(t)[0:2]), rest)): batch and heads merged into one axis."""
    lead = b.op("ReduceProd", [b.op("Gather", [b.op("Shape", [t]), b.const(np.array([0, 1]))], axis=0)], keepdims=1)
    return b.op("Reshape", [t, b.op("Concat", [lead, b.const(np.array(rest))], axis=0)])


def _split(b: GraphBuilder, product: str, a: str, c: str, rest: list[int]) -> str:
    """Reshape(product, Concat(Max(Shape(a)[0:2], Shape(c)[0:2]), rest)): batch and heads apart again."""
    pick = [b.op("Gather", [b.op("Shape", [t]), b.const(np.array([0, 1]))], axis=0) for t in (a, c)]
    return b.op("Reshape", [product, b.op("Concat", [b.op("Max", pick), b.const(np.array(rest))], axis=0)])


def merged_attention():
    """x[B, 6, 32] → 4 heads of 8, written like tf2onnx: runtime targets read with Shape, heads merged with the
    batch around both MatMuls (the value side transposed after its merge)."""
    b = GraphBuilder()
    flat = b.op("Reshape", ["x", b.const(np.array([-1, 32]))])
    batch_seq = b.op("Gather", [b.op("Shape", ["x"]), b.const(np.array([0, 1]))], axis=0)

    def heads(perm: list[int]) -> str:
        projected = b.op("Gemm", [flat, b.weight(32, 32)], transB=1)
        split = b.op("Reshape", [projected, b.op("Concat", [batch_seq, b.const(np.array([4, 8]))], axis=0)])
        return b.op("Transpose", [split], perm=perm)

    q, k, v = heads([0, 2, 1, 3]), heads([0, 2, 3, 1]), heads([0, 2, 3, 1])
    scores = b.op("MatMul", [_merged(b, q, [-1, 8]), _merged(b, k, [-1, 6])])
    probs = b.op("Softmax", [_split(b, scores, q, k, [6, 6])], axis=-1)
    values = b.op("Transpose", [_merged(b, v, [-1, 6])], perm=[0, 2, 1])
    context = _split(b, b.op("MatMul", [_merged(b, probs, [-1, 6]), values]), probs, v, [6, 8])
    joined = b.op("Transpose", [context], perm=[0, 2, 1, 3])
    joined = b.op("Reshape", [joined, b.op("Concat", [batch_seq, b.const(np.array([32]))], axis=0)])
    return b.build({"x": ["batch", 6, 32]}, {b.op("MatMul", [joined, b.weight(32, 32)]): ["batch", 6, 32]})


def test_a_runtime_target_with_one_unknown_entry_becomes_constant():
    b = GraphBuilder()
    batch = b.op("Gather", [b.op("Shape", ["x"]), b.const(np.array([0]))], axis=0)
    one = b.op("Reshape", ["x", b.op("Concat", [batch, b.const(np.array([6, 4, 8]))], axis=0)])
    both = b.op("Gather", [b.op("Shape", ["x"]), b.const(np.array([0, 1]))], axis=0)
    two = b.op("Reshape", ["x", b.op("Concat", [both, b.const(np.array([-1]))], axis=0)])
    model = ir.serde.deserialize_model(b.build({"x": ["batch", "seq", 32]}, [one, two]))  # not canonicalised
    assert fold_inferred_targets(model) == 1
    targets = {n.outputs[0].name: const_of(n.inputs[1]) for n in model.graph if n.op_type == "Reshape"}
    assert targets[one].tolist() == [-1, 6, 4, 8]
    assert targets[two] is None  # batch and seq both unknown: no constant says both


def test_heads_merged_with_the_batch_around_matmuls_prune():
    model = merged_attention()
    analysis = analyze(load(model))
    heads = [g for g in analysis.prunable() if g.kind == "head"]
    assert [g.detail() for g in heads] == ["4 heads x head_dim 8"]
    for seed in range(3):
        assert_group_equivalent(model, heads[0], seed=seed, dims={"batch": 2})


@pytest.mark.parametrize("name", sorted(KERAS))
def test_keras_multi_head_attention_exported_by_tf2onnx_prunes_heads(name):
    """Self-attention, and cross-attention between inputs of other lengths and batch symbols (key and value
    sizes differ): every head group is prunable and, like every other group, masked-equivalent."""
    path, details = KERAS[name]
    analysis = analyze(load_model(path))
    assert [g.detail() for g in analysis.prunable() if g.kind == "head"] == details
    for group in analysis.prunable():
        for seed in (0, 1):
            assert_group_equivalent(path, group, seed=seed)
