"""Mixture of experts: expert groups in every MoE form and exporter, removal equal to a router that can never
pick the removed experts (their logits forced to -inf), routing kept consistent, TopK's k respected."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphprune.analysis.coupling import analyze
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import PlanError
from graphprune.io import runtime
from graphprune.io.load import from_proto, load_model
from graphprune.models.reference import MOES
from graphprune.passes import apply_plan
from tests.graphs import GraphBuilder, looped_moe
from tests.harness import assert_group_equivalent, masked_check

CASES = [(name, dynamo) for name in MOES for dynamo in (False, True)]
IDS = [f"{name}-{'dynamo' if dynamo else 'legacy'}" for name, dynamo in CASES]
TOKENS = {"batch": 3, "seq": 7}
REMOVED = [1, 4, 5]  # not the last experts: indices of the survivors must be renumbered
STACKED = ("moe_dense", "moe_einsum", "moe_stacked")  # [E, d, f] expert weights; the others loop over Linears


def expert_groups(analysis) -> list:
    return [g for g in analysis.groups if g.kind == "expert"]


def remove_experts(units: list[int]):
    def make(analysis):
        plan = PruningPlan()
        for group in expert_groups(analysis):
            plan.remove(group, units)
        return plan

    return make


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_expert_groups_found_in_every_form(exported, name, dynamo):
    groups = expert_groups(analyze(load_model(exported(name, dynamo))))
    assert [(g.size, g.experts.top_k, g.frozen) for g in groups] == [(8, 2, False)] * 2, [g.summary() for g in groups]
    assert groups[0].detail() == "MoE layer: 8 experts, top-2"
    if name not in STACKED:  # separate expert Linears: one branch per expert, each ending in one accumulation
        assert all(sorted(g.experts.joins) == list(range(8)) for g in groups)


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_removing_experts_equals_never_routing_to_them(exported, name, dynamo):
    path = exported(name, dynamo)
    result = masked_check(path, remove_experts(REMOVED), dims=TOKENS)
    assert result["error"] <= 1e-5, result
    assert result["masking_effect"] > 1e-2, result
    before, after = result["params"]
    expert_params = 3 * 32 * 48 + 32  # gate, up, down and a router row
    assert before - after == 2 * len(REMOVED) * expert_params
    groups = expert_groups(analyze(load_model(path)))  # what `analyze` reports is what removal frees
    assert sum(g.params_of(np.array(REMOVED)) for g in groups) == before - after


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_routing_stays_consistent(exported, name, dynamo):
    """The router emits one logit per surviving expert; selector indices and arange tables are renumbered to
    0..survivors-1, so every surviving branch still answers to its own router column."""
    analysis = analyze(load_model(exported(name, dynamo)))
    chosen = [s for g in expert_groups(analysis) for unit, sels in g.experts.selectors.items()
              if unit not in REMOVED for s in sels]  # the selectors of surviving experts, kept before the rewrite
    pruned = apply_plan(analysis, remove_experts(REMOVED)(analysis))
    survivors = 8 - len(REMOVED)
    topk_inputs = [n.inputs[0] for n in pruned.graph if n.op_type == "TopK"]
    assert [v.shape[-1] for v in topk_inputs] == [survivors] * 2
    selectors = sorted(int(s.node.inputs[s.input_index].const_value.numpy().reshape(-1)[0]) for s in chosen)
    if name not in STACKED:  # `indices == e`, `expert_mask[e]`, `g[..., e:e+1]`: renumbered to the survivors
        assert selectors == sorted(list(range(survivors)) * 2)
    tables = [n.inputs[1].const_value.numpy().tolist() for n in pruned.graph
              if n.op_type == "Equal" and n.inputs[1].const_value is not None and n.inputs[1].const_value.size > 1]
    assert all(t == list(range(survivors)) for t in tables)


def test_expert_removal_keeps_top_k_experts(exported):
    group = expert_groups(analyze(load_model(exported("moe_masked", False))))[0]
    with pytest.raises(PlanError, match="fewer than the router's top-2"):
        PruningPlan().remove(group, range(7))


@pytest.mark.parametrize("name", MOES)
def test_expert_ffn_neurons_stay_prunable(exported, name):
    """Separate expert Linears keep one neuron group per expert; stacked [E, d, f] weights share a neuron
    slot across experts (the tensor stays rectangular)."""
    path = exported(name, True)
    neurons = [g for g in analyze(load_model(path)).prunable() if g.kind in ("neuron", "channel") and g.size == 48]
    assert len(neurons) == (2 if name in STACKED else 16)
    assert_group_equivalent(path, neurons[0], dims=TOKENS)


def fused_moe(experts: int = 4, d: int = 8, f: int = 6) -> onnx.ModelProto:
    """x → router MatMul → com.microsoft MoE (top-2, GELU FFN experts with biases) → output Linear."""
    b = GraphBuilder()
    logits = b.op("MatMul", ["x", b.weight(d, experts)])
    moe = b.op("MoE", ["x", logits, b.weight(experts, f, d), b.weight(experts, f), b.weight(experts, d, f),
                       b.weight(experts, d)], domain="com.microsoft", k=2, activation_type="gelu",
               normalize_routing_weights=1)
    y = b.op("MatMul", [moe, b.weight(d, 5)])
    model = b.build({"x": ["tokens", d]}, {y: ["tokens", 5]})
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


def test_fused_moe_op_experts_and_neurons():
    model = fused_moe()
    analysis = analyze(from_proto(model))
    experts = expert_groups(analysis)
    assert [(g.size, g.experts.top_k) for g in experts] == [(4, 2)]
    result = masked_check(model, remove_experts([0, 2]), dims={"tokens": 16})
    assert result["error"] <= 1e-5 < 1e-2 < result["masking_effect"], result
    neurons = [g for g in analysis.prunable() if g.kind != "expert"]
    assert [g.size for g in neurons] == [6]
    # the FFN activation is internal to the op: mask by zeroing fc2's input columns of the removed neurons
    plan = PruningPlan()
    plan.remove(neurons[0], [1, 4])
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    fc2 = next(t for t in masked.graph.initializer if t.name == model.graph.node[1].input[4])
    array = onnx.numpy_helper.to_array(fc2).copy()
    array[:, :, [1, 4]] = 0
    fc2.CopyFrom(onnx.numpy_helper.from_array(array, fc2.name))
    feeds = {"x": np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)}
    reference, dense = (runtime.run(runtime.session(from_proto(m)), feeds)[0] for m in (masked, model))
    pruned = runtime.run(runtime.session(apply_plan(analysis, plan)), feeds)[0]
    assert np.abs(pruned - reference).max() <= 1e-5 * np.abs(reference).max() < np.abs(dense - reference).max()


def test_unprovable_branch_freezes_its_experts():
    """An expert branch whose contribution is not zero when unrouted (here its gate is sigmoid(mask), 0.5 for
    unrouted tokens) cannot be cut out: the whole expert group freezes with the reason."""
    b = GraphBuilder()
    logits = b.op("MatMul", ["x", b.weight(8, 2)])
    _, chosen = b.op("TopK", [b.op("Softmax", [logits], axis=-1), b.const(np.array([1]))], outputs=2, axis=-1)
    acc = b.op("Mul", ["x", b.const(np.zeros(1, np.float32))])
    for expert in range(2):
        hit = b.op("Cast", [b.op("Equal", [chosen, b.const(np.array(expert))])], to=1)
        contribution = b.op("Mul", [b.op("MatMul", ["x", b.weight(8, 8)]), b.op("Sigmoid", [hit])])
        acc = b.op("Add", [acc, contribution])
    model = b.build({"x": ["tokens", 8]}, {b.op("MatMul", [acc, b.weight(8, 3)]): ["tokens", 3]})
    groups = expert_groups(analyze(from_proto(model)))
    assert len(groups) == 1 and groups[0].frozen
    assert any("not provably zero" in r for r in groups[0].frozen_reasons), groups[0].frozen_reasons
    runtime.run(runtime.session(from_proto(model)), {"x": np.ones((3, 8), np.float32)})


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_expert_subset_of_any_layer_equals_never_routing(data):
    """Random expert counts, top-k, router scores (softmax or sigmoid) and removed subsets."""
    experts = data.draw(st.integers(2, 8), label="experts")
    top_k = data.draw(st.integers(1, experts - 1), label="top_k")
    removed = data.draw(st.lists(st.integers(0, experts - 1), min_size=1, max_size=experts - top_k, unique=True))
    scores = data.draw(st.sampled_from(["Softmax", "Sigmoid"]))
    rng = np.random.default_rng(experts * 31 + top_k)
    model = looped_moe(rng.standard_normal((6, experts)).astype(np.float32), np.zeros(experts, np.float32),
                       [rng.standard_normal((6, 6)).astype(np.float32) for _ in range(experts)], top_k, scores)
    result = masked_check(model, remove_experts(removed), dims={"tokens": 64})
    assert result["error"] <= 1e-5, result
    assert result["params"][0] - result["params"][1] == len(removed) * (6 * 6 + 6 + 1)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_removing_the_two_experts_summed_first(exported, dynamo):
    """`sum(g[..., e:e+1] * expert_e(x) for e)` adds experts 0 and 1 with each other: with both removed that sum
    contributes nothing, and the next accumulation starts from the surviving experts."""
    result = masked_check(exported("moe_sliced", dynamo), remove_experts([0, 1, 6]), dims=TOKENS)
    assert result["error"] <= 1e-5 < result["masking_effect"], result
