"""Expert criteria on MoE layers whose right answer is known by construction: an expert the router never picks,
an expert whose output is tiny, and duplicated experts (same router row and weights)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.analysis.experts import branch_weights
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import GraphpruneError
from graphprune.io.load import from_proto
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.calibration.statistics import calibrate
from graphprune.passes.importance import get_criterion
from graphprune.passes.pipeline.prune import make_plan, prune_file
from graphprune.passes.rewrite.expert_merge import merge_updates
from tests.graphs import looped_moe
from tests.harness import masked_check

D, EXPERTS = 8, 6


def random_layer(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    router = rng.standard_normal((D, EXPERTS)).astype(np.float32)
    experts = [rng.standard_normal((D, D)).astype(np.float32) for _ in range(EXPERTS)]
    return router, np.zeros(EXPERTS, np.float32), experts


def scores_of(model: onnx.ModelProto, criterion: str) -> np.ndarray:
    analysis = analyze(from_proto(model))
    feeds = [{"x": np.random.default_rng(i).standard_normal((64, D)).astype(np.float32)} for i in range(4)]
    calibration = calibrate(analysis, feeds)
    (group,) = [g for g in analysis.prunable() if g.kind == "expert"]
    return get_criterion(criterion, calibration).score(analysis, group)


def test_router_frequency_ranks_a_never_routed_expert_last():
    router, bias, experts = random_layer()
    bias[3] = -50.0  # the router never picks expert 3
    scores = scores_of(looped_moe(router, bias, experts), "router-frequency")
    assert np.argmin(scores) == 3 and scores[3] == 0


def test_expert_output_ranks_a_tiny_expert_last():
    router, bias, experts = random_layer()
    router[:, 2] = router[:, 0]  # as often routed as expert 0 ...
    experts[2] = experts[2] * 1e-3  # ... but its output is a thousand times smaller
    assert np.argmin(scores_of(looped_moe(router, bias, experts), "expert-output")) == 2


def test_router_similarity_drops_one_of_two_duplicate_experts():
    router, bias, experts = random_layer()
    router[:, 4], experts[4] = router[:, 1], experts[1]
    analysis = analyze(from_proto(looped_moe(router, bias, experts)))
    (group,) = [g for g in analysis.prunable() if g.kind == "expert"]
    scores = get_criterion("router-similarity").score(analysis, group)
    assert set(np.argsort(scores)[:1].tolist()) <= {1, 4}
    assert sorted(np.argsort(scores)[-EXPERTS + 1:].tolist()) in ([0, 1, 2, 3, 5], [0, 2, 3, 4, 5])


def test_plan_removes_the_lowest_experts_and_stays_exact():
    router, bias, experts = random_layer()
    bias[[0, 3]] = -50.0
    model = looped_moe(router, bias, experts)

    def plan(analysis):
        feeds = [{"x": np.random.default_rng(9).standard_normal((64, D)).astype(np.float32)}]
        calibration = calibrate(analysis, feeds)
        return make_plan(analysis, "l2", calibration=calibration, expert_criterion="router-frequency",
                         allocation=Allocation(ratio=0.0, expert_ratio=1 / 3))

    result = masked_check(model, plan, dims={"tokens": 32})
    (removed,) = result["plan"].removed.values()
    assert removed.tolist() == [0, 3]
    assert result["error"] <= 1e-6  # never-routed experts: removing them changes nothing at all
    assert result["params"][0] - result["params"][1] == 2 * (D * D + D + 1)


def test_expert_criteria_refuse_other_groups():
    analysis = analyze(from_proto(looped_moe(*random_layer())))
    channel = next(g for g in analysis.groups if g.kind != "expert")
    with pytest.raises(GraphpruneError, match="scores MoE experts only"):
        get_criterion("router-similarity").score(analysis, channel)


def test_merge_folds_removed_experts_into_their_nearest_survivor(tmp_path):
    router, bias, experts = random_layer()
    router[:, 4] = router[:, 1] + 0.01  # expert 4's nearest survivor is expert 1
    model = looped_moe(router, bias, experts)
    analysis = analyze(from_proto(model))
    (group,) = [g for g in analysis.prunable() if g.kind == "expert"]
    calibration = calibrate(analysis, [{"x": np.ones((16, D), np.float32)}])
    plan = PruningPlan()
    plan.remove(group, [4])
    updates = merge_updates(analysis, plan, calibration)
    gate = calibration.routing_of(group).gate + 1e-12
    share = gate[[1, 4]] / gate[[1, 4]].sum()
    merged = {v.name: a for v, a in updates.items()}
    survivor = branch_weights(group.experts)[1][0]
    np.testing.assert_allclose(merged[survivor.name], share[0] * experts[1] + share[1] * experts[4], rtol=1e-5)
    np.testing.assert_allclose(updates[router_member(group).value][:, 1], share @ router[:, [1, 4]].T, rtol=1e-5)
    source = tmp_path / "moe.onnx"
    onnx.save(model, source)
    one_expert = Allocation(ratio=0.0, expert_ratio=0.2)
    dropped = prune_file(source, tmp_path / "dropped.onnx", ratio=0.0, allocation=one_expert)
    folded = prune_file(source, tmp_path / "merged.onnx", ratio=0.0, allocation=one_expert, expert_merge=True)
    assert folded.plan.meta["expert_merge"] == "equal" and folded.after.params == dropped.after.params
    weights = [onnx.load(tmp_path / name).graph.initializer for name in ("merged.onnx", "dropped.onnx")]
    assert weights[0] != weights[1]


def router_member(group):
    return next(m for m in group.param_members() if m.value.const_value.shape == (D, EXPERTS))
