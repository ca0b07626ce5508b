"""Analysis never crashes on a model: a rule that meets a form it does not model freezes what it was asked
about, naming the op, the rule and why — and what it freezes is what reaches that form, so nothing unsound is
left prunable."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.ops import registry
from tests.graphs import GraphBuilder
from tests.harness import assert_group_equivalent, load

TOKENS = {"x": ["batch", 6, 16]}


def attention_over_merged_batch_and_heads(heads_outer: bool = False) -> onnx.ModelProto:
    """DeBERTa's form: heads split off the projection, then merged with the symbolic batch into one axis
    (`[B, H, S, D] → [B·H, S, D]`, or heads outermost: `[H, B, S, D] → [H·B, S, D]`) for batched products."""
    b = GraphBuilder()
    q = b.op("MatMul", ["x", b.weight(16, 16)])
    perm = [2, 0, 1, 3] if heads_outer else [0, 2, 1, 3]
    heads = b.op("Transpose", [b.op("Reshape", [q, b.const(np.array([0, 0, 4, 4]))])], perm=perm)
    merged = b.op("Reshape", [heads, b.const(np.array([-1, 6, 4]))])
    scores = b.op("Softmax", [b.op("MatMul", [merged, b.op("Transpose", [merged], perm=[0, 2, 1])])], axis=-1)
    context = b.op("MatMul", [scores, merged])
    out = b.op("MatMul", [b.op("Relu", [b.op("MatMul", ["x", b.weight(16, 8)])]), b.weight(8, 4)])
    return b.build(TOKENS, [context, out], opset=17)


def test_heads_merged_under_the_batch_are_followed_and_frozen_where_they_reach_an_output():
    analysis = analyze(load(attention_over_merged_batch_and_heads()))
    heads = next(g for g in analysis.groups if g.size == 4 and g.kind == "head")
    assert any(m.periodic for m in heads.members)
    assert any("graph output" in r for r in heads.frozen_reasons)


def test_heads_merged_outside_the_batch_freeze_and_name_why():
    """[H, B] merged: a head is a block of `batch` positions, a size known only at run time: not modelled."""
    model = attention_over_merged_batch_and_heads(heads_outer=True)
    analysis = analyze(load(model))
    heads = next(g for g in analysis.groups if g.size == 4 and any("Reshape" in r for r in g.frozen_reasons))
    assert any("merges this axis with axes of symbolic size" in r for r in heads.frozen_reasons)
    ffn = [g for g in analysis.prunable()]
    assert [g.size for g in ffn] == [8]  # the unrelated FFN stays prunable, and exact
    assert_group_equivalent(model, ffn[0], dims={"batch": 2})


@pytest.fixture
def failing_rule():
    """A rule for a custom op that raises on every question (an extension point used wrongly)."""
    @registry.register("Fragile", domain="com.example")
    class Fragile(registry.OpRule):
        def couple(self, ctx, node, port, axis):
            raise ValueError("unexpected form")

    yield
    registry._RULES.pop(("com.example", "Fragile"))


def test_a_rule_that_raises_becomes_a_frozen_reason(failing_rule):
    b = GraphBuilder()
    y = b.op("Relu", [b.conv("x", 4, 8)])
    z = b.op("Fragile", [y], domain="com.example")
    model = b.build({"x": ["batch", 4, 8, 8]}, [b.op("ReduceMean", [z], keepdims=0)], opset=18)
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    group = next(g for g in analyze(load(model)).groups if g.size == 8)
    assert group.frozen
    assert any("com.example::Fragile" in r and "rule Fragile cannot model this form (ValueError: unexpected form)"
               in r for r in group.frozen_reasons), group.frozen_reasons
