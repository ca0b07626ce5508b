"""Einsum read by subscript letters: Linear-style contractions with constant weights, shared letters, '...',
implicit outputs — masked equivalence in ONNX Runtime — and the contractions that must freeze."""

from __future__ import annotations

import pytest

from graphprune.analysis.coupling import analyze
from tests.graphs import GraphBuilder
from tests.harness import assert_group_equivalent, load

TOKENS = {"x": ["batch", 5, 8]}


def two_layers(first: str, second: str) -> GraphBuilder:
    """x[b, t, 8] → einsum with W1 [8, 12] → Relu → einsum with W2 [12, 6] → output."""
    b = GraphBuilder()
    h = b.op("Relu", [b.op("Einsum", ["x", b.weight(8, 12)], equation=first)])
    b.out = b.op("Einsum", [h, b.weight(12, 6)], equation=second)
    return b


@pytest.mark.parametrize(("first", "second"), [
    ("btd,df->btf", "btf,fo->bto"),
    ("...d,df->...f", "...f,fo->...o"),
    ("abc,cd", "abd,de"),  # implicit output: the letters used once, sorted
], ids=["explicit", "ellipsis", "implicit"])
def test_linear_contractions_prune_exactly(first, second):
    b = two_layers(first, second)
    model = b.build(TOKENS, [b.out])
    prunable = analyze(load(model)).prunable()
    assert [g.size for g in prunable] == [12], [g.summary() for g in analyze(load(model)).groups]
    assert_group_equivalent(model, prunable[0], dims={"batch": 2})


def test_contraction_between_activations_freezes():
    """Attention-style scores btf,bsf->bts contract f between two activations: f cannot be pruned."""
    b = GraphBuilder()
    q = b.op("Einsum", ["x", b.weight(8, 12)], equation="btd,df->btf")
    k = b.op("Einsum", ["x", b.weight(8, 12)], equation="btd,df->btf")
    scores = b.op("Einsum", [q, k], equation="btf,bsf->bts")
    groups = analyze(load(b.build(TOKENS, [scores]))).groups
    assert all(g.frozen for g in groups if g.size == 12)
    assert any("Einsum contraction between two activations" in r for g in groups for r in g.frozen_reasons)
