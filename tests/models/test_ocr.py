"""The PP-OCR-style text recognizer trained and exported by Paddle (paddle2onnx: BatchNormalization kept,
weights in Constant nodes, attention written by Paddle): every group it offers is masked-equivalent when
pruned, data-free calibration reads its BatchNormalizations, and pruning keeps it reading held-out words.
Needs Pillow and the DejaVu fonts (skipped without them)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.models import ocr
from graphprune.passes import Allocation, CalibrationSpec, prune_file, run_calibration
from graphprune.passes.calibration.norm_moments import use_norm_moments
from tests.harness import assert_group_equivalent, load


@pytest.fixture(scope="module")
def words():
    try:
        return ocr.render(128, seed=12)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_the_paddle_export_offers_heads_neurons_and_channels():
    ops = collections.Counter(n.op_type for n in onnx.load(ocr.RECOGNIZER).graph.node)
    assert ops["BatchNormalization"] == 14 and ops["HardSwish"] == 14 and ops["Constant"] > 50
    analysis = analyze(load(ocr.RECOGNIZER))
    prunable = collections.Counter(g.kind for g in analysis.prunable())
    assert prunable == {"channel": 9, "head": 1, "neuron": 1}
    assert next(g for g in analysis.prunable() if g.kind == "head").size == 4
    frozen = {g.kind: g.frozen_reasons[0] for g in analysis.groups if g.frozen_reasons}
    assert "Softmax normalises over this axis" in frozen["neuron"] and "--prune-hidden" in frozen["hidden"]


@pytest.mark.parametrize("index", range(11))
def test_every_group_is_masked_equivalent(index):
    group = analyze(load(ocr.RECOGNIZER)).prunable()[index]
    assert_group_equivalent(ocr.RECOGNIZER, group)


def test_data_free_calibration_reads_the_batch_normalizations():
    """The four pointwise convolutions reading HardSwish(BN(·)) directly take the moments the BN's γ, β imply,
    pushed through HardSwish; the tensors behind squeeze-excite scaling and pooling keep synthetic moments."""
    analysis = analyze(load(ocr.RECOGNIZER))
    stats = run_calibration(analysis, CalibrationSpec(data_free=True, samples=8), gram_limit=512)
    assert use_norm_moments(analysis, stats) == 4


@pytest.mark.parametrize("data_free, kinds, strategy, least", [
    (False, None, "uniform", 0.85),  # 30 % of every group, calibrated on 64 other rendered words (measured 0.90)
    (True, {"head": 0.3, "neuron": 0.3}, "uniform", 0.95),  # the attention neck, data-free (measured 0.98)
    (True, None, "measured", 0.5),  # 30 % of the parameters, data-free by sensitivity (0.64; uniform 0.33)
    ("smooth", None, "measured", 0.7),  # the same on smooth images (0.79)
])
def test_pruned_recognizer_still_reads(tmp_path, words, data_free, kinds, strategy, least):
    """obs keeps the dense reading of held-out words (character agreement)."""
    images, _ = words
    if data_free:
        spec = CalibrationSpec(data_free=True, samples=64 if strategy == "measured" else 32,
                               smooth_images=data_free == "smooth")
    else:
        np.savez(tmp_path / "calib.npz", x=ocr.render(64, seed=11)[0])
        spec = CalibrationSpec(str(tmp_path / "calib.npz"), samples=64, batch_size=32)
    ratio = 0.0 if kinds else 0.3
    prune_file(ocr.RECOGNIZER, tmp_path / "small.onnx", criterion="obs", ratio=ratio, kind_ratios=kinds,
               calibration=spec, allocation=Allocation(strategy, ratio, kinds))
    kept = ocr.agreement(ocr.read(ocr.RECOGNIZER, images), ocr.read(tmp_path / "small.onnx", images))
    assert kept >= least, kept
