"""Masked-equivalence harness shared by the tests: prune a model and compare it in ONNX Runtime with the
original whose consumer weights reading the removed channels are zeroed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from graphprune import verify
from graphprune.analysis.coupling import Analysis, analyze
from graphprune.analysis.masking import mask_consumers
from graphprune.analysis.plan import PruningPlan
from graphprune.io import runtime
from graphprune.io.load import from_proto, load_model
from graphprune.passes import apply_plan
from graphprune.passes.calibration.statistics import Calibration
from graphprune.passes.rewrite.compensation import (
    apply_bias_deltas,
    apply_weight_updates,
    bias_deltas,
    obs_weight_updates,
)
from graphprune.verify.cost import count_params
from graphprune.verify.drift import max_relative_error

Source = Path | onnx.ModelProto
PlanMaker = Callable[[Analysis], PruningPlan]


def load(source: Source) -> ir.Model:
    return from_proto(source) if isinstance(source, onnx.ModelProto) else load_model(source)


def outputs(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return runtime.run(runtime.session(model), feeds)


def compensation_for(analysis: Analysis, plan: PruningPlan, calibration: Calibration | None,
                     kind: str) -> tuple[dict, dict]:
    """(bias deltas, weight updates) of compensation `kind` ("bias" or "obs"), from the original weights."""
    if calibration is None:
        return {}, {}
    if kind == "obs":
        return {}, obs_weight_updates(analysis, plan, calibration)
    return bias_deltas(analysis, plan, calibration), {}


def masked_check(source: Source, make_plan: PlanMaker, batch: int = 2, seed: int = 0,
                 calibration: Calibration | None = None, compensation: str = "bias", dims: dict | None = None,
                 feeds: dict | None = None, **analysis_options) -> dict:
    """Prune `source` with the plan `make_plan` builds; return the errors of the pruned model against the
    masked original and of the dense original against the masked one (which must be non-zero to be a test).
    With `calibration`, both get the same compensation (bias deltas or OBS weight updates); `dims` sizes the
    inputs' symbolic axes (default: `batch` leading, 1 elsewhere), or `feeds` are the inputs."""
    pruned_analysis = analyze(load(source), **analysis_options)
    plan = make_plan(pruned_analysis)
    masked_analysis = analyze(load(source), **analysis_options)
    masked_deltas, masked_weights = compensation_for(masked_analysis, plan, calibration, compensation)
    apply_weight_updates(masked_weights)
    masked = mask_consumers(masked_analysis, plan)
    apply_bias_deltas(masked, masked_deltas)
    dense = load(source)
    params_before = count_params(dense)
    deltas, weights = compensation_for(pruned_analysis, plan, calibration, compensation)
    pruned = apply_plan(pruned_analysis, plan, deltas, weights)
    verify.check(pruned)
    feeds = feeds if feeds is not None else runtime.random_feeds(runtime.session(dense), batch=batch, seed=seed,
                                                                  dims=dims)
    reference = outputs(masked, feeds)
    return {
        "plan": plan,
        "error": max_relative_error(reference, outputs(pruned, feeds)),
        "masking_effect": max_relative_error(reference, outputs(dense, feeds)),
        "params": (params_before, count_params(pruned)),
        "shapes": ([o.shape for o in reference], [o.shape for o in outputs(pruned, feeds)]),
    }


def assert_group_equivalent(source: Source, group, seed: int = 0, tolerance: float = 1e-4,
                            dims: dict | None = None, **analysis_options) -> dict:
    """Masked equivalence of removing a random subset of `group`. A group read by some consumer must also
    change the output when masked (else the check proves nothing); a group nobody reads must vanish exactly."""
    result = masked_check(source, random_subset_plan(group.id, seed), dims=dims, **analysis_options)
    if any(m.consumer for m in group.members):
        assert result["error"] <= tolerance, (group.label, result)
        assert result["error"] < result["masking_effect"] / 100, (group.label, result)
    else:
        assert result["error"] <= 1e-6 and result["masking_effect"] <= 1e-6, (group.label, result)
    assert result["params"][1] < result["params"][0], (group.label, result)
    return result


def random_subset_plan(group_id: int, seed: int = 0) -> PlanMaker:
    """A plan removing a random non-empty proper subset of one group's units."""

    def make(analysis: Analysis) -> PruningPlan:
        group = analysis.group(group_id)
        rng = np.random.default_rng(seed + group_id)
        count = int(rng.integers(1, group.size))
        plan = PruningPlan()
        plan.remove(group, rng.choice(group.size, size=count, replace=False))
        return plan

    return make


def assert_all_groups_equivalent(model, least: int = 1, dims: dict | None = None) -> None:
    """Masked equivalence of every prunable group (at least `least` of them), random inputs sized by `dims`."""
    prunable = analyze(load(model)).prunable()
    assert len(prunable) >= least, [g.summary() for g in analyze(load(model)).groups]
    for group in prunable:
        assert_group_equivalent(model, group, dims=dims)


def frozen_reasons(model) -> list[str]:
    return [r for g in analyze(load(model)).groups for r in g.frozen_reasons]
