"""Silero VAD, the voice activity detector that ships as ONNX inside the `silero-vad` wheel, read in place:
six exports of one real pretrained model (an If over the sample rate, an If-less opset-18 export, an opset-15
16 kHz one, a whole-sequence one, a half-size one, an OpenVINO one). Its convolutions prune, exactly; its LSTM's
hidden units are the streaming state the caller feeds back (a graph input and output, or the If's result), so
they stay whole, and say so."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.passes import prune_file
from graphprune.verify.cost import count_params
from tests.harness import masked_check, random_subset_plan

SPEC = importlib.util.find_spec("silero_vad")  # located, never imported (it would import torch)
if SPEC is None:
    pytest.skip("silero-vad is not installed (the audio extra)", allow_module_level=True)
DATA = Path(SPEC.submodule_search_locations[0]) / "data"
FORMS = ["silero_vad", "silero_vad_op18_ifless", "silero_vad_16k_op15", "silero_vad_16k_sequence", "silero_vad_half",
         "silero_vad_openvino_16k"]
STATE_REASONS = ("graph input", "output of an If/Loop/Scan body", "LSTM with non-constant weights")
CHUNK = {16000: 576, 8000: 288}  # 512 (256) new samples after 64 (32) of context, as silero's wrapper feeds them


def path_of(form: str) -> Path:
    return DATA / f"{form}.onnx"


def feeds(form: str, rate: int = 16000, batch: int = 2, seed: int = 0) -> dict:
    """Speech-like input for one chunk per row (whole-sequence form: `batch` chunks) at `rate`, zero state."""
    rng = np.random.default_rng(seed)
    batch = 1 if form == "silero_vad_openvino_16k" else batch
    chunk = CHUNK[rate]
    audio = (0.1 * np.sin(np.linspace(0, 60, chunk))[None] + 0.05 * rng.standard_normal((batch, chunk)))
    inputs = {}
    for spec in runtime.session(str(path_of(form))).get_inputs():
        if spec.name == "sr":
            inputs["sr"] = np.array(rate, np.int64)
        elif spec.name == "input":
            inputs["input"] = audio.astype(np.float32)
        else:  # the LSTM state: [2, batch, 128], or h and c of [1, 1, 128]
            shape = [batch if not isinstance(n, int) else n for n in spec.shape]
            inputs[spec.name] = np.zeros(shape, np.float32)
    return inputs


def file_weights(graph: onnx.GraphProto) -> int:
    """Float values stored in a graph's initializers and Constant nodes, subgraphs included."""
    total = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type in FLOATS)
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type in FLOATS:
                total += int(np.prod(attr.t.dims))
            if attr.type == onnx.AttributeProto.GRAPH:
                total += file_weights(attr.g)
    return total


FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


@pytest.mark.parametrize("form", FORMS)
def test_the_convolutions_prune_and_only_the_recurrent_state_stays_whole(form):
    analysis = analyze(load_model(path_of(form)))
    stored = file_weights(onnx.load(str(path_of(form))).graph)  # folded weights replace their sources
    assert 0.999 * stored <= count_params(analysis.model) <= stored
    frozen = [g for g in analysis.groups if g.frozen and g.size > 1]
    assert all(any(reason in r for reason in STATE_REASONS for r in g.frozen_reasons) for g in frozen), \
        [g.frozen_reasons[:2] for g in frozen]
    assert sum(g.params for g in analysis.prunable()) >= 0.6 * sum(g.params for g in analysis.groups)


@pytest.mark.parametrize("form", ["silero_vad", "silero_vad_op18_ifless"])
def test_every_prunable_group_is_exact_at_both_sample_rates(form):
    """The If form's groups live in its branches, one per sample rate, the If-less form's in one graph with
    both models: each group is exact at both rates and moves the output at the rate that runs it."""
    groups = analyze(load_model(path_of(form))).prunable()
    assert len(groups) >= 8
    for group in groups:
        results = [masked_check(str(path_of(form)), random_subset_plan(group.id), feeds=feeds(form, rate))
                   for rate in CHUNK]
        effect = max(r["masking_effect"] for r in results)
        assert all(r["error"] <= 1e-4 for r in results) and effect > 1e-3, (group.label, results)
        assert max(r["error"] for r in results) < effect / 100
        assert results[0]["params"][1] < results[0]["params"][0]


@pytest.mark.parametrize("form", FORMS)
def test_half_the_channels_give_a_running_model_and_the_wheel_is_untouched(form, tmp_path):
    source = path_of(form)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    result = prune_file(source, tmp_path / "pruned.onnx", ratio=0.5)
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
    assert result.after.params < result.before.params
    inputs = feeds(form)
    dense = runtime.run(runtime.session(str(source)), inputs)
    pruned = runtime.run(runtime.session(str(tmp_path / "pruned.onnx")), inputs)
    assert [o.shape for o in pruned] == [o.shape for o in dense]
    assert all(np.isfinite(o).all() for o in pruned)
