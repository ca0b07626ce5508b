"""The whole job, in pipeline order: load → analyze → score → allocate → rewrite → verify → save."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx_ir as ir

from graphprune import progress, verify
from graphprune.analysis import Analysis, analyze
from graphprune.errors import GraphpruneError
from graphprune.groups import Group
from graphprune.io import StagedModel, load_model, source_files, unmap
from graphprune.metrics import Cost, cost, projected_cost
from graphprune.outputs import check_outputs
from graphprune.passes.allocation import RoundTo, experts, measured, ranked, to_target, uniform
from graphprune.passes.calibration import (
    Batches,
    Calibration,
    Feeds,
    ImageSpec,
    calibrate,
    file_batches,
    image_batches,
    token_batches,
)
from graphprune.passes.compensation import apply_weight_updates, bias_deltas, obs_preview, obs_weight_updates
from graphprune.passes.expert_merge import merge_updates
from graphprune.passes.importance import get_criterion, needs_data
from graphprune.passes.importance.depth import block_influence
from graphprune.passes.importance.obs import GRAM_LIMIT
from graphprune.passes.latency import LatencyProbe, search
from graphprune.passes.latency_table import load_or_measure, table_key
from graphprune.passes.norm_moments import use_norm_moments
from graphprune.passes.optimize import fuse
from graphprune.passes.reconstruction import reconstruct
from graphprune.passes.rewrite import apply_plan
from graphprune.passes.sensitivity import Compensation, measure
from graphprune.passes.synthetic import sizes_images, synthetic_batches
from graphprune.plan import PruningPlan, check_made_for, fingerprint

log = logging.getLogger("graphprune")

STRATEGIES = ("uniform", "global", "adaptive", "measured")
MEASURED_NEEDS_DATA = "allocation 'measured' runs the model on calibration data: pass --calib FILE or --data-free"
EXPERT_CRITERION = "router-similarity"  # weights only, so expert pruning needs no data by default


@dataclass
class PruneResult:
    """What a run did: the plan, costs before/after (projected when nothing was written: a dry run) and what
    verification established."""

    plan: PruningPlan
    before: Cost
    after: Cost
    groups: list[Group]
    verification: verify.Verification | None
    fusion: dict | None = None  # what --optimize fused, its error, whether it was kept

    @property
    def dry_run(self) -> bool:
        return self.verification is None

    @property
    def groups_pruned(self) -> int:
        return len(self.plan.removed)


@dataclass
class Allocation:
    """How much to remove: a ratio (per kind under uniform allocation) or a params/flops/latency target, and
    the ratio of every MoE layer's experts (0: experts are kept). `fast_widths` rounds each group's kept width
    to the multiple its layers run fast at (measured once into `latency_table`, a file reused when it fits)."""

    strategy: str = "uniform"
    ratio: float = 0.5
    kind_ratios: dict[str, float] | None = None
    round_to: RoundTo = 1
    max_group_ratio: float = 0.99
    target: tuple[str, float] | None = None
    expert_ratio: float = 0.0
    dims: dict[str, int] | None = None  # symbolic sizes a FLOPs target is counted at (absent: 1)
    fast_widths: bool = False
    latency_table: str | None = None
    threads: int | None = None  # ONNX Runtime threads when timing (latency target, latency table)
    latency: LatencyProbe | None = None  # set by prune_file for a latency target
    batches: list[Feeds] | None = None  # calibration inputs the measured strategy runs the model on
    compensation: Compensation | None = None  # the weights a removal will get, previewed when measuring

    def plan(self, analysis: Analysis, scores: dict) -> PruningPlan:
        plan = self._strategy_plan(analysis, scores)
        if self.expert_ratio:
            plan.removed.update(experts(analysis, scores, self.expert_ratio).removed)
            plan.meta["expert_ratio"] = self.expert_ratio
        return plan

    def _strategy_plan(self, analysis: Analysis, scores: dict) -> PruningPlan:
        if self.strategy not in STRATEGIES:
            raise GraphpruneError(f"unknown allocation {self.strategy!r}: {', '.join(STRATEGIES)}")
        if self.strategy == "measured":
            return self._measured_plan(analysis, scores)
        if self.target is not None and self.target[0] == "latency":
            if self.latency is None:
                raise GraphpruneError("a latency target needs the model file to time: use prune_file")
            return search(lambda flops: to_target(analysis, scores, "flops", flops, self.round_to, self.strategy,
                                                  self.max_group_ratio, self.dims), self.latency, self.target[1])
        if self.target is not None:
            return to_target(analysis, scores, *self.target, self.round_to, self.strategy, self.max_group_ratio,
                             self.dims)
        if self.strategy == "uniform":
            return uniform(analysis, scores, self.ratio, self.round_to, self.kind_ratios, self.max_group_ratio)
        return ranked(analysis, scores, self.ratio, self.round_to, self.strategy, self.max_group_ratio)

    def _measured_plan(self, analysis: Analysis, scores: dict) -> PruningPlan:
        if self.batches is None:
            raise GraphpruneError(MEASURED_NEEDS_DATA)
        if self.target is not None and self.target[0] == "latency":
            raise GraphpruneError("allocation 'measured' takes --ratio, per-kind ratios, --target-params or "
                                  "--target-flops (not a latency target)")
        groups = [g for g in analysis.prunable() if g.kind != "expert"]
        sensitivity = measure(analysis, scores, groups, self.batches, max_group_ratio=self.max_group_ratio,
                              compensation=self.compensation)
        ranking = sensitivity.ranking(analysis, scores)
        if self.target is not None:
            plan = to_target(analysis, scores, *self.target, self.round_to, "measured", self.max_group_ratio,
                             self.dims, ranking)
        else:
            plan = measured(analysis, scores, ranking, self.ratio, self.round_to, self.kind_ratios,
                            self.max_group_ratio)
        plan.meta["sensitivity"] = {str(gid): [round(float(e), 6) for e in errors]
                                    for gid, errors in sensitivity.errors.items()}
        return plan


@dataclass(frozen=True)
class Method:
    """What `prune` runs when it is given no criterion, and why: chosen by the data it was given."""

    criterion: str
    sequential: bool
    allocation: str | None  # None: the user's (uniform unless said)
    depth: bool  # residual blocks compete with width (under measured allocation)
    why: str


def default_method(spec: CalibrationSpec) -> Method:
    """With calibration data, obs refit stage by stage on the pruned model's activations, its budget spent by
    measured sensitivity over width and residual blocks; data-free, the same but one-shot (refits on
    synthetic inputs do not help: stand-in recognizer 0.86–0.94 sequential against 0.95 one-shot); without
    data, l2. Measured at 20/30/50 % (bench_quality): measured allocation beats uniform everywhere on MiniLM
    and the Paddle text recognizer, depth adds up to +0.17 (white-noise data-free runs) and costs at most
    0.009; the digits CNN is unchanged or better. Data-free with --smooth-images, the recognizer at 30 %
    keeps 0.41 uniform, 0.81 measured, 0.95 with depth."""
    if spec.path is not None:
        return Method("obs", True, "measured", True, "default with calibration data")
    if spec.data_free:
        return Method("obs", False, "measured", True, "default with --data-free")
    return Method("l2", False, None, False, "default without calibration data")


def make_plan(analysis: Analysis, criterion: str = "l2", ratio: float = 0.5, round_to: int = 1,
              seed: int = 0, kind_ratios: dict[str, float] | None = None,
              calibration: Calibration | None = None, allocation: Allocation | None = None,
              options: dict | None = None, expert_criterion: str = EXPERT_CRITERION) -> PruningPlan:
    """Score every prunable group with `criterion` (its `options`), MoE experts with `expert_criterion` when the
    allocation removes experts, and allocate: `allocation`, or `ratio` (per kind: `kind_ratios`) uniformly."""
    allocation = allocation or Allocation("uniform", ratio, kind_ratios, round_to)
    scorer = get_criterion(criterion, calibration, seed, options)
    expert_scorer = get_criterion(expert_criterion, calibration, seed, options) if allocation.expert_ratio else None
    groups = [g for g in analysis.prunable() if g.kind != "expert" or expert_scorer is not None]

    def score(group: Group) -> np.ndarray:
        if group.blocks is not None:
            return block_influence(calibration, group)
        scores = (expert_scorer if group.kind == "expert" else scorer).score(analysis, group)
        unmap(analysis.model)  # the weights read stay on disk, not resident
        return scores

    with progress.step(f"scoring ({criterion})"):
        scores = {group.id: score(group) for group in progress.iterate(groups, "scoring", "group")}
    plan = allocation.plan(analysis, scores)
    log.info("plan: %d units from %d groups", sum(len(u) for u in plan.removed.values()), len(plan.removed))
    plan.meta["criterion"] = criterion
    if expert_scorer is not None:
        plan.meta["expert_criterion"] = expert_criterion
    if calibration is not None:
        plan.meta["calibration"] = {"source": calibration.source, "samples": calibration.samples}
    return plan


@dataclass
class CalibrationSpec:
    """Where calibration data comes from: a .npz/.npy file, a .txt of token ids (or of raw text, with a
    `tokenizer`), a folder of images (preprocessed by `image`), or synthetic inputs (data-free)."""

    path: str | None = None
    data_free: bool = False
    samples: int = 128
    batch_size: int = 16
    image: ImageSpec | None = None
    match_bn: bool = False
    tokenizer: str | None = None
    smooth_images: bool = False

    def wanted(self) -> bool:
        return self.path is not None or self.data_free

    def check(self) -> None:
        """Refuse settings that cannot work, before any data is read."""
        if self.samples < 1 or self.batch_size < 1:
            raise GraphpruneError(f"calibration needs samples ≥ 1 and batch size ≥ 1 (got {self.samples}, "
                                  f"{self.batch_size})")
        if self.path is not None and not Path(self.path).exists():
            raise GraphpruneError(f"{self.path}: no such calibration file or folder")
        if self.tokenizer is not None and not Path(self.tokenizer).is_file():
            raise GraphpruneError(f"{self.tokenizer}: no such tokenizer file")
        if self.smooth_images and not (self.data_free and self.path is None):
            raise GraphpruneError("--smooth-images shapes synthetic images: it needs --data-free (and no --calib)")

    def open(self, model: ir.Model, seed: int = 0) -> Batches:
        """The batches this spec names, checked against `model`'s inputs (the first batch right away); call
        `check` first, before any other work."""
        inputs = [v.name for v in model.graph.inputs if not v.is_initializer()]
        if self.path and Path(self.path).is_dir():
            batches = image_batches(self.path, inputs[0], self.image or ImageSpec(), self.batch_size, self.samples)
        elif self.path and Path(self.path).suffix == ".txt":
            batches = token_batches(self.path, inputs, self.batch_size, self.samples, self.tokenizer)
        elif self.path:
            batches = file_batches(self.path, inputs, self.batch_size, self.samples)
        elif self.data_free:
            batches = synthetic_batches(model, self.batch_size, self.samples, seed, self.match_bn, self.image,
                                        self.smooth_images)
        else:
            raise GraphpruneError("calibration needs data: pass --calib FILE or --data-free")
        return batches.conformed(model)


def run_calibration(analysis: Analysis, spec: CalibrationSpec, seed: int = 0, gram_limit: int = 0) -> Calibration:
    """Collect statistics for `analysis` from the source `spec` names (Gram matrices up to `gram_limit`)."""
    spec.check()
    return _calibrated(analysis, spec.open(analysis.model, seed), gram_limit, spec)


def _calibrated(analysis: Analysis, batches: Iterable[Feeds], gram_limit: int, spec: CalibrationSpec) -> Calibration:
    """Calibration statistics; data-free, BatchNormalization outputs take the moments the BN's parameters imply."""
    data_free = spec.data_free and not spec.path
    try:
        stats = calibrate(analysis, batches, gram_limit)
    except GraphpruneError as exc:
        image = spec.image or ImageSpec()
        if not data_free or not sizes_images(analysis.model, image):
            raise
        height, width = image.size
        raise GraphpruneError(f"{exc}; synthetic images are {height}x{width} where the model leaves their size "
                              "open: pass the size it reads with --image-size H W") from exc
    if data_free:
        log.info("data-free: %d tensors take their BatchNormalization's moments", use_norm_moments(analysis, stats))
    return stats


