"""Barriers freeze with the reason the user sees; the registry covers the ops every exporter emits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.ops import registered_ops
from tests.graphs import GraphBuilder
from tests.harness import load

X = {"x": ["batch", 4, 8, 8]}


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
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
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
