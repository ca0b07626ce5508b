"""OBS compensation where several groups feed one consumer weight: each group's removals are repaired at that
group's own rows of the weight."""

from __future__ import annotations

import numpy as np

from graphprune.analysis.coupling import analyze
from graphprune.analysis.plan import PruningPlan
from graphprune.io import runtime
from graphprune.passes import apply_plan
from graphprune.passes.calibration.statistics import calibrate
from graphprune.passes.rewrite.compensation import apply_weight_updates, obs_weight_updates
from graphprune.verify.drift import max_relative_error
from tests.graphs import GraphBuilder
from tests.harness import load

RNG = np.random.default_rng(0)


def twins_concat_mlp():
    """y = Concat(Relu(x·[a a]), Relu(x·[b b]))·c: two groups of 8 neurons, in each 0–3 are copies of 4–7."""
    b = GraphBuilder()
    branches = []
    for seed in (1, 2):
        half = np.random.default_rng(seed).standard_normal((4, 4)).astype(np.float32)
        branches.append(b.op("Relu", [b.op("MatMul", ["x", b.const(np.concatenate([half, half], axis=1))])]))
    y = b.op("MatMul", [b.op("Concat", branches, axis=1), b.weight(16, 3)])
    return b.build({"x": ["batch", 4]}, {y: ["batch", 3]})


def test_each_group_feeding_a_concat_is_repaired_at_its_own_rows(monkeypatch):
    """Removing neuron 1 of each branch (the same index in both groups) loses nothing once OBS moves each onto
    its twin (5 of the same branch): the pruned model is the dense one. Positions taken from the wrong group
    would double row 1 of the first branch (a singular system) and leave the second unrepaired."""
    monkeypatch.setattr("graphprune.passes.importance.obs.DAMPING", 1e-9)
    dense = load(twins_concat_mlp())
    analysis = analyze(load(twins_concat_mlp()))
    groups = sorted(analysis.prunable(), key=lambda g: g.id)
    assert len(groups) == 2 and all(g.size == 8 for g in groups)
    batches = [{"x": RNG.standard_normal((32, 4)).astype(np.float32)} for _ in range(4)]
    stats = calibrate(analysis, batches, gram_limit=16)
    plan = PruningPlan()
    for group in groups:
        plan.remove(group, [1])
    apply_weight_updates(obs_weight_updates(analysis, plan, stats))
    pruned = apply_plan(analysis, plan)
    feeds = {"x": RNG.standard_normal((64, 4)).astype(np.float32)}
    run = [runtime.run(runtime.session(model), feeds) for model in (dense, pruned)]
    assert max_relative_error(*run) < 1e-5