@dataclass
class Output:
    """Where a run writes (`model`; `plan`, the plan as JSON, optional) and how its result is checked:
    `feeds` (arrays keyed by input name) or random inputs sized by `dims` for symbolic axes. A `dry_run`
    writes no model (only the plan, if asked) and reports projected costs. `reads`: other files the run reads
    (feeds, calibration data, a plan), which it must not overwrite either. `optimize`: a model type for ONNX
    Runtime's transformer optimizer ("bert", "gpt2"…), whose fusions are kept when they compute the same."""

    model: str | os.PathLike | None = None
    plan: str | os.PathLike | None = None
    dry_run: bool = False
    feeds: dict[str, np.ndarray] | None = None
    dims: dict[str, int] | None = None
    reads: tuple[str | os.PathLike, ...] = ()
    optimize: str | None = None  # fuse with ONNX Runtime's transformer optimizer for this model type

    def check(self, read: list[Path]) -> None:
        """Refuse unusable or unsafe locations: nothing written may be one of the files in `read`."""
        if self.model is None and not self.dry_run:
            raise GraphpruneError("no output path given (or ask for a dry run)")
        check_outputs(self.model if not self.dry_run else None, read, self.plan)


def _load(source: Path, output: Output, *reads: str | os.PathLike | None) -> ir.Model:
    """Load `source` once the output locations are known safe: before loading against the model file, the
    output's and these other `reads`, after it also against the external data files the model names."""
    others = [Path(p) for p in (*output.reads, *reads) if p is not None and Path(p).is_file()]
    output.check([source, *others])
    model = load_model(source)
    output.check(source_files(model) + others)
    return model


