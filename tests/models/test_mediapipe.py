"""Real pretrained edge detectors from the mediapipe wheel, converted by tf2onnx's TFLite path (see
tests/data/make_mediapipe.py): TFLite grows residual streams by zero-padding channels before an Add, so every
padded chunk of the stream must be its own prunable group, and every group masked-equivalent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.passes import prune_file
from graphprune.verify.cost import count_params
from tests.harness import assert_group_equivalent, load

DATA = Path(__file__).parents[1] / "data"
MODELS = ["mediapipe_face_detection_short_range", "mediapipe_palm_detection_lite"]
HEADS = {"graph output", "Reshape regroups several axes into several axes"}  # the detection heads' anchors


def _path(name: str) -> Path:
    return DATA / f"{name}.onnx"


def _channel_pads(model) -> list[int]:
    """How many zero channels each Pad appends to the stream (axis 1 after tf2onnx's Transposes to NCHW)."""
    amounts = []
    for node in model.graph:
        if node.op_type == "Pad":
            pads = node.inputs[1].const_value.numpy()
            assert pads.tolist() == [0] * 5 + [int(pads[5])] + [0, 0], pads  # the end of axis 1 only
            amounts.append(int(pads[5]))
    return amounts


@pytest.mark.parametrize("name", MODELS)
def test_every_padded_chunk_of_the_stream_is_a_group_of_its_own(name):
    """The stream is the first block's channels followed by each Pad's zeros: one group per chunk (a chunk's
    channels couple with the real ones of the wider operand only at the same positions), and only the
    detection heads freeze."""
    analysis = analyze(load(_path(name)))
    stream_start = next(n for n in analysis.model.graph if n.op_type == "Pad").inputs[0].shape[1]
    assert [g.size for g in analysis.prunable()] == [stream_start, *_channel_pads(analysis.model)]
    assert {r.split(": ", 1)[-1] for g in analysis.groups for r in g.frozen_reasons} <= HEADS
    in_groups = {id(m.value) for g in analysis.prunable() for m in g.members if m.is_param}
    convs = [n.inputs[1] for n in analysis.model.graph if n.op_type == "Conv"]
    assert all(id(w) in in_groups for w in convs)


@pytest.mark.parametrize("name", MODELS)
def test_every_group_is_masked_equivalent(name):
    for group in analyze(load(_path(name))).prunable():
        assert_group_equivalent(_path(name), group)


@pytest.mark.parametrize("name", MODELS)
def test_half_the_channels_pruned_report_the_written_file(name, tmp_path):
    source = _path(name)
    before = source.read_bytes()
    result = prune_file(source, tmp_path / "out.onnx", ratio=0.5)
    assert source.read_bytes() == before
    written = load(tmp_path / "out.onnx")
    assert result.after.params == count_params(written) < 0.5 * result.before.params
    outputs = [o.shape for o in written.graph.outputs]
    assert outputs == [o.shape for o in load(source).graph.outputs]
    assert np.isfinite(result.after.macs) and result.after.macs < result.before.macs
