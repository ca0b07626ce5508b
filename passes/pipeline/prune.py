"""The whole job, in pipeline order: load → analyze → score → allocate → rewrite → verify → save."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphprune import progress, verify
from graphprune.analysis.coupling import Analysis, analyze
from graphprune.analysis.groups import Group
from graphprune.analysis.plan import PruningPlan, check_made_for, fingerprint
from graphprune.analysis.tokens import find_token_flow
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.io.load import load_model, source_files, unmap
from graphprune.io.save import StagedModel
from graphprune.ir.model import copy_model
from graphprune.passes.allocation.latency import LatencyProbe
from graphprune.passes.allocation.latency_table import load_or_measure, table_key
from graphprune.passes.allocation.quality import splittable
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.allocation.tokens import measure_tokens, measured_tokens
from graphprune.passes.calibration.sources import Batches, Feeds
from graphprune.passes.calibration.spec import CalibrationSpec, calibrated
from graphprune.passes.calibration.statistics import Calibration
from graphprune.passes.importance import Criterion, criterion_class, get_criterion, needs_data
from graphprune.passes.importance.depth import block_influence
from graphprune.passes.pipeline.request import EXPERT_CRITERION, Output, PruneRequest
from graphprune.passes.pipeline.validation import choose_on_held_out
from graphprune.passes.rewrite.apply import apply_plan
from graphprune.passes.rewrite.compensation import apply_weight_updates, bias_deltas, obs_preview, obs_weight_updates
from graphprune.passes.rewrite.expert_merge import merge_updates
from graphprune.passes.rewrite.optimize import fuse
from graphprune.passes.rewrite.reconstruction import reconstruct
from graphprune.passes.rewrite.tokens import TokenSchedule, insert_token_reduction
from graphprune.verify.cost import Cost, cost, projected_cost

log = logging.getLogger("graphprune")


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


def make_plan(analysis: Analysis, criterion: str = "l2", ratio: float = 0.5, round_to: int = 1,
              seed: int = 0, kind_ratios: dict[str, float] | None = None,
              calibration: Calibration | None = None, allocation: Allocation | None = None,
              options: dict | None = None, expert_criterion: str = EXPERT_CRITERION) -> PruningPlan:
    """Score every prunable group with `criterion` (its `options`), MoE experts with `expert_criterion` when the
    allocation removes experts, and allocate: `allocation`, or `ratio` (per kind: `kind_ratios`) uniformly."""
    allocation = allocation or Allocation("uniform", ratio, kind_ratios, round_to)
    scores = score_groups(analysis, criterion, calibration, seed, options,
                          expert_criterion if allocation.expert_ratio else None)
    plan = allocation.plan(analysis, scores)
    log.info("plan: %d units from %d groups", sum(len(u) for u in plan.removed.values()), len(plan.removed))
    plan.meta["criterion"] = criterion
    if allocation.expert_ratio:
        plan.meta["expert_criterion"] = expert_criterion
    if calibration is not None:
        plan.meta["calibration"] = {"source": calibration.source, "samples": calibration.samples}
    return plan


def score_groups(analysis: Analysis, criterion: str, calibration: Calibration | None = None, seed: int = 0,
                 options: dict | None = None, expert_criterion: str | None = None) -> dict[int, np.ndarray]:
    """Per prunable group id, its units' scores by `criterion` (residual blocks: their measured influence; MoE
    experts by `expert_criterion`, and only when one is given)."""
    scorer = get_criterion(criterion, calibration, seed, options)
    expert_scorer = get_criterion(expert_criterion, calibration, seed, options) if expert_criterion else None
    groups = [g for g in analysis.prunable() if g.kind != "expert" or expert_scorer is not None]

    def score(group: Group) -> np.ndarray:
        if group.blocks is not None:
            return block_influence(calibration, group)
        scores = (expert_scorer if group.kind == "expert" else scorer).score(analysis, group)
        unmap(analysis.model)  # the weights read stay on disk, not resident
        return scores

    with progress.step(f"scoring ({criterion})"):
        return {group.id: score(group) for group in progress.iterate(groups, "scoring", "group")}


def _load(source: Path, output: Output, *reads: str | os.PathLike | None) -> ir.Model:
    """Load `source` once the output locations are known safe: before loading against the model file, the
    output's and these other `reads`, after it also against the external data files the model names."""
    others = [Path(p) for p in (*output.reads, *reads) if p is not None and Path(p).is_file()]
    output.check([source, *others])
    model = load_model(source)
    output.check(source_files(model) + others)
    return model


