"""Pad on a channel axis (TFLite's residual channel growth: zeros padded on, then an Add with a wider tensor):
input positions move by the padding before them, padded positions are constants of their own; both prune
exactly, the pads rewritten. Padding that copies values, crops or is unknown freezes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from tests.graphs import GraphBuilder
from tests.harness import assert_all_groups_equivalent, frozen_reasons, load

X = {"x": ["batch", 4, 8, 8]}
NHWC = {"x": ["batch", 8, 8, 4]}


def channel_growth(opset: int, before: int = 0, after: int = 4, mode: str | None = None) -> onnx.ModelProto:
    b = GraphBuilder()
    narrow = b.op("Relu", [b.conv("x", 4, 8)])
    pads = [0, before, 0, 0, 0, after, 0, 0]
    extra = {"mode": mode} if mode else {}
    if opset < 11:
        padded = b.op("Pad", [narrow], pads=pads, **extra)
    else:
        padded = b.op("Pad", [narrow, b.const(np.array(pads, dtype=np.int64))], **extra)
    wide = b.op("Relu", [b.op("Add", [padded, b.conv("x", 4, 8 + before + after)])])
    return b.build(X, [b.head(b.conv(wide, 8 + before + after, 6), 6)], opset=opset)


@pytest.mark.parametrize("opset", [10, 13, 18])
@pytest.mark.parametrize("before, after", [(0, 4), (2, 3)])
def test_channel_padding_before_an_add_prunes_exactly(opset, before, after):
    model = channel_growth(opset, before, after)
    groups = analyze(load(model)).prunable()
    # the input's channels (with the first channels of the other operand) and the padded ones: two groups
    assert {8, before + after} <= {g.size for g in groups}
    assert not any("Pad" in r for r in frozen_reasons(model))
    assert_all_groups_equivalent(model, least=2)


def test_channels_last_padding_on_the_last_axis():
    """TFLite keeps NHWC: the channel axis is the last one, behind a Transpose."""
    b = GraphBuilder()
    nchw = b.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    narrow = b.op("Transpose", [b.op("Relu", [b.conv(nchw, 4, 8)])], perm=[0, 2, 3, 1])
    padded = b.op("Pad", [narrow, b.const(np.array([0, 0, 0, 0, 0, 0, 0, 4], dtype=np.int64))])
    wide = b.op("Transpose", [b.op("Transpose", [nchw], perm=[0, 2, 3, 1])], perm=[0, 3, 1, 2])
    grown = b.op("Add", [b.op("Transpose", [padded], perm=[0, 3, 1, 2]), b.conv(wide, 4, 12)])
    model = b.build(NHWC, [b.head(b.conv(b.op("Relu", [grown]), 12, 6), 6)], opset=17)
    assert {8, 4} <= {g.size for g in analyze(load(model)).prunable()}
    assert_all_groups_equivalent(model, least=2)


@pytest.mark.parametrize("mode, reason", [("reflect", "reflect mode copies values"),
                                          ("edge", "edge mode copies values")])
def test_padding_that_copies_values_freezes(mode, reason):
    b = GraphBuilder()
    y = b.op("Relu", [b.conv("x", 4, 8)])
    padded = b.op("Pad", [y, b.const(np.array([0, 2, 0, 0, 0, 2, 0, 0], dtype=np.int64))], mode=mode)
    model = b.build(X, [b.head(b.conv(padded, 12, 6), 6)], opset=18)
    assert any(reason in r for r in frozen_reasons(model))


def test_cropping_and_computed_pads_freeze():
    b = GraphBuilder()
    y = b.op("Relu", [b.conv("x", 4, 8)])
    cropped = b.op("Pad", [y, b.const(np.array([0, 0, 0, 0, 0, -2, 0, 0], dtype=np.int64))])
    model = b.build(X, [b.head(b.conv(cropped, 6, 6), 6)], opset=18)
    assert any("crops this axis" in r for r in frozen_reasons(model))
    b = GraphBuilder()
    y = b.op("Relu", [b.conv("x", 4, 8)])
    pads = b.op("Cast", [b.op("Shape", [y])], to=7)  # computed at run time
    model = b.build(X, [b.head(b.op("Pad", [y, b.op("Concat", [pads, pads], axis=0)]), 8)], opset=18)
    assert any("Pad pads (or may pad) this axis" in r for r in frozen_reasons(model))