def run_analysis(model: ir.Model, **options) -> Analysis:
    """`analyze` as a pipeline step: shown as progress, its groups logged (INFO counts, DEBUG each group)."""
    with progress.step("analyzing"):
        analysis = analyze(model, **options)
    log.info("%d groups, %d prunable", len(analysis.groups), len(analysis.prunable()))
    for group in analysis.groups:
        log.debug("group %d %s %s (%s): %d units%s", group.id, group.kind, group.layer, group.label, group.size,
                  f", frozen: {group.frozen_reasons[0]}" if group.frozen else "")
    return analysis


def prune_file(source: str | os.PathLike, target: str | os.PathLike | Output | None, criterion: str = "l2",
               ratio: float = 0.5, round_to: int = 1, seed: int = 0, kind_ratios: dict[str, float] | None = None,
               prune_hidden: bool = False, calibration: CalibrationSpec | None = None,
               compensate: bool | None = None, allocation: Allocation | None = None,
               options: dict | None = None, gqa_units: str = "kv-group",
               expert_criterion: str = EXPERT_CRITERION, expert_merge: bool = False,
               sequential: bool = False, depth: bool = False) -> PruneResult:
    """Prune `source` into `target` (a path, or an `Output`: plan file, dry run, verification inputs); the
    model is written only once it passed the checks the original passes, and nothing the input reads is
    ever written. `prune_hidden` allows approximate groups (the hidden dimension under normalisation).
    Criteria that need data, and compensation (default: on for flap (bias) and obs (weights)), calibrate first.
    `expert_merge` folds removed experts into their nearest survivors (weighted by calibration gate weight
    when there is calibration data, else equally) instead of dropping them. `sequential` prunes stage by
    stage on the pruned model's own activations and refits the affected layers by least squares (its
    compensation, replacing bias and OBS compensation). `depth` also offers whole residual blocks (kind
    "block", removed by the "block" kind ratio or a measured allocation; ranked on calibration data)."""
    source, output = Path(source), target if isinstance(target, Output) else Output(target)
    compensate = criterion in ("flap", "obs") and not sequential if compensate is None else compensate
    spec = calibration or CalibrationSpec()
    removes_experts = allocation is not None and allocation.expert_ratio > 0
    measures = allocation is not None and allocation.strategy == "measured"
    if depth and not spec.wanted():
        raise GraphpruneError("depth pruning ranks residual blocks on calibration data: pass --calib FILE or "
                              "--data-free")
    if measures and not spec.wanted():
        raise GraphpruneError(MEASURED_NEEDS_DATA)
    if sequential and (compensate or expert_merge or removes_experts):
        raise GraphpruneError("--sequential refits layers itself: it does not combine with --compensate, "
                              "--expert-ratio or --expert-merge")
    for name in [criterion] + ([expert_criterion] if removes_experts else []):
        if (needs_data(name) or compensate or sequential) and not spec.wanted():
            need = "bias compensation" if compensate else "--sequential" if sequential else f"criterion {name!r}"
            raise GraphpruneError(f"{need} needs calibration data: pass --calib FILE or --data-free")
    spec.check()
    model = _load(source, output, spec.path)
    batches = spec.open(model, seed) if spec.wanted() else None
    kept_batches = list(batches) if sequential or measures else None
    before = cost(model, source, output.dims)
    model_fingerprint = fingerprint(model)
    analysis = run_analysis(model, allow_approximate=prune_hidden, gqa_units=gqa_units, depth=depth)
    _check_prunable(analysis, ratio, kind_ratios, allocation)
    gram_limit = GRAM_LIMIT if criterion == "obs" else 0
    one_shot = batches is not None and not (sequential and not needs_data(criterion) and not depth)
    if kept_batches is not None:  # calibrated on the kept list, which keeps the source's name and count
        batches = Batches(batches.samples, batches.source, iter(kept_batches))
    stats = _calibrated(analysis, batches, gram_limit, spec) if one_shot else None
    if measures:
        previews = criterion == "obs" and stats is not None and (compensate or sequential)
        allocation = replace(allocation, batches=kept_batches,
                             compensation=obs_preview(analysis, stats) if previews else None)
    if allocation is not None:
        allocation = _timed(allocation, analysis, source, output, model_fingerprint,
                            lambda: run_analysis(load_model(source), allow_approximate=prune_hidden,
                                                 gqa_units=gqa_units, depth=depth))
    plan = make_plan(analysis, criterion, ratio, round_to, seed, kind_ratios, stats, allocation, options,
                     expert_criterion)
    if not plan.removed and _requested(ratio, kind_ratios, allocation):
        raise GraphpruneError("the requested ratios remove no unit: every prunable group is too small for them "
                              "(see the warnings above); nothing was written")
    plan.meta["model"] = {"file": source.name, "fingerprint": model_fingerprint}
    plan.meta["prune_hidden"], plan.meta["gqa_units"], plan.meta["depth"] = prune_hidden, gqa_units, depth
    if expert_merge:
        plan.meta["expert_merge"] = "by gate weight" if stats is not None else "equal"
    if sequential and not output.dry_run:
        def rescore(stage: Calibration) -> Callable[[Group], np.ndarray]:
            scorer = get_criterion(criterion, stage, seed, options)
            return lambda group: scorer.score(analysis, group)

        # criteria that read weights only (l1, l2, random, policy) rank the same on any activations
        report = reconstruct(analysis, plan, kept_batches, rescore if needs_data(criterion) else None)
        plan.meta["reconstruction"] = report.as_meta()
    return _rewrite_and_save(source, output, analysis, plan, stats, compensate, before, refit=sequential)