def _check_dims(model: ir.Model, dims: dict[str, int] | None, timed: bool = False) -> None:
    """Refuse a --dim naming no symbolic input axis (a typo would size nothing, silently); when the run times
    the model (`timed`), warn about symbolic axes past the batch axis that it times at size 1."""
    axes = [(axis, str(d)) for value in model.graph.inputs for axis, d in enumerate(value.shape or ())
            if isinstance(d, ir.SymbolicDim) and d.value is not None]
    names = {name for _, name in axes}
    unknown = sorted(set(dims or {}) - names)
    if unknown:
        raise GraphpruneError(f"--dim {', '.join(unknown)}: no input of the model has an axis of that name "
                              f"(its symbolic axes: {', '.join(sorted(names)) or 'none'})")
    unsized = sorted({name for axis, name in axes if axis > 0 and name not in (dims or {})})
    if timed and unsized:
        log.warning("symbolic input axes %s are timed at size 1; give real sizes with --dim NAME=VALUE",
                    ", ".join(unsized))


def run_analysis(model: ir.Model, **options) -> Analysis:
    """`analyze` as a pipeline step: shown as progress, its groups logged (INFO counts, DEBUG each group)."""
    with progress.step("analyzing"):
        analysis = analyze(model, **options)
    log.info("%d groups, %d prunable", len(analysis.groups), len(analysis.prunable()))
    for group in analysis.groups:
        log.debug("group %d %s %s (%s): %d units%s", group.id, group.kind, group.layer, group.label, group.size,
                  f", frozen: {group.frozen_reasons[0]}" if group.frozen else "")
    return analysis


def prune_file(source: str | os.PathLike, target: str | os.PathLike | Output | None,
               request: PruneRequest | None = None, /, **fields) -> PruneResult:
    """Prune `source` into `target` (a path, or an `Output`: plan file, dry run, verification inputs) as
    `request` asks (a `PruneRequest`, or its fields as keywords, which also override a given request's). The
    model is written only once it passed the checks the original passes; nothing the input reads is written.
    Stages: check → load → calibrate → analyze → allocate → refit (sequential) → rewrite → verify → save."""
    request = replace(request, **fields) if request is not None else PruneRequest(**fields)
    source, output = Path(source), target if isinstance(target, Output) else Output(target)
    request.check()
    spec, compensate, criterion = request.spec, request.compensates, criterion_class(request.criterion)
    model = _load(source, output, spec.path)
    times = request.allocation is not None and (request.allocation.target or ("",))[0] == "latency"
    _check_dims(model, output.dims, times)
    pristine = copy_model(model) if times or request.validate else None  # latency probes, refit candidates
    batches = spec.open(model, request.seed) if spec.wanted() else None
    kept_batches = list(batches) if request.sequential or request.measures else None
    before = cost(model, source, output.dims)
    model_fingerprint = fingerprint(model)
    analysis = run_analysis(model, **request.analysis_options())
    if batches is not None:
        _freeze_unobserved(analysis)
    _check_prunable(analysis, request)
    if request.tokens is not None:  # refused here, before any calibration, when no block can reduce its tokens
        flow = find_token_flow(analysis.model, request.tokens.protect)
        request.tokens.chosen(flow)
        if isinstance(flow.tokens, str) and flow.tokens not in (output.dims or {}) and output.feeds is None:
            log.warning("the token count %s is symbolic: verification runs it at size 1, where no token is dropped; "
                        "give --dim %s=N to verify (and count MACs) at a real length", flow.tokens, flow.tokens)
    validate = request.validate and splittable(kept_batches)
    if request.validate and not validate:
        log.warning("too little calibration data to hold any out (one batch of fewer than 4 rows): the default "
                    "method runs in full, unvalidated")
    one_shot = batches is not None and not validate \
        and not (request.sequential and not criterion.needs_data and not request.depth)
    if kept_batches is not None:  # calibrated on the kept list, which keeps the source's name and count
        batches = Batches(batches.samples, batches.source, iter(kept_batches))
    stats = calibrated(analysis, batches, criterion.gram_limit, spec) if one_shot else None
    allocation = request.allocation
    if request.measures:
        previews = criterion.compensation == "weights" and stats is not None and (compensate or request.sequential)
        allocation = replace(allocation, batches=kept_batches,
                             compensation=obs_preview(analysis, stats) if previews else None)
    if request.joint_tokens:  # one budget: the token rates are measured on the data the widths are
        allocation = replace(allocation, tokens=measure_tokens(analysis.model, request.tokens, output.dims,
                                                               kept_batches))

    def fresh() -> Analysis:  # a new analysis of the unpruned model, for a latency probe or a refit candidate
        return run_analysis(copy_model(pristine), **request.analysis_options())

    if allocation is not None:
        allocation = _timed(allocation, analysis, source, output, model_fingerprint, fresh)
    sequential = request.sequential
    if validate:  # the default method: its candidates judged on held-out calibration batches
        choice = choose_on_held_out(analysis, allocation, kept_batches, spec,
                                    lambda fit: score_groups(analysis, request.criterion, fit, request.seed),
                                    fresh, lambda copy, plan, fit: _refit(copy, plan, fit, request))
        plan, sequential, compensate = choice.plan, choice.refit, not choice.refit
        plan.meta.update(criterion=request.criterion, validation=choice.as_meta(),
                         calibration={"source": batches.source, "samples": batches.samples})
        if compensate:  # one-shot OBS compensation, from statistics of all the batches
            stats = calibrated(analysis, Batches(batches.samples, batches.source, iter(kept_batches)),
                               criterion.gram_limit, spec)
    else:
        plan = make_plan(analysis, request.criterion, request.ratio, request.round_to, request.seed,
                         request.kind_ratios, stats, allocation, request.options, request.expert_criterion)
    if not plan.removed and request.requested() and TokenSchedule.planned(plan.meta) is None:
        raise GraphpruneError("the requested ratios remove no unit: every prunable group is too small for them "
                              "(see the warnings above); nothing was written")
    plan.meta["model"] = {"file": source.name, "fingerprint": model_fingerprint}
    plan.meta["prune_hidden"], plan.meta["gqa_units"] = request.prune_hidden, request.gqa_units
    plan.meta["depth"] = request.depth
    plan.meta["dims"] = output.dims
    if request.tokens is not None and not request.joint_tokens:  # (a joint plan carries its token rates)
        tokens, measured = request.tokens, None
        if request.token_target is not None:
            feeds = _measuring_feeds(model, request, output, kept_batches)
            choice = measured_tokens(copy_model(model), tokens, request.token_target, output.dims, feeds)
            tokens, measured = choice.schedule, {**choice.as_meta(), "target": request.token_target}
        plan.meta["tokens"] = {"schedule": asdict(tokens), **({"measured": measured} if measured else {})}
    if request.expert_merge:
        plan.meta["expert_merge"] = "by gate weight" if stats is not None else "equal"
    if sequential and not output.dry_run:
        _refit(analysis, plan, kept_batches, request)
    return _rewrite_and_save(source, output, analysis, plan, stats, compensate, before, refit=sequential)


