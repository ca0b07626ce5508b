"""Gemm and MatMul in every form, channels-last linear layers: masked equivalence for every prunable group."""

from __future__ import annotations

import numpy as np

from tests.graphs import GraphBuilder
from tests.harness import assert_all_groups_equivalent

X = {"x": ["batch", 4, 8, 8]}


def test_gemm_and_matmul_forms():
    b = GraphBuilder()
    flat = b.op("Flatten", [b.op("Relu", [b.conv("x", 4, 3)])], axis=1)
    hidden = b.op("Gemm", [flat, b.weight(3 * 64, 12), b.weight(12)], transB=0)
    act = b.op("Tanh", [hidden])
    projected = b.op("Add", [b.op("MatMul", [act, b.weight(12, 7)]), b.weight(7)])
    out = b.op("MatMul", [b.op("Relu", [projected]), b.weight(7, 3)])
    assert_all_groups_equivalent(b.build(X, [out]), least=3)


def test_channels_last_linear_with_layerscale():
    b = GraphBuilder()
    y = b.op("Transpose", [b.conv("x", 4, 6)], perm=[0, 2, 3, 1])          # [B, 8, 8, 6]
    y = b.op("Add", [b.op("MatMul", [y, b.weight(6, 12)]), b.weight(12)])
    y = b.op("Mul", [b.op("Gelu", [y]), b.weight(12)])                     # LayerScale-like per-channel Mul
    y = b.op("MatMul", [y, b.weight(12, 5)])
    out = b.op("ReduceMean", [y, b.const(np.array([1, 2]))], keepdims=0)
    assert_all_groups_equivalent(b.build(X, [out], opset=20), least=2)