def _requested(ratio: float, kind_ratios: dict[str, float] | None, allocation: Allocation | None) -> bool:
    """Whether the run asks to remove anything (a ratio, a per-kind ratio, an expert ratio or a target)."""
    if allocation is not None and (allocation.target is not None or allocation.expert_ratio > 0):
        return True
    ratios = allocation.kind_ratios if allocation is not None and allocation.kind_ratios else kind_ratios
    return (allocation.ratio if allocation is not None else ratio) > 0 or any(v > 0 for v in (ratios or {}).values())


def _check_prunable(analysis: Analysis, ratio: float, kind_ratios: dict[str, float] | None,
                    allocation: Allocation | None) -> None:
    """Refuse, before calibrating, a request nothing in the model can serve — saying why."""
    def reasons(groups: list[Group]) -> str:
        counts: dict[str, int] = {}
        for group in groups:
            for reason in group.frozen_reasons[:1]:
                text = reason.split(": ", 1)[-1]
                counts[text] = counts.get(text, 0) + 1
        return "; ".join(f"{n} × {text}" for text, n in sorted(counts.items(), key=lambda i: -i[1])[:3])

    if allocation is not None and allocation.expert_ratio > 0 and not any(
            g.kind == "expert" for g in analysis.prunable()):
        layers = [g for g in analysis.groups if g.kind == "expert"]
        why = f"all {len(layers)} MoE layer(s) are frozen: {reasons(layers)}" if layers else \
            "no MoE layer was found (experts are recognised from a router's TopK)"
        raise GraphpruneError(f"--expert-ratio: no expert can be removed: {why}")
    if _requested(ratio, kind_ratios, None if allocation is None else replace(allocation, expert_ratio=0.0)) \
            and not any(g.kind != "expert" for g in analysis.prunable()):
        raise GraphpruneError(f"nothing can be pruned: all {len(analysis.groups)} groups are frozen: "
                              f"{reasons(analysis.groups)} (graphprune analyze lists every group)")