def _measuring_feeds(model: ir.Model, request: PruneRequest, output: Output,
                     kept_batches: list[Feeds] | None) -> list[Feeds]:
    """Two calibration batches (kept ones first), else the user's feeds or random inputs at the --dim sizes."""
    if kept_batches:
        return kept_batches[:2]
    if request.spec.wanted():
        return list(islice(request.spec.open(model, request.seed), 2))
    return [output.feeds or runtime.random_inputs(runtime.input_specs(model), dims=output.dims,
                                                  ranges=runtime.index_ranges(model))]


def _refit(analysis: Analysis, plan: PruningPlan, batches: list[Feeds], request: PruneRequest) -> None:
    """Sequential reconstruction: prune stage by stage on the pruned model's activations, refitting as it goes;
    criteria that read data rank each stage again on its own activations (weight-only ones rank the same)."""
    def rescore(stage: Calibration) -> Callable[[Group], np.ndarray]:
        scorer = get_criterion(request.criterion, stage, request.seed, request.options)
        return lambda group: scorer.score(analysis, group)

    report = reconstruct(analysis, plan, batches, rescore if needs_data(request.criterion) else None)
    plan.meta["reconstruction"] = report.as_meta()


def _freeze_unobserved(analysis: Analysis) -> None:
    """Freeze, for a run that reads activations, the groups inside If/Loop/Scan bodies: ONNX Runtime cannot
    return a body's intermediate values, so calibration cannot observe them."""
    main = analysis.model.graph
    for group in analysis.prunable():
        values = [v for m in group.members for v in (m.value, m.reads.value if m.reads else None) if v is not None]
        if any(v.graph is not None and v.graph is not main for v in values):
            group.frozen_reasons.append("inside an If/Loop/Scan body, where calibration cannot observe activations "
                                        "(prune it with a data-free criterion such as --criterion l2)")


