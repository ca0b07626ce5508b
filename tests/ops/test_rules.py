"""Op rules on hand-built graphs: masked equivalence for every prunable group, and the freezes that must
happen, with their reasons. Covers op forms the torch exporters do not emit."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis import analyze
from graphprune.ops import registered_ops
from tests.graphs import GraphBuilder
from tests.harness import assert_group_equivalent, load, masked_check, random_subset_plan

X = {"x": ["batch", 4, 8, 8]}


def assert_all_groups_equivalent(model, least: int = 1) -> None:
    prunable = analyze(load(model)).prunable()
    assert len(prunable) >= least, [g.summary() for g in analyze(load(model)).groups]
    for group in prunable:
        assert_group_equivalent(model, group)


def frozen_reasons(model) -> list[str]:
    return [r for g in analyze(load(model)).groups for r in g.frozen_reasons]


@pytest.mark.parametrize("constant_nodes", [False, True], ids=["initializers", "constant-nodes"])
def test_conv_chain_with_constant_node_weights(constant_nodes):
    b = GraphBuilder(constant_nodes=constant_nodes)
    y = b.op("Relu", [b.bn(b.conv("x", 4, 6, 3), 6)])
    y = b.op("LeakyRelu", [b.conv(y, 6, 8, 3)], alpha=0.1)
    assert_all_groups_equivalent(b.build(X, [b.head(y, 8)]), least=2)


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


def test_gemm_and_matmul_forms():
    b = GraphBuilder()
    flat = b.op("Flatten", [b.op("Relu", [b.conv("x", 4, 3)])], axis=1)
    hidden = b.op("Gemm", [flat, b.weight(3 * 64, 12), b.weight(12)], transB=0)
    act = b.op("Tanh", [hidden])
    projected = b.op("Add", [b.op("MatMul", [act, b.weight(12, 7)]), b.weight(7)])
    out = b.op("MatMul", [b.op("Relu", [projected]), b.weight(7, 3)])
    assert_all_groups_equivalent(b.build(X, [out]), least=3)


def test_grouped_depthwise_convtranspose_instancenorm_prelu():
    b = GraphBuilder()
    y = b.conv("x", 4, 8)
    y = b.op("PRelu", [b.conv(y, 8, 8, 3, group=2), b.weight(8, 1, 1)])
    y = b.op("InstanceNormalization", [b.conv(y, 8, 16, 3, group=8), b.weight(16, positive=True), b.weight(16)])
    y = b.op("ConvTranspose", [y, b.weight(16, 6, 2, 2), b.weight(6)], strides=[2, 2], kernel_shape=[2, 2])
    y = b.op("Sigmoid", [b.op("Mul", [y, b.weight(6, 1, 1)])])
    assert_all_groups_equivalent(b.build(X, [b.head(y, 6)]), least=2)


def test_reduce_transpose_unsqueeze_gather():
    b = GraphBuilder()
    y = b.op("ReduceMean", [b.conv("x", 4, 6)], axes=[2], keepdims=0)      # [B, 6, 8]
    y = b.op("Transpose", [y], perm=[0, 2, 1])                             # [B, 8, 6]
    y = b.op("Unsqueeze", [y, b.const(np.array([1]))])                     # [B, 1, 8, 6]
    y = b.op("Gather", [y, b.const(np.array(3))], axis=2)                  # [B, 1, 6]
    out = b.op("MatMul", [y, b.weight(6, 2)])
    assert_all_groups_equivalent(b.build(X, [out], opset=17), least=1)


def test_channels_last_linear_with_layerscale():
    b = GraphBuilder()
    y = b.op("Transpose", [b.conv("x", 4, 6)], perm=[0, 2, 3, 1])          # [B, 8, 8, 6]
    y = b.op("Add", [b.op("MatMul", [y, b.weight(6, 12)]), b.weight(12)])
    y = b.op("Mul", [b.op("Gelu", [y]), b.weight(12)])                     # LayerScale-like per-channel Mul
    y = b.op("MatMul", [y, b.weight(12, 5)])
    out = b.op("ReduceMean", [y, b.const(np.array([1, 2]))], keepdims=0)
    assert_all_groups_equivalent(b.build(X, [out], opset=20), least=2)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda b, y: b.op("DepthToSpace", [y], blocksize=2), "DepthToSpace"),
        (lambda b, y: b.op("Softmax", [y], axis=1), "Softmax normalises over this axis"),
        (lambda b, y: b.op("GroupNormalization", [y, b.weight(8), b.weight(8)], num_groups=2), "GroupNormalization"),
        (lambda b, y: b.op("ReduceSum", [y, b.const(np.array([1]))], keepdims=1), "reduces over this axis"),
        (lambda b, y: b.op("MyOp", [y], domain="com.example"), "unsupported op com.example::MyOp"),
    ],
    ids=["depth-to-space", "softmax-channels", "groupnorm", "reduce-channels", "custom-op"],
)
def test_barriers_freeze_with_reason(build, reason):
    b = GraphBuilder()
    y = b.op("Relu", [b.conv("x", 4, 8)])
    z = b.op("Relu", [build(b, y)])
    model = b.build(X, [b.op("ReduceMean", [z], keepdims=0)], opset=18)
    model.opset_import.append(__import__("onnx").helper.make_opsetid("com.example", 1))
    analysis = analyze(load(model))
    conv_group = next(g for g in analysis.groups if any(m.tensor == y for m in g.members))
    assert conv_group.frozen and any(reason in r for r in conv_group.frozen_reasons), conv_group.frozen_reasons


def test_registry_covers_the_required_ops():
    required = {
        "Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "Relu", "Clip", "Sigmoid",
        "HardSigmoid", "HardSwish", "Gelu", "Erf", "Tanh", "LeakyRelu", "PRelu", "Add", "Sub", "Mul", "Div",
        "Concat", "Split", "Slice", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
        "ReduceMax", "Flatten", "Reshape", "Gemm", "MatMul", "Transpose", "Squeeze", "Unsqueeze", "Resize",
        "Upsample", "Pad", "Identity", "Dropout", "Cast", "DepthToSpace",
    }
    assert {f"ai.onnx::{op}" for op in required} <= set(registered_ops())


def test_shared_weight_uses_prune_independently():
    """A weight read by two convs is copied per reader at load: each use is its own group, both exact."""
    b = GraphBuilder()
    shared, bias = b.weight(6, 4, 1, 1), b.weight(6)
    left = b.op("Conv", ["x", shared, bias], kernel_shape=[1, 1])
    right = b.op("Conv", [b.op("Relu", ["x"]), shared, bias], kernel_shape=[1, 1])
    y = b.op("Concat", [b.op("Relu", [left]), right], axis=1)
    model = b.build(X, [b.head(y, 12)])
    groups = analyze(load(model)).prunable()
    owners = [[g for g in groups if any(m.tensor == out for m in g.members)] for out in (left, right)]
    assert all(len(o) == 1 for o in owners) and owners[0][0] is not owners[1][0]
    for group in groups:  # (params need not drop: the other reader keeps the whole weight)
        result = masked_check(model, random_subset_plan(group.id))
        assert result["error"] <= 1e-5 < result["masking_effect"], (group.label, result)


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
