import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import PlanError
from graphprune.io.load import load_model
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes import kept_count, make_plan


@pytest.mark.parametrize(
    ("size", "ratio", "round_to", "keep"),
    [(32, 0.5, 1, 16), (32, 0.25, 8, 24), (30, 0.3, 8, 16), (5, 0.99, 1, 1), (6, 0.5, 8, 3), (64, 0.0, 8, 64)],
)
def test_kept_count(size, ratio, round_to, keep):
    assert kept_count(size, ratio, round_to) == keep


def test_magnitude_removes_the_weakest_units():
    analysis = analyze(load_model(DEMO_MODEL))
    plan = make_plan(analysis, "l1", 0.5)
    from graphprune.passes.importance import get_criterion

    for gid, removed in plan.removed.items():
        scores = get_criterion("l1").score(analysis, analysis.group(gid))
        kept = np.setdiff1d(np.arange(len(scores)), removed)
        assert scores[removed].max() <= scores[kept].min()


def test_plan_json_round_trip_and_mismatch(tmp_path):
    analysis = analyze(load_model(DEMO_MODEL))
    plan = make_plan(analysis, "random", 0.4, seed=3)
    path = tmp_path / "plan.json"
    plan.save(path, analysis.groups)
    again = PruningPlan.load(path, analysis.groups)
    assert again.removed.keys() == plan.removed.keys()
    assert all(np.array_equal(again.removed[g], plan.removed[g]) for g in plan.removed)
    assert again.meta["criterion"] == "random"
    other = analyze(load_model(DEMO_MODEL))
    other.groups[next(iter(plan.removed))].size += 1
    with pytest.raises(PlanError):
        PruningPlan.load(path, other.groups)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError):
        PruningPlan.load(tmp_path / "bad.json", analysis.groups)


def test_plan_refuses_frozen_groups_and_removing_everything():
    analysis = analyze(load_model(DEMO_MODEL))
    frozen = next(g for g in analysis.groups if g.frozen)
    prunable = analysis.prunable()[0]
    with pytest.raises(PlanError, match="frozen"):
        PruningPlan().remove(frozen, [0])
    with pytest.raises(PlanError, match="every unit"):
        PruningPlan().remove(prunable, np.arange(prunable.size))
