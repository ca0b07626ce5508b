"""Measured sensitivity allocation: the output error of each group's removal, measured in ONNX Runtime, decides
where the budget goes — a group whose removal provably changes nothing goes first."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.passes import CalibrationSpec, prune_file
from graphprune.passes.allocation.sensitivity import _hull_segments, measure
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.allocation.strategies import measured
from graphprune.passes.calibration.statistics import calibrate
from graphprune.passes.rewrite.compensation import obs_preview
from tests.graphs import GraphBuilder
from tests.harness import load

RNG = np.random.default_rng(0)


def two_branch_mlp():
    """y = Relu(x·a + bias_a)·c + Relu(x·b + bias_b)·d, 8 neurons per branch, equal parameters per neuron; every
    neuron of the first branch is dead (its bias −100: Relu gives 0 on these inputs), the second is alive."""
    b = GraphBuilder()
    dead = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", b.weight(4, 8)]), b.const(np.full(8, -100, np.float32))])])
    alive = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", b.weight(4, 8)]), b.weight(8, positive=True)])])
    y = b.op("Add", [b.op("MatMul", [dead, b.weight(8, 3)]), b.op("MatMul", [alive, b.weight(8, 3)])])
    return b.build({"x": ["batch", 4]}, {y: ["batch", 3]})


def feeds(count: int = 2) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((16, 4)).astype(np.float32)} for _ in range(count)]


def branch_ids(analysis):
    groups = sorted(analysis.prunable(), key=lambda g: g.id)
    dead = next(g for g in groups if any(m.value.const_value is not None and m.value.const_value.numpy().min() == -100
                                         for m in g.members))
    return dead.id, next(g.id for g in groups if g.id != dead.id)


def test_a_group_whose_removal_changes_nothing_goes_first():
    analysis = analyze(load(two_branch_mlp()))
    dead, alive = branch_ids(analysis)
    scores = {g.id: RNG.random(g.size) for g in analysis.prunable()}
    sensitivity = measure(analysis, scores, analysis.prunable(), feeds())
    assert np.all(sensitivity.errors[dead] == 0) and np.all(sensitivity.errors[alive][1:] > 0)
    plan = measured(analysis, scores, sensitivity.ranking(analysis, scores), 0.5)
    # the budget is 4 + 4 neurons' parameters: the most the grid measures of the dead branch (6), then alive
    assert len(plan.removed[dead]) == 6 and len(plan.removed[alive]) == 2
    weights = [v.const_value.numpy() for v in load(two_branch_mlp()).graph.initializers.values()]
    restored = [v.const_value.numpy() for v in analysis.model.graph.initializers.values()]
    assert all(np.array_equal(a, b) for a, b in zip(weights, restored, strict=True))  # masks were undone


def twin_neurons_mlp():
    """y = Relu(x·[a a])·c: neurons 0–3 are exact copies of neurons 4–7."""
    b = GraphBuilder()
    half = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    hidden = b.op("Relu", [b.op("MatMul", ["x", b.const(np.concatenate([half, half], axis=1))])])
    y = b.op("MatMul", [hidden, b.weight(8, 3)])
    return b.build({"x": ["batch", 4]}, {y: ["batch", 3]})


def test_a_removal_compensation_repairs_is_measured_as_repaired(monkeypatch):
    """Removing up to one neuron of each twin pair costs nothing once OBS moves its weight onto the twin:
    measured with the preview of that compensation (damping negligible), those points are free; masked alone,
    they are not."""
    monkeypatch.setattr("graphprune.passes.importance.obs.DAMPING", 1e-9)
    analysis = analyze(load(twin_neurons_mlp()))
    (group,) = analysis.prunable()
    batches = feeds(4)
    stats = calibrate(analysis, batches, gram_limit=8)
    scores = {group.id: np.array([0, 1, 2, 3, 10, 11, 12, 13], dtype=float)}
    masked = measure(analysis, scores, [group], batches)
    repaired = measure(analysis, scores, [group], batches, compensation=obs_preview(analysis, stats))
    assert masked.counts[group.id].tolist() == repaired.counts[group.id].tolist() == [0, 1, 2, 3, 4, 6]
    assert np.all(masked.errors[group.id][1:] > 1e-3)
    assert np.all(repaired.errors[group.id][1:5] < 1e-9) and repaired.errors[group.id][5] > 1e-3
    original = [v.const_value.numpy() for v in load(twin_neurons_mlp()).graph.initializers.values()]
    restored = [v.const_value.numpy() for v in analysis.model.graph.initializers.values()]
    assert all(np.array_equal(a, b) for a, b in zip(original, restored, strict=True))  # updates were undone


def test_error_curves_are_valued_by_their_lower_convex_hull():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 3.0, 3.5, 9.0])  # the point at 1 lies above the chord from 0 to 2
    assert _hull_segments(x, y) == [(0, 2, 1.75), (2, 3, 5.5)]


def test_measured_allocation_meets_a_params_target_through_the_pipeline(tmp_path):
    source = tmp_path / "mlp.onnx"
    source.write_bytes(two_branch_mlp().SerializeToString())
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in feeds(4)]))
    result = prune_file(source, tmp_path / "o.onnx", criterion="l2",
                        allocation=Allocation("measured", target=("params", 0.7)),
                        calibration=CalibrationSpec(str(tmp_path / "calib.npz")))
    assert result.after.params <= 0.7 * result.before.params
    dead, _ = branch_ids(analyze(load(two_branch_mlp())))
    assert max(result.plan.removed, key=lambda gid: len(result.plan.removed[gid])) == dead
    runtime.run(runtime.session(tmp_path / "o.onnx"), feeds(1)[0])


def conv_chain():
    """x → Conv(3→8) → Relu → Conv(8→8) → Relu → Conv(8→4): the middle weight is pruned on both axes."""
    b = GraphBuilder()
    y = b.op("Relu", [b.conv("x", 3, 8, k=3)])
    y = b.conv(b.op("Relu", [b.conv(y, 8, 8, k=3)]), 8, 4)
    return b.build({"x": [1, 3, 6, 6]}, [y])


@pytest.mark.parametrize("first", [0, 1])
def test_the_measured_budget_is_the_uniform_plans_projected_parameters(first):
    """Units are charged their own parameters, so removing both axes of the middle weight counts its crossing
    twice; whichever group the ranking favours, the plan leaves no fewer parameters than the uniform plan at
    the same ratio, and fewer than one unit's parameters more."""
    from graphprune.passes.allocation.strategies import uniform
    from graphprune.verify.cost import projected_cost

    analysis = analyze(load(conv_chain()))
    groups = sorted(analysis.prunable(), key=lambda g: g.id)
    assert [g.size for g in groups] == [8, 8]
    scores = {g.id: np.arange(g.size, dtype=float) for g in groups}
    order = [groups[first], groups[1 - first]]
    ranking = [(float(rank), g.id, float(g.params_per_unit[0])) for rank, g in enumerate(order) for _ in range(7)]
    plan = measured(analysis, scores, ranking, 0.5)
    goal = projected_cost(analysis, uniform(analysis, scores, 0.5)).params
    left = projected_cost(analysis, plan).params
    assert goal <= left < goal + min(g.params_per_unit[0] for g in groups)
    assert len(plan.removed[order[0].id]) > 4  # the ranking is followed
    if first == 0:  # both groups lose units: their own parameters overstate what goes
        assert len(plan.removed) == 2
        counted = sum(g.params_of(units) for g in groups for units in [plan.removed[g.id]])
        assert counted > projected_cost(analysis, type(plan)()).params - left


