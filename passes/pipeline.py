"""The whole job, in pipeline order: load → analyze → score → allocate → rewrite → verify → save."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from graphprune import verify
from graphprune.analysis import Analysis, analyze
from graphprune.errors import GraphpruneError
from graphprune.groups import Group
from graphprune.io import load_model, save_model
from graphprune.metrics import Cost, cost
from graphprune.passes.allocation import experts, ranked, to_target, uniform
from graphprune.passes.calibration import (
    Calibration,
    ImageSpec,
    calibrate,
    file_batches,
    image_batches,
    synthetic_batches,
    token_batches,
)
from graphprune.passes.compensation import apply_weight_updates, bias_deltas, obs_weight_updates
from graphprune.passes.expert_merge import merge_updates
from graphprune.passes.importance import get_criterion, needs_data
from graphprune.passes.importance.obs import GRAM_LIMIT
from graphprune.passes.rewrite import apply_plan
from graphprune.plan import PruningPlan

EXPERT_CRITERION = "router-similarity"  # weights only, so expert pruning needs no data by default


@dataclass
class PruneResult:
    plan: PruningPlan
    before: Cost
    after: Cost
    groups: list[Group]
    verification: verify.Verification

    @property
    def groups_pruned(self) -> int:
        return len(self.plan.removed)


@dataclass
class Allocation:
    """How much to remove: a ratio (per kind under uniform allocation) or a params/flops target, and the
    ratio of every MoE layer's experts (0: experts are kept)."""

    strategy: str = "uniform"
    ratio: float = 0.5
    kind_ratios: dict[str, float] | None = None
    round_to: int = 1
    max_group_ratio: float = 0.99
    target: tuple[str, float] | None = None
    expert_ratio: float = 0.0

    def plan(self, analysis: Analysis, scores: dict) -> PruningPlan:
        plan = self._strategy_plan(analysis, scores)
        if self.expert_ratio:
            plan.removed.update(experts(analysis, scores, self.expert_ratio).removed)
            plan.meta["expert_ratio"] = self.expert_ratio
        return plan

    def _strategy_plan(self, analysis: Analysis, scores: dict) -> PruningPlan:
        if self.strategy not in ("uniform", "global", "adaptive"):
            raise GraphpruneError(f"unknown allocation {self.strategy!r}: uniform, global or adaptive")
        if self.target is not None:
            return to_target(analysis, scores, *self.target, self.round_to, self.strategy, self.max_group_ratio)
        if self.strategy == "uniform":
            return uniform(analysis, scores, self.ratio, self.round_to, self.kind_ratios, self.max_group_ratio)
        return ranked(analysis, scores, self.ratio, self.round_to, self.strategy, self.max_group_ratio)


def make_plan(analysis: Analysis, criterion: str = "l2", ratio: float = 0.5, round_to: int = 1,
              seed: int = 0, kind_ratios: dict[str, float] | None = None,
              calibration: Calibration | None = None, allocation: Allocation | None = None,
              options: dict | None = None, expert_criterion: str = EXPERT_CRITERION) -> PruningPlan:
    """Score every prunable group with `criterion` (its `options`), MoE experts with `expert_criterion` when the
    allocation removes experts, and allocate: `allocation`, or `ratio` (per kind: `kind_ratios`) uniformly."""
    allocation = allocation or Allocation("uniform", ratio, kind_ratios, round_to)
    scorer = get_criterion(criterion, calibration, seed, options)
    expert_scorer = get_criterion(expert_criterion, calibration, seed, options) if allocation.expert_ratio else None
    scores = {g.id: (expert_scorer if g.kind == "expert" else scorer).score(analysis, g)
              for g in analysis.prunable() if g.kind != "expert" or expert_scorer is not None}
    plan = allocation.plan(analysis, scores)
    plan.meta["criterion"] = criterion
    if expert_scorer is not None:
        plan.meta["expert_criterion"] = expert_criterion
    if calibration is not None:
        plan.meta["calibration"] = {"source": calibration.source, "samples": calibration.samples}
    return plan


@dataclass
class CalibrationSpec:
    """Where calibration data comes from: a .npz/.npy file, a .txt of token ids, a folder of images
    (preprocessed by `image`), or synthetic inputs (data-free)."""

    path: str | None = None
    data_free: bool = False
    samples: int = 128
    batch_size: int = 16
    progress: bool = False
    image: ImageSpec | None = None
    match_bn: bool = False

    def wanted(self) -> bool:
        return self.path is not None or self.data_free


