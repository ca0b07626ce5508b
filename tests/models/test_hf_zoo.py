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

UNREACHED = {"mobilevit": "this random-init MobileViT's transformer outputs never reach its output (zeroing a whole "
                          "transformer in torch changes nothing): masking a head cannot move it, so exactness of "
                          "its heads is not checkable here"}
PAIRS = [(name, dynamo) for name in zoo.ARCHITECTURES for dynamo in (False, True)]
IDS = [f"{name}-{'dynamo' if dynamo else 'legacy'}" for name, dynamo in PAIRS]
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


@pytest.mark.parametrize(("name", "dynamo"), PAIRS, ids=IDS)
def test_attention_and_mlp_weights_are_prunable(exported, name, dynamo):
    analysis = analysis_of(exported(name, dynamo), name)
    fraction = zoo.prunable_fraction(analysis)
    assert fraction >= 0.9, (fraction, [g.frozen_reasons[:1] for g in analysis.groups if g.frozen])
    assert {g.kind for g in analysis.prunable()} >= {"head", "neuron"}


@pytest.mark.parametrize(("name", "dynamo"), PAIRS, ids=IDS)
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


@pytest.mark.parametrize(("name", "dynamo"), [(n, d) for n in zoo.ENCODERS for d in (False, True)],
                         ids=[f"{n}-{'dynamo' if d else 'legacy'}" for n in zoo.ENCODERS for d in (False, True)])
def test_encoders_reduce_their_tokens(exported, tmp_path, name, dynamo):
    """Every encoder of the zoo, both exports, takes token reduction before its second block: keep 1 computes
    the original; keep 0.5 (top-k) and 0.6 (merged) run at two batch sizes (text: padded rows too), keep the
    output's shape and move it."""
    import numpy as np

    from graphprune.io import runtime
    from graphprune.passes.rewrite.tokens import TokenSchedule
    from tests.passes.rewrite.test_tokens import reduced

    path = exported(name, dynamo)
    rng = np.random.default_rng(0)

    def feeds(batch: int) -> dict:
        if name == "bert":
            mask = np.ones((batch, 8), np.int64)
            mask[0, 5:] = 0
            return {"input_ids": rng.integers(1, 100, (batch, 8)), "attention_mask": mask}
        shape = (batch, 400) if name == "wav2vec2" else (batch, 3, 32, 32)
        return {runtime.session(str(path)).get_inputs()[0].name: rng.standard_normal(shape).astype(np.float32)}

    same, _ = reduced(path, TokenSchedule(1.0), tmp_path, "same.onnx")
    half, report = reduced(path, TokenSchedule(0.5), tmp_path, "half.onnx")
    merged, _ = reduced(path, TokenSchedule(0.6, method="merge"), tmp_path, "merged.onnx")
    assert [site["block"] for site in report.sites] == [1]
    for batch in (1, 3):
        inputs = feeds(batch)
        dense = runtime.run(runtime.session(str(path)), inputs)[0]
        np.testing.assert_allclose(runtime.run(runtime.session(str(same)), inputs)[0], dense, atol=1e-4)
        for reduced_path in (half, merged):
            moved = runtime.run(runtime.session(str(reduced_path)), inputs)[0]
            assert moved.shape == dense.shape and np.abs(moved - dense).max() > 1e-3


def test_albert_shares_one_layer_across_depth_and_prunes_it_once(exported, tmp_path):
    """ALBERT applies one layer at every depth. The legacy export reads each of its weights from one initializer
    at both depths: the layer's heads and neurons are one group each (a unit goes at every depth or at none),
    each weight is sliced once and written once, and the reported params are the written file's. (The dynamo
    export writes its FFN weights once per depth: two neuron groups, as its file really holds two copies.)"""
    import onnx
    import onnx_ir as ir

    from graphprune.verify.cost import count_params

    path = exported("albert", False)
    analysis = analysis_of(path, "albert")
    assert sorted((g.kind, g.size) for g in analysis.prunable()) == [("head", 4), ("neuron", 64)]
    shared = {n.inputs[1].name for n in analysis.model.graph if n.op_type == "MatMul"
              and n.inputs[1].const_value is not None and len(n.inputs[1].uses()) == 2}
    assert shared  # weights really read at both depths
    result = prune_file(path, tmp_path / "pruned.onnx", ratio=0.0, kind_ratios={"head": 0.5, "neuron": 0.5},
                        criterion="l2")
    written = onnx.load(str(tmp_path / "pruned.onnx"))
    names = [t.name for t in written.graph.initializer]
    assert shared <= set(names) and len(names) == len(set(names))
    assert result.after.params == count_params(ir.from_proto(written)) < result.before.params


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_deberta_heads_merged_into_the_batch_prune_at_any_batch_and_length(exported, dynamo):
    """DeBERTa merges heads into the batch ([batch, heads, seq, d] -> [batch*heads, seq, d]), tiles its
    relative-position keys over the batch and, in the legacy export, divides the merged size by the head count
    (`query.size(0) // heads`). Each layer's heads are one group across all of that (the merged axes are
    periodic: head = position mod heads), and removing some is exact at batch sizes and lengths other than the
    export's, where a wrong period or a stale head count would show."""
    analysis = analysis_of(exported("deberta-v2", dynamo), "deberta-v2")
    heads = [g for g in analysis.prunable() if g.kind == "head"]
    assert [g.size for g in heads] == [4, 4]  # one group per layer: the shared gather index does not tie them
    assert all(any(m.periodic for m in g.members) for g in heads)
    for group in heads:
        for dims in ({"batch": 1, "seq": 5}, {"batch": 3, "seq": 11}):
            assert_group_equivalent(str(exported("deberta-v2", dynamo)), group, dims=dims)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_deberta_exported_at_static_shapes_prunes_its_heads_exactly(tmp_path, dynamo, batch):
    """Batch and 16 tokens fixed, as edge pipelines ship it: the merged batch·heads axis is a static 4 or 8
    (at batch 2 the split back to [2, 4] follows the heads, the factor the merged axis's units already follow,
    not the outer batch), its gather index a constant-size broadcast; the heads prune exactly."""
    path = zoo.export_architecture("deberta-v2", dynamo, tmp_path, static_batch=batch)
    heads = [g for g in analysis_of(path, "deberta-v2").prunable() if g.kind == "head"]
    assert [g.size for g in heads] == [4, 4]
    for group in heads:
        assert_group_equivalent(str(path), group)
