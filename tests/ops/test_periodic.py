"""Heads merged into the batch ([batch, heads, seq, d] -> [batch*heads, seq, d], as DeBERTa's attention writes
it): the merged axis is periodic (head = position mod heads). Tile over the batch, a broadcast Expand onto
the merged axis, GatherElements along another axis and the merged size read back with Shape all keep the
heads prunable, exactly, at any batch size; what cannot be followed freezes."""

from __future__ import annotations

import numpy as np

from graphprune.analysis.coupling import analyze
from tests.graphs import GraphBuilder
from tests.harness import assert_group_equivalent, frozen_reasons, load

HEADS, D, KEYS = 2, 4, 3
X = {"x": ["batch", "seq", 8]}


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _merged_query(b: GraphBuilder) -> tuple[str, str]:
    """q = x @ W split into heads and merged into the batch: ([batch*heads, seq, d], the seq entry as [1])."""
    q = b.op("MatMul", ["x", b.weight(8, HEADS * D)])
    split = b.op("Transpose", [b.op("Reshape", [q, b.const(_i64(0, 0, HEADS, D))])], perm=[0, 2, 1, 3])
    seq = b.op("Gather", [b.op("Shape", ["x"]), b.const(_i64(1))], axis=0)
    return b.op("Reshape", [split, b.op("Concat", [b.const(_i64(-1)), seq, b.const(_i64(D))], axis=0)]), seq


def _unmerge_and_project(b: GraphBuilder, scores: str, seq: str) -> str:
    """[batch*heads, seq, k] -> [batch, seq, heads*k] @ W_out."""
    back = b.op("Reshape", [scores, b.op("Concat", [b.const(_i64(-1, HEADS)), seq, b.const(_i64(KEYS))], axis=0)])
    flat = b.op("Reshape", [b.op("Transpose", [back], perm=[0, 2, 1, 3]), b.const(_i64(0, 0, HEADS * KEYS))])
    return b.op("MatMul", [flat, b.weight(HEADS * KEYS, 5)])


def _tiled_keys(b: GraphBuilder, merged: str) -> str:
    """Per-head position keys [heads, KEYS, d] tiled `merged.size(0) // heads` times over the batch."""
    count = b.op("Div", [b.op("Gather", [b.op("Shape", [merged]), b.const(_i64(0))], axis=0), b.const(_i64(HEADS))])
    repeats = b.op("Concat", [count, b.const(_i64(1, 1))], axis=0)
    return b.op("Tile", [b.weight(HEADS, KEYS, D), repeats])


def test_tiled_keys_and_a_size_read_back_keep_heads_exact_at_any_batch():
    """The legacy DeBERTa form: the repeat count is the merged size divided by the head count, so the rewrite
    seals that read (it must still give the batch) while the merge and split targets follow the new width."""
    b = GraphBuilder()
    merged, seq = _merged_query(b)
    scores = b.op("MatMul", [merged, b.op("Transpose", [_tiled_keys(b, merged)], perm=[0, 2, 1])])
    model = b.build(X, [_unmerge_and_project(b, scores, seq)], opset=17)
    heads = [g for g in analyze(load(model)).prunable() if g.size == HEADS]
    assert len(heads) == 1 and any(m.periodic for m in heads[0].members)
    for batch in (1, 3):
        assert_group_equivalent(model, heads[0], dims={"batch": batch, "seq": 5})


def test_broadcast_gather_index_onto_the_merged_axis_is_scaled():
    """The dynamo form: a [1, seq, k] index Expanded to [batch*heads, seq, k] (target `heads * batch`) and read
    by GatherElements along k. Two layers share the one Expand, as the dynamo exporter writes it; each still
    prunes its own heads."""
    b = GraphBuilder()
    batch = b.op("Gather", [b.op("Shape", ["x"]), b.const(_i64(0))], axis=0)
    seq = b.op("Gather", [b.op("Shape", ["x"]), b.const(_i64(1))], axis=0)
    target = b.op("Concat", [b.op("Mul", [batch, b.const(_i64(HEADS))]), seq, b.const(_i64(KEYS))], axis=0)
    index = b.op("Expand", [b.const(np.random.default_rng(0).integers(0, KEYS, (1, 1, KEYS))), target])
    outputs = []
    for _ in range(2):
        merged, seq_entry = _merged_query(b)
        scores = b.op("MatMul", [merged, b.op("Transpose", [_tiled_keys(b, merged)], perm=[0, 2, 1])])
        picked = b.op("GatherElements", [scores, index], axis=2)
        outputs.append(_unmerge_and_project(b, b.op("Add", [scores, picked]), seq_entry))
    model = b.build(X, [b.op("Add", outputs)], opset=17)
    heads = [g for g in analyze(load(model)).prunable() if g.size == HEADS]
    assert len(heads) == 2
    for group in heads:
        assert_group_equivalent(model, group, dims={"batch": 3, "seq": 5})


