"""Split, Slice, Gather, GatherND and ScatterElements on channel axes: offsets, selections and what must freeze."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from tests.graphs import GraphBuilder
from tests.harness import assert_all_groups_equivalent, frozen_reasons, load

X = {"x": ["batch", 4, 8, 8]}


def test_opset11_split_attr_squeeze_and_slice_attr_free():
    b = GraphBuilder()
    y = b.conv("x", 4, 10)
    left, right = b.op("Split", [y], outputs=2, axis=1, split=[4, 6])
    merged = b.op("Concat", [b.conv(left, 4, 3), b.conv(right, 6, 5)], axis=1)
    pooled = b.op("GlobalAveragePool", [merged])
    flat = b.op("Squeeze", [pooled], axes=[2, 3])
    out = b.op("Gemm", [flat, b.weight(8, 5), b.weight(5)])
    assert_all_groups_equivalent(b.build(X, [out], opset=11), least=3)


def test_split_into_equal_outputs_opset18():
    b = GraphBuilder()
    parts = b.op("Split", [b.conv("x", 4, 8)], outputs=2, axis=1, num_outputs=2)
    y = b.op("Add", [b.conv(parts[0], 4, 4), parts[1]])
    assert_all_groups_equivalent(b.build(X, [b.head(y, 4)], opset=18), least=2)


def test_slice_channel_range_and_pad_and_resize_sizes():
    b = GraphBuilder()
    y = b.conv("x", 4, 10)
    sliced = b.op("Slice", [y, b.const(np.array([2])), b.const(np.array([8])), b.const(np.array([1]))])
    padded = b.op("Pad", [sliced, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))])
    sizes = b.const(np.array([2, 6, 20, 20], dtype=np.int64))
    resized = b.op("Resize", [padded, "", "", sizes], mode="nearest")
    rest = b.op("Slice", [y, b.const(np.array([8])), b.const(np.array([10])), b.const(np.array([1]))])
    out = b.op("Add", [b.head(resized, 6), b.head(rest, 2)])
    assert_all_groups_equivalent(b.build({"x": [2, 4, 8, 8]}, [out]), least=2)


def test_gather_nd_and_scatter_nd_carry_trailing_channels():
    """Mixtral's loop: h[token_ids] (GatherND) feeds an expert, index_add_ (ScatterND) writes it back into
    the running sum; the channel axis after the indexed token axis passes through both."""
    b = GraphBuilder()
    tokens = b.const(np.array([[0], [2], [5]], dtype=np.int64))
    h = b.op("Relu", [b.op("MatMul", ["x", b.weight(8, 12)])])
    picked = b.op("MatMul", [b.op("GatherND", [h, tokens]), b.weight(12, 12)])
    total = b.op("ScatterND", [b.op("MatMul", ["x", b.weight(8, 12)]), tokens, picked], reduction="add")
    model = b.build({"x": [6, 8]}, [b.op("MatMul", [total, b.weight(12, 5)])], opset=18)
    assert_all_groups_equivalent(model, least=2)


def test_gather_nd_freezes_the_axes_it_indexes():
    b = GraphBuilder()
    h = b.op("MatMul", ["x", b.weight(8, 12)])
    picked = b.op("GatherND", [h, b.const(np.array([[0, 3], [2, 7]], dtype=np.int64))])
    model = b.build({"x": [6, 8]}, [picked])
    assert any("GatherND indexes this axis" in r for r in frozen_reasons(model))


def test_scatter_elements_couples_data_updates_and_indices_on_other_axes():
    """index_add_ as ScatterElements(axis 0): updates[i, j] lands in column j, so the channel axis of data,
    updates, indices and output is one; a scatter whose updates cover only some channels freezes them."""
    b = GraphBuilder()
    rows = b.const(np.tile(np.array([[0], [3], [3]], dtype=np.int64), (1, 12)))
    data = b.op("MatMul", ["x", b.weight(8, 12)])
    updates = b.op("Relu", [b.op("MatMul", [b.op("Slice", ["x", b.const(np.array([0])), b.const(np.array([3]))]),
                                            b.weight(8, 12)])])
    total = b.op("ScatterElements", [data, rows, updates], axis=0, reduction="add")
    model = b.build({"x": [6, 8]}, [b.op("MatMul", [total, b.weight(12, 5)])], opset=18)
    assert_all_groups_equivalent(model, least=1)
    narrow = GraphBuilder()
    partial = narrow.op("ScatterElements", [narrow.op("MatMul", ["x", narrow.weight(8, 12)]),
                                            narrow.const(np.zeros((2, 4), dtype=np.int64)), narrow.weight(2, 4)],
                        axis=0)
    model = narrow.build({"x": [6, 8]}, [narrow.op("MatMul", [partial, narrow.weight(12, 5)])], opset=18)
    assert any("updates cover part of this axis" in r for r in frozen_reasons(model))


@pytest.mark.parametrize("indices", [[5, 2, 7, 0], [-1, 3, 1]])
def test_gather_of_constant_channels_is_a_selection(indices):
    """conv (8) → Gather(axis 1, constant indices) → conv: the selected channels prune with their consumer,
    the unselected ones (read by nobody) go freely; the indices are renumbered."""
    b = GraphBuilder()
    h = b.op("Relu", [b.conv("x", 4, 8)])
    picked = b.op("Gather", [h, b.const(np.array(indices, dtype=np.int64))], axis=1)
    model = b.build(X, [b.head(b.conv(picked, len(indices), 6), 6)])
    analysis = analyze(load(model))
    producer = [g for g in analysis.prunable() if any(m.tensor == h for m in g.members)]
    assert sorted(g.size for g in producer) == sorted([len(indices), 8 - len(indices)])
    assert not any("Gather" in r for g in analysis.groups for r in g.frozen_reasons)
    assert_all_groups_equivalent(model, least=3)


def test_gather_with_repeated_channels_stays_frozen_on_its_data_side():
    b = GraphBuilder()
    h = b.op("Relu", [b.conv("x", 4, 8)])
    picked = b.op("Gather", [h, b.const(np.array([1, 1, 2], dtype=np.int64))], axis=1)
    model = b.build(X, [b.head(b.conv(picked, 3, 6), 6)])
    frozen = [r for g in analyze(load(model)).groups for r in g.frozen_reasons]
    assert any("Gather selects along this axis" in r for r in frozen)
