"""Reference transformers, both torch exporters: heads and FFN neurons detected without being told the head
count, masked equivalence for every prunable group, GQA kept consistent, hidden pruning runnable."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune import verify
from graphprune.analysis.coupling import analyze
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.passes import apply_plan, make_plan
from tests.harness import assert_group_equivalent

# name -> {kind: (groups, units per group)} that must be prunable with either exporter
EXPECT = {
    "bert": {"head": (2, 4), "neuron": (2, 128)},
    "vit": {"head": (2, 3), "neuron": (2, 96)},
    "vit_packed": {"head": (2, 3), "neuron": (2, 96)},  # timm's qkv.reshape(B, N, 3, H, D).permute(...).unbind(0)
    "llama": {"head": (2, 2), "neuron": (2, 96)},       # a head unit is one KV group: 1 KV + 2 query heads
    "llama_tied": {"head": (2, 2), "neuron": (2, 96)},
    # torch's own nn.TransformerEncoder / nn.MultiheadAttention (packed in_proj_weight), batch first or not
    "torch_encoder": {"head": (2, 4), "neuron": (2, 64)},
    "torch_encoder_seq_first": {"head": (2, 4), "neuron": (2, 64)},
    "torch_cross_attention": {"head": (1, 4), "neuron": (1, 32)},  # the memory projection's 32 channels
}
CASES = [(name, dynamo) for name in EXPECT for dynamo in (False, True)]
IDS = [f"{name}-{'dynamo' if dynamo else 'legacy'}" for name, dynamo in CASES]


def prunable_by_kind(analysis, kind: str) -> list:
    return [g for g in analysis.prunable() if g.kind == kind]


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_heads_and_neurons_detected(exported, name, dynamo):
    analysis = analyze(load_model(exported(name, dynamo)))
    for kind, (count, size) in EXPECT[name].items():
        groups = prunable_by_kind(analysis, kind)
        assert [g.size for g in groups] == [size] * count, (kind, [g.summary() for g in analysis.groups])
    hidden = [g for g in analysis.groups if g.kind == "hidden"]
    assert len(hidden) == 1 and hidden[0].frozen and hidden[0].approximate


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_masked_equivalence_heads_and_neurons(exported, name, dynamo):
    path = exported(name, dynamo)
    groups = analyze(load_model(path)).prunable()
    assert groups
    for group in groups:
        assert_group_equivalent(path, group)


def test_gqa_units_are_whole_kv_groups(exported):
    """A head unit owns one KV head (16 rows of K and of V) and both query heads that read it (32 rows of Q
    and 32 input columns of O): removing it can never leave a query head without its KV head."""
    analysis = analyze(load_model(exported("llama", True)))
    for group in prunable_by_kind(analysis, "head"):
        per_unit = sorted({int(np.sum(m.unit_of == 0)) for m in group.param_members()})
        assert per_unit == [16, 32], per_unit
        for member in group.param_members():
            assert len(set(np.bincount(member.unit_of[member.unit_of >= 0]).tolist())) == 1


def test_gqa_pruned_layers_keep_two_query_heads_per_kv_head(exported):
    path = exported("llama", True)
    analysis = analyze(load_model(path))
    pruned = apply_plan(analysis, make_plan(analysis, "l2", 0.5))
    verify.check(pruned)
    head_splits = [n.outputs[0].shape for n in pruned.graph
                   if n.op_type == "Reshape" and n.outputs[0].shape is not None and len(n.outputs[0].shape) == 4
                   and n.outputs[0].shape[3] == 16 and isinstance(n.outputs[0].shape[2], int)]  # [B, S, H, D]
    counts = sorted(shape[2] for shape in head_splits)
    assert counts == [1, 1, 1, 1, 2, 2], counts  # per layer: q (2 heads), k and v (1 KV head each)
    out = runtime.run(runtime.session(pruned), {"input_ids": np.arange(10, dtype=np.int64).reshape(2, 5)})[0]
    assert out.shape == (2, 5, 100) and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["llama", "llama_tied", "vit", "vit_packed"])
def test_hidden_pruning_gives_a_valid_smaller_model(exported, name):
    path = exported(name, True)
    analysis = analyze(load_model(path), allow_approximate=True)
    hidden = [g for g in analysis.prunable() if g.kind == "hidden"]
    assert len(hidden) == 1 and hidden[0].size == {"vit": 48, "vit_packed": 48}.get(name, 64)
    dense = load_model(path)
    pruned = apply_plan(analysis, make_plan(analysis, "l2", 0.25))
    verify.check(pruned)
    feeds = runtime.random_feeds(runtime.session(dense), batch=2, dims={"seq": 7})
    out = runtime.run(runtime.session(pruned), feeds)[0]
    assert out.shape == runtime.run(runtime.session(dense), feeds)[0].shape and np.isfinite(out).all()


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_gqa_query_slots_keep_the_ratio_consistent(exported, dynamo):
    """Query-slot units remove the same query head of every KV group: Q rows and O columns of Hkv heads,
    no K/V rows; KV heads stay whole; the pruned layers keep Hq = 1 * Hkv and run."""
    path = exported("llama", dynamo)
    analysis = analyze(load_model(path), gqa_units="query-slot")
    slots = prunable_by_kind(analysis, "head")
    assert [g.size for g in slots] == [2, 2]  # n_rep = 2 slots per layer
    for group in slots:
        assert group.unit_widths() == [32]  # 2 KV groups x head_dim 16, in Q rows and O columns
        assert_group_equivalent(path, group, gqa_units="query-slot")
    pruned = apply_plan(analysis, make_plan(analysis, "l2", 0.5))
    head_splits = sorted(n.outputs[0].shape[2] for n in pruned.graph
                         if n.op_type == "Reshape" and n.outputs[0].shape is not None
                         and len(n.outputs[0].shape) == 4 and n.outputs[0].shape[3] == 16
                         and isinstance(n.outputs[0].shape[2], int))
    assert head_splits == [2] * 6, head_splits  # per layer: q, k, v all with 2 heads now
    out = runtime.run(runtime.session(pruned), {"input_ids": np.arange(10, dtype=np.int64).reshape(2, 5)})[0]
    assert out.shape == (2, 5, 100) and np.isfinite(out).all()


@pytest.mark.parametrize("seq", [3, 9])
def test_pruned_torch_attention_keeps_its_head_count_at_any_length(exported, seq):
    """nn.TransformerEncoder (dynamo, dynamic batch and sequence) with half its heads removed: the rewritten
    reshape constants still split the right number of heads at sequence lengths other than the export's."""
    from tests.harness import masked_check

    path = exported("torch_encoder", True)

    def half_the_heads(analysis):
        plan = make_plan(analysis, "l2", 0.0, kind_ratios={"head": 0.5})
        assert plan.removed and all(analysis.group(g).kind == "head" for g in plan.removed)
        return plan

    result = masked_check(path, half_the_heads, dims={"batch": 2, "seq": seq})
    assert result["error"] <= 1e-5 < result["masking_effect"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_swin_heads_and_mlp_neurons_prune_exactly(exported, dynamo):
    """Swin: windows partitioned with view/permute, shifted with torch.roll, qkv split after a permute, a
    relative position bias table per head, patch merging between stages: heads and MLP neurons of both
    stages are found and prune exactly (the stage widths are the hidden dimension, approximate)."""
    path = exported("swin", dynamo)
    analysis = analyze(load_model(path))
    heads = prunable_by_kind(analysis, "head")
    assert [g.size for g in heads] == [2, 2, 4] and {g.detail() for g in heads} == {
        "2 heads x head_dim 8", "4 heads x head_dim 8"}
    assert [g.size for g in prunable_by_kind(analysis, "neuron")] == [32, 32, 64]
    for group in analysis.prunable():
        assert_group_equivalent(path, group)
