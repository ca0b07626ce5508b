"""Allocation strategies and targets: projected cost equals the rewritten model's, targets are met with the
least removal along the ranking, limits hold."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.errors import GraphpruneError
from graphprune.io.load import load_model
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes import Allocation, apply_plan, make_plan
from graphprune.passes.allocation.strategies import _plan_from_counts, _ranking, _removals
from graphprune.passes.importance import get_criterion
from graphprune.verify.cost import cost, projected_cost


@pytest.mark.parametrize(("name", "dynamo"), [("resnext", True), ("densenet", False), ("llama", True), ("vit", False)])
def test_projected_cost_equals_the_rewrite(exported, name, dynamo):
    analysis = analyze(load_model(exported(name, dynamo)))
    plan = make_plan(analysis, "random", 0.4, seed=1)
    projected = projected_cost(analysis, plan)
    actual = cost(apply_plan(analysis, plan))
    assert (projected.params, projected.macs) == (actual.params, actual.macs)


def scores_of(analysis):
    scorer = get_criterion("l2")
    return {g.id: scorer.score(analysis, g) for g in analysis.prunable()}


@pytest.mark.parametrize("strategy", ["uniform", "global", "adaptive"])
@pytest.mark.parametrize(("metric", "target"), [("params", 0.5), ("flops", 0.35)])
def test_targets_are_met_minimally(strategy, metric, target):
    analysis = analyze(load_model(DEMO_MODEL))
    dense = projected_cost(analysis, make_plan(analysis, "l2", 0.0))
    plan = make_plan(analysis, "l2", allocation=Allocation(strategy, target=(metric, target)))
    reached = projected_cost(analysis, plan)
    value, base = (reached.params, dense.params) if metric == "params" else (reached.macs, dense.macs)
    assert value <= target * base
    if strategy != "uniform":  # one unit fewer along the ranking misses the target
        removed = sum(len(u) for u in plan.removed.values())
        scores = scores_of(analysis)
        ranking = _ranking(analysis, scores, strategy)
        fewer = _plan_from_counts(analysis.prunable(), scores, _removals(ranking, removed - 1), 1, 0.99, {})
        projected = projected_cost(analysis, fewer)
        assert (projected.params if metric == "params" else projected.macs) > target * base
    actual = cost(apply_plan(analysis, plan))
    assert (actual.params if metric == "params" else actual.macs) == value


def test_global_and_adaptive_differ_from_uniform_and_respect_limits():
    analysis = analyze(load_model(DEMO_MODEL))
    plans = {s: make_plan(analysis, "l2", allocation=Allocation(s, 0.4, max_group_ratio=0.5)) for s in
             ("uniform", "global", "adaptive")}
    removed = {s: {g: len(u) for g, u in p.removed.items()} for s, p in plans.items()}
    assert removed["global"] != removed["uniform"] or removed["adaptive"] != removed["uniform"]
    for plan in plans.values():
        for gid, units in plan.removed.items():
            assert len(units) <= np.floor(analysis.group(gid).size * 0.5)


def test_unreachable_target_is_an_error():
    analysis = analyze(load_model(DEMO_MODEL))
    with pytest.raises(GraphpruneError, match="cannot reach"):
        make_plan(analysis, "l2", allocation=Allocation("global", target=("params", 0.05), max_group_ratio=0.5))