def test_measured_allocation_needs_data(tmp_path):
    source = tmp_path / "mlp.onnx"
    source.write_bytes(two_branch_mlp().SerializeToString())
    with pytest.raises(GraphpruneError, match="runs the model on calibration data"):
        prune_file(source, tmp_path / "o.onnx", criterion="l2", allocation=Allocation("measured", 0.5))



@pytest.mark.parametrize("block_first", [True, False])
def test_a_pooled_budget_never_charges_weights_twice(block_first):
    """The Paddle recognizer's attention block holds every weight of its head group. The budget (99 % of heads
    and of neurons, uniformly) is short of the block plus all heads. Block ranked first: it is taken and the
    heads, gone with it, are skipped — not removed again, not charged. Heads first: they are taken, and the
    block is charged only what they left of it, so it still fits."""
    from graphprune.models.ocr import RECOGNIZER

    analysis = analyze(load(RECOGNIZER), depth=True)
    depth = next(g for g in analysis.prunable() if g.blocks is not None)
    heads = next(g for g in analysis.prunable() if g.kind == "head")
    attention = next(u for u, b in enumerate(depth.blocks) if heads.members[0].value in b.weights)
    scores = {g.id: np.arange(g.size, dtype=float) for g in analysis.prunable()}
    scores[depth.id][attention] = -1.0
    block = [(0.0, depth.id, float(depth.params_per_unit[attention]))]
    each_head = [(0.0, heads.id, float(c)) for c in heads.params_per_unit]
    neurons = next(g for g in analysis.prunable() if g.kind == "neuron")
    budget = sum(float(np.sort(g.params_per_unit)[: int(g.size * 0.99)].sum()) for g in (heads, neurons))
    assert budget < block[0][2] + float(heads.params_per_unit.sum())  # charging twice would not fit
    ranking = block + each_head if block_first else each_head + block
    plan = measured(analysis, scores, ranking, 0.0, kind_ratios={"head": 0.99, "neuron": 0.99})
    assert plan.removed[depth.id].tolist() == [attention]
    assert len(plan.removed.get(heads.id, [])) == (0 if block_first else heads.size - 1)  # one head always kept


def test_sensitivity_is_measured_on_the_leading_batches_holding_its_samples():
    """Past SAMPLES (32), further batches are not run: the errors are those of the first two batches of 16
    alone, and differ from those of the third alone (the batches do count)."""
    from graphprune.passes.allocation.sensitivity import SAMPLES, leading

    batches = feeds(5)
    assert SAMPLES == 32 and leading(batches, SAMPLES) == batches[:2] and leading(batches[:1], 32) == batches[:1]
    whole = {"x": np.concatenate([b["x"] for b in batches])}  # one batch of 80 rows: its first 32
    np.testing.assert_array_equal(leading([whole], SAMPLES)[0]["x"], whole["x"][:32])
    analysis = analyze(load(two_branch_mlp()))
    scores = {g.id: RNG.random(g.size) for g in analysis.prunable()}
    _, alive = branch_ids(analysis)
    errors = [measure(analysis, scores, analysis.prunable(), part).errors[alive]
              for part in (batches, batches[:2], batches[2:3])]
    np.testing.assert_array_equal(errors[0], errors[1])
    assert not np.allclose(errors[0], errors[2])
