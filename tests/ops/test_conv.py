"""Conv rules on hand-built graphs: plain, grouped, depthwise and transposed convolutions, weights given as
Constant nodes, shared weights; masked equivalence for every prunable group."""

from __future__ import annotations

import onnx
import pytest

from graphprune.analysis.coupling import analyze
from tests.graphs import GraphBuilder
from tests.harness import assert_all_groups_equivalent, load

X = {"x": ["batch", 4, 8, 8]}


@pytest.mark.parametrize("constant_nodes", [False, True], ids=["initializers", "constant-nodes"])
def test_conv_chain_with_constant_node_weights(constant_nodes):
    b = GraphBuilder(constant_nodes=constant_nodes)
    y = b.op("Relu", [b.bn(b.conv("x", 4, 6, 3), 6)])
    y = b.op("LeakyRelu", [b.conv(y, 6, 8, 3)], alpha=0.1)
    assert_all_groups_equivalent(b.build(X, [b.head(y, 8)]), least=2)


def test_grouped_depthwise_convtranspose_instancenorm_prelu():
    b = GraphBuilder()
    y = b.conv("x", 4, 8)
    y = b.op("PRelu", [b.conv(y, 8, 8, 3, group=2), b.weight(8, 1, 1)])
    y = b.op("InstanceNormalization", [b.conv(y, 8, 16, 3, group=8), b.weight(16, positive=True), b.weight(16)])
    y = b.op("ConvTranspose", [y, b.weight(16, 6, 2, 2), b.weight(6)], strides=[2, 2], kernel_shape=[2, 2])
    y = b.op("Sigmoid", [b.op("Mul", [y, b.weight(6, 1, 1)])])
    assert_all_groups_equivalent(b.build(X, [b.head(y, 6)]), least=2)


def test_a_weight_two_convs_share_stays_one_tensor(tmp_path):
    """One conv applied twice (a weight with distinct values read by two convs) is genuinely shared: its axes are
    coupled across both readers, it is sliced once and written once, and pruning never adds parameters."""
    from graphprune.passes import prune_file

    b = GraphBuilder()
    shared, bias = b.weight(6, 4, 1, 1), b.weight(6)
    left = b.op("Conv", ["x", shared, bias], kernel_shape=[1, 1])
    right = b.op("Conv", [b.op("Relu", ["x"]), shared, bias], kernel_shape=[1, 1])
    y = b.op("Concat", [b.op("Relu", [left]), right], axis=1)
    model = b.build(X, [b.head(y, 12)])
    groups = analyze(load(model)).prunable()
    owners = [[g for g in groups if any(m.tensor == out for m in g.members)] for out in (left, right)]
    assert all(len(o) == 1 for o in owners) and owners[0][0] is owners[1][0]
    assert_all_groups_equivalent(model)
    source = tmp_path / "shared.onnx"
    source.write_bytes(model.SerializeToString())
    result = prune_file(source, tmp_path / "out.onnx", ratio=0.5)
    written = onnx.load(str(tmp_path / "out.onnx"))
    assert sum(1 for t in written.graph.initializer if len(t.dims) == 4) == 1
    assert result.after.params < result.before.params


def test_a_grouped_conv_of_unknown_width_freezes_its_input_channels_too(tmp_path):
    """tf2onnx writes TFLite's HARD_SWISH as HardSwish even at opset 13, which has no such op (MediaPipe's selfie
    segmenter): shape inference stops there, so a depthwise conv after it has no known width. The channels
    reaching it from the conv before freeze with it (they once stayed prunable, and the rewrite crashed)."""
    from graphprune.passes import prune_file

    b = GraphBuilder()
    y = b.op("HardSwish", [b.conv("x", 4, 8)])
    model = b.build(X, [b.head(b.conv(y, 8, 8, 3, group=8), 8)], opset=13)
    groups = analyze(load(model)).groups
    first = next(g for g in groups if any(m.value.name == model.graph.node[0].input[1] for m in g.members))
    assert any("grouped Conv with unknown channel counts" in r for r in first.frozen_reasons), first.frozen_reasons
    onnx.save(model, tmp_path / "m.onnx")
    result = prune_file(tmp_path / "m.onnx", tmp_path / "out.onnx", ratio=0.5, criterion="l2")
    assert result.verification.passed == [] and any("the original fails it too" in s
                                                     for s in result.verification.skipped)
    assert result.after.params < result.before.params  # the head's input channels still prune