def _timed(allocation: Allocation, analysis: Analysis, source: Path, output: Output, model_fingerprint: str,
           fresh: Callable[[], Analysis]) -> Allocation:
    """The allocation with what needs the model file and the user's inputs: FLOPs counted at their sizes,
    fast widths from the latency table, the probe a latency target times plans with."""
    changes: dict = {"dims": allocation.dims if allocation.dims is not None else output.dims}
    if allocation.fast_widths:
        key = table_key(model_fingerprint, output.dims, allocation.threads)
        table = load_or_measure(allocation.latency_table, analysis, key, output.dims, allocation.threads)
        base = allocation.round_to if isinstance(allocation.round_to, int) else 1
        changes["round_to"] = {gid: max(base, m) for gid, m in table.group_multiples(analysis).items()}
    if allocation.target is not None and allocation.target[0] == "latency":
        changes["latency"] = LatencyProbe.of(fresh, str(source), output.feeds, output.dims, allocation.threads)
    return replace(allocation, **changes)


def apply_file(source: str | os.PathLike, plan_path: str | os.PathLike, target: str | os.PathLike | Output | None,
               calibration: CalibrationSpec | None = None, compensate: bool | None = None) -> PruneResult:
    """Apply a saved plan to `source`; a plan made for another model is refused. Compensation (default: as
    when the plan was made) is recomputed from calibration data, so it needs the same `calibration` source."""
    source, output = Path(source), target if isinstance(target, Output) else Output(target)
    probe = PruningPlan.read_meta(plan_path)
    compensate = bool(probe.get("compensation")) if compensate is None else compensate
    refit = compensate and probe.get("compensation") == "refit"
    spec = calibration or CalibrationSpec()
    if compensate and not spec.wanted():
        raise GraphpruneError("this plan compensates removed channels: pass --calib FILE or --data-free to "
                              "recompute the compensation, or --no-compensate")
    merge_by_gate = probe.get("expert_merge") == "by gate weight"
    if merge_by_gate and not spec.wanted():
        raise GraphpruneError("this plan merges experts by gate weight: pass --calib FILE or --data-free")
    needs_stats = compensate or merge_by_gate
    if needs_stats:
        spec.check()
    model = _load(source, output, plan_path, spec.path)
    check_made_for(probe, plan_path, fingerprint(model), source)
    if not (probe.get("model") or {}).get("fingerprint"):
        log.warning("%s records no model fingerprint: only its group ids, labels and sizes were checked", plan_path)
    batches = spec.open(model) if needs_stats else None
    before = cost(model, source, output.dims)
    analysis = run_analysis(model, allow_approximate=bool(probe.get("prune_hidden")),
                            gqa_units=probe.get("gqa_units") or "kv-group", depth=bool(probe.get("depth")))
    plan = PruningPlan.load(plan_path, analysis.groups)
    if refit:
        reconstruct(analysis, plan, list(batches))
        return _rewrite_and_save(source, output, analysis, plan, None, False, before, refit=True)
    gram_limit = GRAM_LIMIT if compensate and plan.meta.get("criterion") == "obs" else 0
    stats = _calibrated(analysis, batches, gram_limit, spec) if batches is not None else None
    return _rewrite_and_save(source, output, analysis, plan, stats, compensate, before)