def run_calibration(analysis: Analysis, spec: CalibrationSpec, seed: int = 0, gram_limit: int = 0) -> Calibration:
    """Collect statistics for `analysis` from the source `spec` names (Gram matrices up to `gram_limit`)."""
    inputs = [v.name for v in analysis.model.graph.inputs if not v.is_initializer()]
    if spec.path and Path(spec.path).is_dir():
        batches = image_batches(spec.path, inputs[0], spec.image or ImageSpec(), spec.batch_size, spec.samples)
        source = str(spec.path)
    elif spec.path and Path(spec.path).suffix == ".txt":
        batches, source = token_batches(spec.path, inputs, spec.batch_size, spec.samples), str(spec.path)
    elif spec.path:
        batches, source = file_batches(spec.path, inputs, spec.batch_size, spec.samples), str(spec.path)
    elif spec.data_free:
        batches = synthetic_batches(analysis.model, spec.batch_size, spec.samples, seed, spec.match_bn)
        source = "data-free (BN-matched)" if spec.match_bn else "data-free"
    else:
        raise GraphpruneError("calibration needs data: pass --calib FILE or --data-free")
    total = -(-spec.samples // spec.batch_size)
    return calibrate(analysis, batches, total=total, progress=spec.progress, source=source, gram_limit=gram_limit)


def prune_file(source: str | os.PathLike, target: str | os.PathLike, criterion: str = "l2",
               ratio: float = 0.5, round_to: int = 1, seed: int = 0, kind_ratios: dict[str, float] | None = None,
               prune_hidden: bool = False, calibration: CalibrationSpec | None = None,
               compensate: bool | None = None, allocation: Allocation | None = None,
               options: dict | None = None, gqa_units: str = "kv-group",
               expert_criterion: str = EXPERT_CRITERION, expert_merge: bool = False) -> PruneResult:
    """Prune `source` into `target`; `target` is written only once the pruned model passed the checks the
    original passes. `prune_hidden` allows approximate groups (the hidden dimension under normalisation).
    Criteria that need data, and compensation (default: on for flap (bias) and obs (weights)), calibrate first.
    `expert_merge` folds removed experts into their nearest survivors (weighted by calibration gate weight
    when there is calibration data, else equally) instead of dropping them."""
    source, target = _distinct(source, target)
    compensate = criterion in ("flap", "obs") if compensate is None else compensate
    spec = calibration or CalibrationSpec()
    removes_experts = allocation is not None and allocation.expert_ratio > 0
    for name in [criterion] + ([expert_criterion] if removes_experts else []):
        if (needs_data(name) or compensate) and not spec.wanted():
            raise GraphpruneError(f"{'bias compensation' if compensate else f'criterion {name!r}'} needs "
                                  "calibration data: pass --calib FILE or --data-free")
    model = load_model(source)
    before = cost(model, source)
    analysis = analyze(model, allow_approximate=prune_hidden, gqa_units=gqa_units)
    gram_limit = GRAM_LIMIT if criterion == "obs" else 0
    stats = run_calibration(analysis, spec, seed, gram_limit) if spec.wanted() else None
    plan = make_plan(analysis, criterion, ratio, round_to, seed, kind_ratios, stats, allocation, options,
                     expert_criterion)
    plan.meta["prune_hidden"], plan.meta["gqa_units"] = prune_hidden, gqa_units
    if expert_merge:
        plan.meta["expert_merge"] = "by gate weight" if stats is not None else "equal"
    return _rewrite_and_save(source, target, analysis, plan, stats, compensate, before)


def apply_file(source: str | os.PathLike, plan_path: str | os.PathLike, target: str | os.PathLike,
               calibration: CalibrationSpec | None = None, compensate: bool | None = None) -> PruneResult:
    """Apply a saved plan to `source`. Compensation (default: as when the plan was made) is recomputed from
    calibration data, so it needs the same `calibration` source."""
    source, target = _distinct(source, target)
    model = load_model(source)
    before = cost(model, source)
    probe = PruningPlan.read_meta(plan_path)
    analysis = analyze(model, allow_approximate=bool(probe.get("prune_hidden")),
                       gqa_units=probe.get("gqa_units") or "kv-group")
    plan = PruningPlan.load(plan_path, analysis.groups)
    criterion = plan.meta.get("criterion", "")
    compensate = bool(plan.meta.get("compensation")) if compensate is None else compensate
    spec = calibration or CalibrationSpec()
    if compensate and not spec.wanted():
        raise GraphpruneError("this plan compensates removed channels: pass --calib FILE or --data-free to "
                              "recompute the compensation, or --no-compensate")
    merge_by_gate = plan.meta.get("expert_merge") == "by gate weight"
    if merge_by_gate and not spec.wanted():
        raise GraphpruneError("this plan merges experts by gate weight: pass --calib FILE or --data-free")
    gram_limit = GRAM_LIMIT if compensate and criterion == "obs" else 0
    stats = run_calibration(analysis, spec, 0, gram_limit) if compensate or merge_by_gate else None
    return _rewrite_and_save(source, target, analysis, plan, stats, compensate, before)


def _distinct(source: str | os.PathLike, target: str | os.PathLike) -> tuple[Path, Path]:
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise GraphpruneError("the output path must differ from the input (the input is never modified)")
    return source, target


def _rewrite_and_save(source: Path, target: Path, analysis: Analysis, plan: PruningPlan,
                      stats: Calibration | None, compensate: bool, before: Cost) -> PruneResult:
    """Merge experts if the plan says so, compensate, rewrite, verify against the original's checks, save
    atomically."""
    if plan.meta.get("expert_merge"):
        apply_weight_updates(merge_updates(analysis, plan, stats if plan.meta["expert_merge"] != "equal" else None))
    deltas, weights = None, None
    if compensate and plan.meta.get("criterion") == "obs":
        weights = obs_weight_updates(analysis, plan, stats)
    elif compensate:
        deltas = bias_deltas(analysis, plan, stats)
    plan.meta["compensation"] = ("obs-weights" if weights is not None else "bias") if compensate else None
    pruned = apply_plan(analysis, plan, deltas, weights)
    checks = verify.verify_like(source, pruned)
    save_model(pruned, target)
    return PruneResult(plan, before, cost(pruned, target), analysis.groups, checks)
