"""The Hugging Face zoo: architectures `transformers` builds from small random-init configs (encoders, decoders
with GQA and MQA, vision transformers, SegFormer's Mix-FFN, MobileViT, a detection transformer, an audio
encoder, DeBERTa's disentangled attention), each exported both ways. None may
crash; each must keep ≥ 90 % of its attention and MLP weights in prunable groups, every head group must prune
exactly, and a half-heads, half-neurons prune must give a verified model. `benchmarks/bench_zoo.py` reports
the numbers."""

from __future__ import annotations

import pytest

from graphprune.analysis.coupling import analyze
from graphprune.io.load import load_model
from graphprune.passes import prune_file
from tests.harness import assert_group_equivalent

pytest.importorskip("transformers")
from graphprune.models import zoo  # noqa: E402

SHORT = {"deberta-v2": "known gap (issue 25, open): DeBERTa merges heads into the symbolic batch axis "
                       "([batch, heads, seq, d] -> [batch*heads, seq, d]); its heads freeze"}
UNREACHED = {"mobilevit": "this random-init MobileViT's transformer outputs never reach its output (zeroing a whole "
                          "transformer in torch changes nothing): masking a head cannot move it, so exactness of "
                          "its heads is not checkable here"}
PAIRS = [(name, dynamo) for name in zoo.ARCHITECTURES for dynamo in (False, True)]
IDS = [f"{name}-{'dynamo' if dynamo else 'legacy'}" for name, dynamo in PAIRS]
# the known gap is a strict xfail: once DeBERTa's heads prune, these tests fail until the mark is removed
CASES = [pytest.param(name, dynamo, marks=pytest.mark.xfail(strict=True, reason=SHORT[name]))
         if name in SHORT else (name, dynamo) for name, dynamo in PAIRS]
DIMS = {"batch": 2, "seq": 8}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder, made = tmp_path_factory.mktemp("zoo"), {}

    def get(name: str, dynamo: bool):
        if (name, dynamo) not in made:
            made[name, dynamo] = zoo.export_architecture(name, dynamo, folder)
        return made[name, dynamo]

    return get


def analysis_of(path, name: str):
    return analyze(load_model(path), gqa_units=zoo.GQA_UNITS.get(name, "kv-group"))


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_attention_and_mlp_weights_are_prunable(exported, name, dynamo):
    analysis = analysis_of(exported(name, dynamo), name)
    fraction = zoo.prunable_fraction(analysis)
    assert fraction >= 0.9, (fraction, [g.frozen_reasons[:1] for g in analysis.groups if g.frozen])
    assert {g.kind for g in analysis.prunable()} >= {"head", "neuron"}


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_heads_prune_exactly(exported, name, dynamo):
    path = exported(name, dynamo)
    heads = [g for g in analysis_of(path, name).prunable() if g.kind == "head"]
    assert heads
    if name in UNREACHED:
        pytest.skip(UNREACHED[name])
    gqa_units = zoo.GQA_UNITS.get(name, "kv-group")
    dims = {"batch": 2} if name in zoo.VISION or name == "wav2vec2" else DIMS
    assert_group_equivalent(str(path), heads[0], dims=dims, gqa_units=gqa_units)


@pytest.mark.parametrize(("name", "dynamo"), PAIRS, ids=IDS)
def test_half_the_heads_and_neurons_give_a_verified_model(exported, name, dynamo, tmp_path):
    path = exported(name, dynamo)
    result = prune_file(path, tmp_path / "pruned.onnx", ratio=0.0, kind_ratios={"head": 0.5, "neuron": 0.5},
                        criterion="l2", gqa_units=zoo.GQA_UNITS.get(name, "kv-group"))
    assert "onnxruntime run" in result.verification.passed
    assert result.after.params < result.before.params