def test_a_merged_size_read_for_anything_but_shapes_freezes():
    """The merged size cast to float and used as a value cannot be sealed: its heads freeze with the reason."""
    b = GraphBuilder()
    merged, seq = _merged_query(b)
    size = b.op("Cast", [b.op("Gather", [b.op("Shape", [merged]), b.const(_i64(0))], axis=0)], to=1)
    scaled = b.op("Div", [merged, size])
    scores = b.op("MatMul", [scaled, b.op("Transpose", [_tiled_keys(b, merged)], perm=[0, 2, 1])])
    model = b.build(X, [_unmerge_and_project(b, scores, seq)], opset=17)
    assert not [g for g in analyze(load(model)).prunable() if g.size == HEADS]
    assert any("read by a Shape op" in r for r in frozen_reasons(model))


def test_tile_of_a_constant_count_maps_copies_to_their_channel():
    """Tile by a constant count: copy r of channel c is position r*C + c of one group."""
    b = GraphBuilder()
    y = b.op("Relu", [b.op("MatMul", ["x", b.weight(8, 6)])])                  # [B, S, 6]
    tiled = b.op("Tile", [y, b.const(_i64(1, 1, 2))])                          # [B, S, 12]
    model = b.build(X, [b.op("MatMul", [tiled, b.weight(12, 5)])], opset=17)
    groups = analyze(load(model)).prunable()
    assert [g.size for g in groups] == [6]
    assert_group_equivalent(model, groups[0], dims={"batch": 2, "seq": 3})


def test_tile_of_a_size_one_axis_freezes():
    b = GraphBuilder()
    y = b.op("ReduceMean", [b.op("MatMul", ["x", b.weight(8, 6)])], axes=[2], keepdims=1)  # [B, S, 1]
    tiled = b.op("Tile", [y, b.const(_i64(1, 1, 6))])
    coupled = b.op("Add", [tiled, b.op("MatMul", ["x", b.weight(8, 6)])])
    model = b.build(X, [b.op("MatMul", [coupled, b.weight(6, 5)])], opset=17)
    assert any("Tile repeats an axis of size 1" in r for r in frozen_reasons(model))


def test_a_static_batch_of_two_splits_back_onto_the_heads_its_units_follow():
    """At a static batch of 2 the merged axis is a plain 2*heads; the split back to [2, heads] must follow the
    factor the merged units already follow (position mod heads), not the outermost one (the batch)."""
    b = GraphBuilder()
    q = b.op("MatMul", ["x", b.weight(8, HEADS * D)])
    split = b.op("Transpose", [b.op("Reshape", [q, b.const(_i64(0, 0, HEADS, D))])], perm=[0, 2, 1, 3])
    merged = b.op("Reshape", [split, b.const(_i64(2 * HEADS, 5, D))])           # [2*heads, 5, d]
    tiled = b.op("Tile", [b.weight(HEADS, KEYS, D), b.const(_i64(2, 1, 1))])    # [2*heads, KEYS, d]
    scores = b.op("MatMul", [merged, b.op("Transpose", [tiled], perm=[0, 2, 1])])
    back = b.op("Reshape", [scores, b.const(_i64(2, HEADS, 5, KEYS))])
    flat = b.op("Reshape", [b.op("Transpose", [back], perm=[0, 2, 1, 3]), b.const(_i64(0, 0, HEADS * KEYS))])
    model = b.build({"x": [2, 5, 8]}, [b.op("MatMul", [flat, b.weight(HEADS * KEYS, 5)])], opset=17)
    heads = [g for g in analyze(load(model)).prunable() if g.size == HEADS]
    assert len(heads) == 1, [g.summary() for g in analyze(load(model)).groups]
    assert_group_equivalent(model, heads[0])