def _check_prunable(analysis: Analysis, request: PruneRequest) -> None:
    """Refuse, before calibrating, a request nothing in the model can serve — saying why."""
    if request.removes_experts and not any(g.kind == "expert" for g in analysis.prunable()):
        layers = [g for g in analysis.groups if g.kind == "expert"]
        why = f"all {len(layers)} MoE layer(s) are frozen: {_why_not(layers)}" if layers else \
            "no MoE layer was found (experts are recognised from a router's TopK)"
        raise GraphpruneError(f"--expert-ratio: no expert can be removed: {why}")
    widths = request if request.allocation is None else \
        replace(request, allocation=replace(request.allocation, expert_ratio=0.0))
    if widths.requested() and not any(g.kind != "expert" for g in analysis.prunable()):
        if not analysis.groups:
            raise GraphpruneError("nothing can be pruned: the model has no structure graphprune can prune (no weight "
                                  "layer whose channels it can follow; `graphprune ops` lists the supported ops)")
        raise GraphpruneError(f"nothing can be pruned: all {len(analysis.groups)} groups are frozen: "
                              f"{_why_not(analysis.groups)} (graphprune analyze lists every group)")


def _why_not(groups: list[Group]) -> str:
    """The commonest reasons these groups cannot be pruned, counted (a one-unit group has nothing to remove)."""
    counts: dict[str, int] = {}
    for group in groups:
        reasons = group.frozen_reasons[:1] or (["a single unit: nothing to remove but all of it"]
                                               if group.size <= 1 else [])
        for reason in reasons:
            text = reason.split(": ", 1)[-1]
            counts[text] = counts.get(text, 0) + 1
    return "; ".join(f"{n} × {text}" for text, n in sorted(counts.items(), key=lambda i: -i[1])[:3])


def _timed(allocation: Allocation, analysis: Analysis, source: Path, output: Output, model_fingerprint: str,
           fresh: Callable[[], Analysis]) -> Allocation:
    """The allocation with what needs the model file and the user's inputs: FLOPs counted at their sizes,
    fast widths from the latency table, the probe a latency target times plans with."""
    changes: dict = {"dims": allocation.dims if allocation.dims is not None else output.dims}
    latency = allocation.target is not None and allocation.target[0] == "latency"
    if allocation.fast_widths or (latency and allocation.strategy == "measured"):
        key = table_key(model_fingerprint, output.dims, allocation.threads)
        table = load_or_measure(allocation.latency_table, analysis, key, output.dims, allocation.threads)
        changes["table"] = table
    if allocation.fast_widths:
        base = allocation.round_to if isinstance(allocation.round_to, int) else 1
        changes["round_to"] = {gid: max(base, m) for gid, m in table.group_multiples(analysis).items()}
    if latency:
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
    if output.dims is None and probe.get("dims"):
        output = replace(output, dims=dict(probe["dims"]))
        log.info("sizing symbolic axes as the plan was made: %s",
                 ", ".join(f"{k}={v}" for k, v in output.dims.items()))
    _check_dims(model, output.dims)
    if not (probe.get("model") or {}).get("fingerprint"):
        log.warning("%s records no model fingerprint: only its group ids, labels and sizes were checked", plan_path)
    batches = spec.open(model) if needs_stats else None
    before = cost(model, source, output.dims)
    analysis = run_analysis(model, allow_approximate=bool(probe.get("prune_hidden")),
                            gqa_units=probe.get("gqa_units") or "kv-group", depth=bool(probe.get("depth")))
    plan = PruningPlan.load(plan_path, analysis.groups)
    if refit:
        plan.meta["reconstruction"] = reconstruct(analysis, plan, list(batches)).as_meta()
        return _rewrite_and_save(source, output, analysis, plan, None, False, before, refit=True)
    gram_limit = _criterion_of(plan).gram_limit if compensate else 0
    stats = calibrated(analysis, batches, gram_limit, spec) if batches is not None else None
    return _rewrite_and_save(source, output, analysis, plan, stats, compensate, before)


def _criterion_of(plan: PruningPlan) -> type[Criterion]:
    """The criterion class the plan was made with (the base class when it records none)."""
    name = plan.meta.get("criterion")
    return criterion_class(name) if name else Criterion


def _rewrite_and_save(source: Path, output: Output, analysis: Analysis, plan: PruningPlan,
                      stats: Calibration | None, compensate: bool, before: Cost, refit: bool = False) -> PruneResult:
    """Merge experts if the plan says so, compensate, rewrite, write the result once (staged), verify that
    file against the original's checks, then move it into place — or, for a dry run, only project the costs.
    `refit`: the layers were already refit in place (sequential reconstruction). The plan file, if asked for,
    is written last."""
    by_weights = _criterion_of(plan).compensation == "weights"
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
            schedule = TokenSchedule.planned(plan.meta)
            if schedule is not None:
                plan.meta["tokens"].update(insert_token_reduction(pruned, schedule).as_meta())
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
