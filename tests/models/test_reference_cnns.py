"""Reference CNNs, both torch exporters: identity at ratio 0, masked equivalence for every prunable group,
a valid pruned model at ratio 0.5, and the freezes that must happen (and only those)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from graphprune import verify
from graphprune.analysis.coupling import analyze
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.passes import make_plan, prune_file
from tests.harness import assert_group_equivalent, masked_check, outputs

# name -> (prunable groups at least, a reason some frozen group must give, reasons allowed besides
# "graph output"); both are regexes
EXPECT = {
    "resnet": (5, None, None),
    "mobilenet_v2": (6, None, None),
    "mobilenet_v3": (9, None, None),
    "densenet": (5, None, None),
    "inception": (9, None, None),
    "resnext": (2, None, None),
    # the legacy exporter computes torch.chunk's split point from Shape at run time
    "shufflenet": (2, None, "Shape op|Slice with dynamic bounds|computed at run time"),
    "convnext": (1, "approximate .*--prune-hidden", "approximate"),
    # PP-OCR-style detector: FPN sums of laterals and upsampled levels, dynamic height and width
    "text_detector": (9, None, None),
}
DIMS = {"text_detector": {"height": 32, "width": 32}}  # symbolic sizes the export accepts (multiples of 8)
CASES = [(name, dynamo) for name in EXPECT for dynamo in (False, True)]
IDS = [f"{name}-{'dynamo' if dynamo else 'legacy'}" for name, dynamo in CASES]


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_groups_and_freezes(exported, name, dynamo):
    analysis = analyze(load_model(exported(name, dynamo)))
    least, must, allowed = EXPECT[name]
    assert len(analysis.prunable()) >= least
    frozen = [r for g in analysis.groups if g.frozen for r in g.frozen_reasons]
    pattern = "graph output" + (f"|{allowed}" if allowed else "")
    assert all(re.search(pattern, r) for r in frozen), frozen
    if must:
        assert any(re.search(must, r) for r in frozen), frozen


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_ratio_zero_is_identity(exported, name, dynamo):
    path = exported(name, dynamo)
    result = masked_check(path, lambda a: make_plan(a, "l2", 0.0), dims=DIMS.get(name))
    assert result["plan"].is_empty()
    assert result["error"] <= 1e-6


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_masked_equivalence_every_group(exported, name, dynamo):
    path = exported(name, dynamo)
    for group in analyze(load_model(path)).prunable():
        assert_group_equivalent(path, group, dims=DIMS.get(name))


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_half_ratio_pipeline(exported, name, dynamo, tmp_path):
    path = exported(name, dynamo)
    target = tmp_path / "pruned.onnx"
    result = prune_file(path, target, criterion="l2", ratio=0.5, round_to=2)
    assert "onnxruntime run" in result.verification.passed
    verify.check(target)
    assert result.after.params < result.before.params and result.after.macs < result.before.macs
    dense, pruned = runtime.session(path), runtime.session(target)
    feeds = runtime.random_feeds(dense, batch=3, dims=DIMS.get(name))
    shapes = [o.shape for o in runtime.run(dense, feeds)]
    assert [o.shape for o in runtime.run(pruned, feeds)] == shapes


def test_pruned_file_loads_again_and_groups_shrink(exported, tmp_path):
    target = tmp_path / "resnet_pruned.onnx"
    prune_file(exported("resnet", True), target, criterion="l1", ratio=0.5)
    before = sorted(g.size for g in analyze(load_model(exported("resnet", True))).prunable())
    after = sorted(g.size for g in analyze(load_model(target)).prunable())
    assert after == [s - int(np.floor(s * 0.5)) for s in before]
    assert outputs(load_model(target), {"x": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)
