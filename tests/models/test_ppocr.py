"""The real PP-OCRv4 text recognizer (Paddle's ch_PP-OCRv4_rec, converted by paddle2onnx, shipped inside the
rapidocr-onnxruntime wheel; graphprune[ocr]): every group it offers is masked-equivalent when pruned, OBS
compensation of its Concat-fed convolution works, and the pruned model keeps its dictionary and its reading.
Skipped without the package (and, for reading, the DejaVu fonts)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.models import ocr
from graphprune.passes import CalibrationSpec, prune_file
from tests.harness import assert_group_equivalent, load

PRUNABLE = 25  # 21 channel groups (backbone, squeeze-excite, neck); per SVTR block, its heads and MLP neurons


@pytest.fixture(scope="module")
def recognizer():
    try:
        return ocr.packaged_recognizer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def lines():
    try:
        return ocr.render(96, 12, *ocr.PACKAGED_SHAPE), ocr.render(64, 11, *ocr.PACKAGED_SHAPE)[0]
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_the_real_recognizer_offers_channels_heads_and_neurons(recognizer):
    """The SVTR blocks' attention is Paddle's packed form: qkv reshaped to [B, N, 3, heads, head_dim], permuted,
    then q, k, v taken by Slice + Squeeze; its heads are found through it."""
    analysis = analyze(load(recognizer))
    assert collections.Counter(g.kind for g in analysis.prunable()) == {"channel": 21, "head": 2, "neuron": 2}
    assert {g.detail() for g in analysis.prunable() if g.kind == "head"} == {"8 heads x head_dim 15"}
    assert len(ocr.classes_of(recognizer)) == 6624  # its dictionary and the space; class 0 is the blank


@pytest.mark.parametrize("index", range(PRUNABLE))
def test_every_group_is_masked_equivalent(recognizer, index):
    assert_group_equivalent(recognizer, analyze(load(recognizer)).prunable()[index])


def test_obs_pruned_recognizer_keeps_its_dictionary_and_its_reading(recognizer, lines, tmp_path):
    """The dense model reads the rendered words (measured 0.91 of their characters); obs at 20 % of every group
    keeps most of its reading (measured 0.81), compensation included (its Concat-fed convolution once crashed
    it), against 0.02 for the same removals uncompensated; the dictionary in the model's metadata survives."""
    (images, words), calibration = lines
    dense = ocr.read(recognizer, images)
    assert ocr.agreement(words, [text.lower() for text in dense]) > 0.85
    np.savez(tmp_path / "calib.npz", x=calibration)
    kept = {}
    for compensate in (True, False):
        target = tmp_path / f"{compensate}.onnx"
        prune_file(recognizer, target, criterion="obs", ratio=0.2, compensate=compensate,
                   calibration=CalibrationSpec(str(tmp_path / "calib.npz"), batch_size=32))
        kept[compensate] = ocr.agreement(dense, ocr.read(target, images))
        metadata = {p.key: p.value for p in onnx.load(target, load_external_data=False).metadata_props}
        assert metadata["character"] == "\n".join(ocr.classes_of(recognizer)[:-1])
    assert kept[True] > 0.75 and kept[False] < 0.5, kept


def test_document_lines_are_read_as_printed_and_padded_as_served(recognizer):
    """The hold-out task of benchmarks/bench_quality.py (`ppocr-documents`): the dense recognizer reads the
    printed lines' words and numbers (measured 0.999 of their characters, seed 2), and every line is resized
    to the model's height with the padding on its right at exactly 0 after normalisation."""
    try:
        images, texts = ocr.render_documents(32, 2)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert images.shape == (32, 3, *ocr.PACKAGED_SHAPE) and len(set(texts)) == 32
    assert ocr.agreement(texts, ocr.read(recognizer, images)) > 0.97
    short = [i for i, text in enumerate(texts) if len(text) <= 6]
    assert short and all((images[i, :, :, -20:] == 0).all() for i in short)
    assert all(images[i, :, :, :2].mean() > 0.4 for i in range(32))  # light paper where every line starts
