"""Sensitivity runs cut short: on graphs other hands wrote (a torch CNN, Paddle's recognizer, a torch BERT), each
group measured on only the graph downstream of its changed weights gives the errors whole runs give."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.io import runtime
from graphprune.models.demo import DEMO_MODEL
from graphprune.models.reference import export_reference
from graphprune.passes.allocation import suffix
from graphprune.passes.allocation.sensitivity import measure
from graphprune.passes.calibration.statistics import calibrate
from graphprune.passes.rewrite.compensation import obs_preview
from tests.harness import load

OCR = DEMO_MODEL.parent / "ocr_recognizer.onnx"


def batches_for(model, dims: dict[str, int]) -> list[dict[str, np.ndarray]]:
    specs, ranges = runtime.input_specs(model), runtime.index_ranges(model)
    return [runtime.random_inputs(specs, dims=dims, ranges=ranges, seed=seed) for seed in range(2)]


@pytest.fixture(scope="module", params=["digits", "ocr", "bert"])
def subject(request, tmp_path_factory):
    """(model path, calibration batches) of a model the team did not write by hand."""
    if request.param == "digits":
        with np.load(DEMO_MODEL.parent / "digits_test.npz") as data:
            return DEMO_MODEL, [{"x": data["x"][:16]}, {"x": data["x"][16:32]}]
    if request.param == "ocr":
        return OCR, batches_for(load(OCR), {"batch": 4})
    path = export_reference("bert", False, tmp_path_factory.mktemp("suffix"))
    return path, batches_for(load(path), {"batch": 2, "seq": 8})


def measured(path, batches, monkeypatch=None, whole: bool = False, depth: bool = False):
    """Measured errors per group (OBS-compensated as the default measures them) and the runner's cut groups."""
    analysis = analyze(load(path), depth=depth)
    stats = calibrate(analysis, iter(batches), 4096)
    groups = [g for g in analysis.prunable() if g.kind != "expert"]
    scores = {g.id: np.random.default_rng(g.id).random(g.size) for g in groups}
    cut = []
    run = suffix.SuffixRunner.run

    def spy(self, group, changed):
        outputs = None if whole else run(self, group, changed)
        if outputs is not None:
            cut.append(group.id)
        return outputs

    monkeypatch.setattr(suffix.SuffixRunner, "run", spy)
    sensitivity = measure(analysis, scores, groups, batches, compensation=obs_preview(analysis, stats))
    return sensitivity.errors, set(cut), groups


def test_cut_short_runs_measure_what_whole_runs_measure(subject, monkeypatch):
    path, batches = subject
    short, cut, groups = measured(path, batches, monkeypatch)
    whole, none, _ = measured(path, batches, monkeypatch, whole=True)
    assert cut == {g.id for g in groups} and not none  # every group was measured cut short, then none was
    for gid, errors in whole.items():
        np.testing.assert_allclose(short[gid], errors, rtol=1e-4, atol=1e-9)
    assert sum(errors[-1] > 1e-6 for errors in whole.values()) >= len(whole) // 2  # masking moves the outputs


def test_the_suffix_holds_only_what_follows_the_change(subject):
    """The last group's suffix is a small tail of the graph; the first one reads the graph inputs or values
    close to them."""
    path, batches = subject
    model = load(path)
    analysis = analyze(model)
    runner = suffix.SuffixRunner(model, analysis.prunable(), batches, [[] for _ in batches])
    sizes = sorted(len(s.nodes) for s, _ in runner.graphs.values())
    assert sizes and sizes[0] < len(list(model.graph)) / 2 and sizes[-1] < len(list(model.graph))


def test_past_the_memory_budget_every_group_runs_whole(monkeypatch):
    monkeypatch.setattr(suffix, "CACHE_BYTES", 0)
    with np.load(DEMO_MODEL.parent / "digits_test.npz") as data:
        batches = [{"x": data["x"][:16]}]
    errors, cut, _ = measured(DEMO_MODEL, batches, monkeypatch)
    assert not cut and all(np.isfinite(e).all() for e in errors.values())


def test_residual_blocks_change_the_graph_and_run_whole(monkeypatch, tmp_path):
    path = export_reference("resnet", False, tmp_path)
    batches = batches_for(load(path), {"batch": 2})
    errors, cut, groups = measured(path, batches, monkeypatch, depth=True)
    blocks = {g.id for g in groups if g.blocks is not None}
    assert blocks and not blocks & cut and cut == {g.id for g in groups} - blocks
