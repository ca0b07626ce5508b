"""One budget over tokens and widths: with errors given, the cheaper of the two is spent first (and the other not at
all when it is dear); the MACs the joint allocation counts without rewriting are the rewritten model's MACs; the
target is reached; a reduced model counts the layers reading its reduced hidden states."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.analysis.plan import PruningPlan
from graphprune.ir.model import copy_model
from graphprune.passes.allocation.joint import JointBudget
from graphprune.passes.allocation.sensitivity import Sensitivity
from graphprune.passes.allocation.tokens import LEVELS, TokenSensitivity
from graphprune.passes.rewrite.apply import apply_plan
from graphprune.passes.rewrite.tokens import TokenSchedule, insert_token_reduction
from graphprune.verify.cost import cost
from tests.harness import load

pytest.importorskip("torch")


def _given(analysis, token_error: float, width_error: float) -> tuple[Sensitivity, TokenSensitivity, dict]:
    """Sensitivities with linear error curves: `width_error` for a whole group, `token_error` per level step."""
    groups = [g for g in analysis.prunable() if g.blocks is None]
    counts = {g.id: np.array([0, g.size // 2, g.size - 1]) for g in groups}
    errors = {g.id: width_error * counts[g.id] / g.size for g in groups}
    tokens = TokenSensitivity(analysis.model, TokenSchedule(1.0), (1,), None, [])
    tokens.errors = {(1, level): token_error * (1 - level) for level in LEVELS["topk"]}
    scores = {g.id: np.arange(g.size, dtype=np.float64) for g in analysis.prunable()}
    return Sensitivity(counts, errors), tokens, scores


def _rewritten_macs(vit, plan: PruningPlan) -> int:
    """The MACs of the model the plan writes: widths sliced, then its token reduction inserted."""
    analysis = analyze(load(vit))
    pruned = apply_plan(analysis, plan)
    schedule = TokenSchedule.planned(plan.meta)
    if schedule is not None:
        insert_token_reduction(pruned, schedule)
    return cost(pruned).macs


@pytest.mark.parametrize("token_error, width_error, target, reduces", [
    (1e-4, 10.0, 0.75, "tokens"), (10.0, 1e-4, 0.75, "widths"),
    (1e-4, 10.0, 0.6, "both")])  # tokens alone reach 0.70 of the MACs at most (keep 0.3 of 17 tokens, one site)
def test_the_cheaper_is_spent_and_the_counted_macs_are_the_written_ones(exported, token_error, width_error, target,
                                                                        reduces):
    vit = exported("vit", False)
    analysis = analyze(load(vit))
    dense = cost(analysis.model).macs
    sensitivity, tokens, scores = _given(analysis, token_error, width_error)
    plan = JointBudget(analysis, scores, sensitivity, tokens).plan(target)
    measured = plan.meta["tokens"]["measured"]
    widths, schedule = bool(plan.removed), TokenSchedule.planned(plan.meta)
    assert (widths, schedule is not None) == {"tokens": (False, True), "widths": (True, False),
                                              "both": (True, True)}[reduces]
    if reduces == "both":
        assert schedule.rates() == (LEVELS["topk"][-1],)  # the cheap tokens all spent before any width
    assert measured["macs"] <= target
    assert _rewritten_macs(vit, plan) / dense == pytest.approx(measured["macs"], abs=2e-4)


def test_one_ranking_serves_every_target_a_latency_search_probes(exported):
    """A latency target probes several MACs targets on one JointBudget (its ranking computed once): each probe's
    plan is the plan a fresh joint allocation at that target makes."""
    analysis = analyze(load(exported("vit", False)))
    sensitivity, tokens, scores = _given(analysis, 1e-2, 1e-2)
    budget = JointBudget(analysis, scores, sensitivity, tokens)
    for target in (0.8, 0.55, 0.7):
        probed, fresh = budget.plan(target), JointBudget(analysis, scores, sensitivity, tokens).plan(target)
        assert {g: u.tolist() for g, u in probed.removed.items()} == {g: u.tolist() for g, u in fresh.removed.items()}
        assert probed.meta["tokens"] == fresh.meta["tokens"] and probed.meta["tokens"]["measured"]["macs"] <= target


def test_an_unreachable_target_is_refused_with_what_is_reachable(exported):
    analysis = analyze(load(exported("vit", False)))
    sensitivity, tokens, scores = _given(analysis, 1.0, 1.0)
    with pytest.raises(Exception, match=r"cannot reach MACs 0.010 .* \(at most 0\.[0-9]+\)"):
        JointBudget(analysis, scores, sensitivity, tokens).plan(0.01)


def test_a_reduced_model_counts_the_layers_that_read_the_reduced_tokens(exported):
    """Keep 1 inserts the reduction ops and drops nothing: the MACs can only grow (the projections reading the
    gathered hidden states were once left uncounted, their input undeclared)."""
    model = load(exported("bert", True))
    dense = cost(model, None, {"seq": 32}).macs
    reduced = copy_model(model)
    insert_token_reduction(reduced, TokenSchedule(1.0, (1,)))
    assert cost(reduced, None, {"seq": 32}).macs >= dense
    insert_token_reduction(model, TokenSchedule(0.5, (1,)))
    assert cost(model, None, {"seq": 32}).macs < dense