def _rewrite_and_save(source: Path, output: Output, analysis: Analysis, plan: PruningPlan,
                      stats: Calibration | None, compensate: bool, before: Cost, refit: bool = False) -> PruneResult:
    """Merge experts if the plan says so, compensate, rewrite, write the result once (staged), verify that
    file against the original's checks, then move it into place — or, for a dry run, only project the costs.
    `refit`: the layers were already refit in place (sequential reconstruction). The plan file, if asked for,
    is written last."""
    by_weights = plan.meta.get("criterion") == "obs"
    compensate = compensate and any(analysis.group(gid).experts is None for gid in plan.removed)  # else vacuous
    plan.meta["compensation"] = "refit" if refit else ("obs-weights" if by_weights else "bias") if compensate else None
    if output.dry_run:
        result = PruneResult(plan, before, projected_cost(analysis, plan, output.dims), analysis.groups, None)
    else:
        with progress.step("rewriting"):
            if plan.meta.get("expert_merge"):
                gate_stats = stats if plan.meta["expert_merge"] != "equal" else None
                apply_weight_updates(merge_updates(analysis, plan, gate_stats))
            deltas, weights = None, None
            if plan.meta["compensation"] == "obs-weights":
                weights = obs_weight_updates(analysis, plan, stats, release=True)
            elif compensate:
                deltas = bias_deltas(analysis, plan, stats)
            pruned = apply_plan(analysis, plan, deltas, weights)
        fusion = None
        if output.optimize:
            pruned, fusion = fuse(pruned, output.optimize, output.feeds, output.dims)
        with progress.step(f"writing {output.model}"):
            staged = StagedModel(pruned, output.model)
        with staged:
            with progress.step("verifying"):
                checks = verify.verify_like(source, staged.path, output.feeds, output.dims)
            staged.publish()
        result = PruneResult(plan, before, cost(pruned, output.model, output.dims), analysis.groups, checks,
                             fusion)
    if output.plan is not None:
        plan.save(output.plan, analysis.groups)
    return result
