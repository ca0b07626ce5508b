"""Depth pruning: residual blocks are found on the graph (and only real ones), removing one is exactly the
original with that branch multiplied by 0, an identity block goes first, and costs are projected exactly."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.blocks import find_blocks
from graphprune.analysis.coupling import analyze
from graphprune.analysis.plan import PruningPlan
from graphprune.io import runtime
from graphprune.passes import CalibrationSpec, apply_plan, prune_file
from graphprune.passes.rewrite.reconstruction import reconstruct
from graphprune.verify.cost import cost, projected_cost
from graphprune.verify.drift import max_relative_error
from tests.graphs import GraphBuilder
from tests.harness import load, masked_check

RNG = np.random.default_rng(0)


def residual_stack(identity: int | None = None):
    """x[B, 6] → three blocks x + W2·Relu(W1·x) (block `identity` has W2 = 0: it computes x) → then
    y = Relu(s·a) + Relu(s·b), an Add of two branches of the stream that is no residual block."""
    b = GraphBuilder()
    stream = "x"
    for index in range(3):
        hidden = b.op("Relu", [b.op("MatMul", [stream, b.weight(6, 8)])])
        w2 = b.const(np.zeros((8, 6), np.float32)) if index == identity else b.weight(8, 6)
        stream = b.op("Add", [stream, b.op("MatMul", [hidden, w2])])
    parallel = [b.op("Relu", [b.op("MatMul", [stream, b.weight(6, 6)])]) for _ in range(2)]
    return b.build({"x": ["batch", 6]}, {b.op("Add", parallel): ["batch", 6]})


def depth_group(analysis):
    return next(g for g in analysis.groups if g.kind == "block")


def test_blocks_are_the_residual_branches_and_nothing_else():
    blocks = find_blocks(load(residual_stack()))
    assert len(blocks) == 3
    assert all(len(block.nodes) == 3 and len(block.weights) == 2 for block in blocks)
    assert [block.stream.name for block in blocks][0] == "x"


def test_a_branch_also_read_elsewhere_is_no_block():
    b = GraphBuilder()
    hidden = b.op("MatMul", ["x", b.weight(6, 6)])
    joined = b.op("Add", ["x", hidden])
    proto = b.build({"x": ["batch", 6]}, {joined: ["batch", 6], hidden: ["batch", 6]})
    assert find_blocks(load(proto)) == []


@pytest.mark.parametrize("name, dynamo", [("resnet", False), ("bert", True), ("llama", True)])
def test_removing_blocks_is_the_original_with_those_branches_zeroed(exported, name, dynamo):
    def plan_of(analysis):
        group = depth_group(analysis)
        plan = PruningPlan()
        plan.remove(group, np.random.default_rng(1).choice(group.size, size=max(1, group.size // 3), replace=False))
        return plan

    result = masked_check(exported(name, dynamo), plan_of, depth=True)
    assert result["error"] < 1e-5 and result["masking_effect"] > 1e-3, result
    assert result["params"][1] < result["params"][0]
    analysis = analyze(load(exported(name, dynamo)), depth=True)
    plan = plan_of(analysis)
    projected = projected_cost(analysis, plan)
    actual = cost(apply_plan(analysis, plan))
    assert (projected.params, projected.macs) == (actual.params, actual.macs)


def test_an_identity_block_is_removed_first_and_exactly(tmp_path):
    source = tmp_path / "stack.onnx"
    source.write_bytes(residual_stack(identity=1).SerializeToString())
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((64, 6)).astype(np.float32))
    result = prune_file(source, tmp_path / "o.onnx", criterion="l2", ratio=0.0, kind_ratios={"block": 0.34}, depth=True,
                        calibration=CalibrationSpec(str(tmp_path / "calib.npz")))
    group = depth_group(analyze(load(residual_stack(identity=1)), depth=True))
    assert result.plan.removed[group.id].tolist() == [1]
    feeds = {"x": RNG.standard_normal((5, 6)).astype(np.float32)}
    dense, pruned = (runtime.run(runtime.session(p), feeds) for p in (source, tmp_path / "o.onnx"))
    assert max_relative_error(dense, pruned) < 1e-6
    assert result.after.params < result.before.params


def test_blocks_and_width_refit_together(exported):
    source = exported("bert", False)
    analysis = analyze(load(source), depth=True)
    plan = PruningPlan()
    group = depth_group(analysis)
    plan.remove(group, [1])
    heads = next(g for g in analysis.prunable() if g.kind == "head")
    plan.remove(heads, [0])
    dense = load(source)
    feeds = runtime.random_feeds(runtime.session(dense), batch=2, seed=3)
    calibration = [runtime.random_feeds(runtime.session(dense), batch=8, seed=s) for s in range(2)]
    assert reconstruct(analysis, plan, calibration).refit > 0
    reference = runtime.run(runtime.session(analysis.model), feeds)
    pruned = apply_plan(analysis, plan)
    assert max_relative_error(reference, runtime.run(runtime.session(pruned), feeds)) < 1e-4
