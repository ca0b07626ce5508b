"""Layout ops on channel axes: Reshape splits and merges (channel shuffles, head_dim), Transpose, Unsqueeze,
reductions; tokens flattened into the batch."""

from __future__ import annotations

import numpy as np

from graphprune.analysis.coupling import analyze
from tests.graphs import GraphBuilder
from tests.harness import assert_all_groups_equivalent, assert_group_equivalent, frozen_reasons, load

X = {"x": ["batch", 4, 8, 8]}


def test_reduce_transpose_unsqueeze_gather():
    b = GraphBuilder()
    y = b.op("ReduceMean", [b.conv("x", 4, 6)], axes=[2], keepdims=0)      # [B, 6, 8]
    y = b.op("Transpose", [y], perm=[0, 2, 1])                             # [B, 8, 6]
    y = b.op("Unsqueeze", [y, b.const(np.array([1]))])                     # [B, 1, 8, 6]
    y = b.op("Gather", [y, b.const(np.array(3))], axis=2)                  # [B, 1, 6]
    out = b.op("MatMul", [y, b.weight(6, 2)])
    assert_all_groups_equivalent(b.build(X, [out], opset=17), least=1)


def shuffle(b: GraphBuilder, y: str, groups: int, channels: int) -> str:
    """ShuffleNet's channel shuffle: Reshape → Transpose → Reshape."""
    split = b.op("Reshape", [y, b.const(np.array([0, groups, channels // groups, 8, 8]))])
    return b.op("Reshape", [b.op("Transpose", [split], perm=[0, 2, 1, 3, 4]), b.const(np.array([0, channels, 8, 8]))])


def test_channel_shuffle_prunes_whole_shuffle_groups():
    b = GraphBuilder()
    y = b.op("Relu", [b.conv("x", 4, 18)])
    model = b.build(X, [b.head(b.conv(shuffle(b, y, 3, 18), 18, 5), 5)])
    analysis = analyze(load(model))
    shuffled = [g for g in analysis.prunable() if any(m.tensor == y for m in g.members)]
    assert [g.size for g in shuffled] == [3]  # one unit per shuffle group of 6 channels
    assert_all_groups_equivalent(model, least=2)


def test_split_inner_factor_freezes():
    b = GraphBuilder()
    split = b.op("Reshape", [b.conv("x", 4, 8), b.const(np.array([0, 2, 4, 8, 8]))])
    inner = b.op("ReduceMax", [split], axes=[1], keepdims=0)               # [B, 4, 8, 8]: the inner factor
    coupled = b.op("Add", [inner, b.conv("x", 4, 4)])                      # this conv's channels reach it
    model = b.build(X, [b.head(b.conv(coupled, 4, 6), 6)], opset=17)
    reasons = frozen_reasons(model)
    assert any("inner factor" in r for r in reasons), reasons


def test_flattening_tokens_keeps_channels_prunable():
    """[batch, seq, 12] → Reshape [-1, 12]: ORT's inference names the merged axis batch*seq; the channel axis
    maps 1:1 and its Reshape target entry is rewritten."""
    b = GraphBuilder()
    h = b.op("Relu", [b.op("MatMul", ["x", b.weight(8, 12)])])
    flat = b.op("Reshape", [h, b.const(np.array([-1, 12]))])
    model = b.build({"x": ["batch", "seq", 8]}, [b.op("MatMul", [flat, b.weight(12, 5)])])
    groups = analyze(load(model)).prunable()
    assert [g.size for g in groups] == [12], [g.summary() for g in analyze(load(model)).groups]
    assert_group_equivalent(model, groups[0], dims={"batch": 2, "seq": 3})


def test_squeeze_of_an_axis_of_unknown_size_maps_the_others_in_order():
    """Silero VAD squeezes a time axis that shape inference cannot size (it is 1 at run time): with the axes
    known, the channel axis still maps through, before and after an Unsqueeze."""
    b = GraphBuilder()
    y = b.op("Relu", [b.op("MatMul", [b.op("Transpose", ["x"], perm=[0, 2, 1]), b.weight(4, 8)])])
    y = b.op("Transpose", [y], perm=[0, 2, 1])                                # [B, 8, T]
    squeezed = b.op("Squeeze", [y, b.const(np.array([-1]))])                  # [B, 8] (T is 1 when it runs)
    back = b.op("Unsqueeze", [b.op("MatMul", [squeezed, b.weight(8, 6)]), b.const(np.array([1]))])  # [B, 1, 6]
    model = b.build({"x": ["batch", 4, "time"]}, [b.op("MatMul", [b.op("Relu", [back]), b.weight(6, 3)])], opset=17)
    groups = analyze(load(model)).prunable()
    assert sorted(g.size for g in groups) == [6, 8], [g.summary() for g in analyze(load(model)).groups]
    for group in groups:
        assert_group_equivalent(model, group, dims={"batch": 2, "time": 1})
