"""The default method chosen on held-out data: the simpler methods it builds on compete with it on a part of the
user's calibration data none of them was fitted to, and the run keeps the one whose output error there is least.

Candidates share one fit (a quarter of the batches held out): OBS scores and statistics, one sensitivity
measurement. They are the uniform allocation, the measured one, the measured one with residual blocks (depth),
each OBS-compensated in one shot, and the best measured one refit stage by stage (the full default). The
winner's units are kept; its weights are then fitted on all the batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from graphprune import progress
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.plan import PruningPlan
from graphprune.passes.allocation.quality import held_out_error, split
from graphprune.passes.allocation.sensitivity import Sensitivity, measure, run_batches
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.calibration.sources import Batches, Feeds
from graphprune.passes.calibration.spec import CalibrationSpec, calibrated
from graphprune.passes.calibration.statistics import Calibration
from graphprune.passes.importance import criterion_class
from graphprune.passes.rewrite.compensation import obs_preview, obs_weight_updates
from graphprune.verify.drift import squared_error_ratio

log = logging.getLogger("graphprune")

CRITERION = "obs"  # the default method's criterion, whose compensation the one-shot candidates apply


@dataclass(frozen=True)
class Choice:
    """The plan the held-out data chose, whether it is refit stage by stage (else OBS-compensated in one shot),
    and every candidate's held-out error (what the plan records)."""

    plan: PruningPlan
    refit: bool
    errors: dict[str, float]
    chosen: str
    held_out_batches: int

    def as_meta(self) -> dict:
        return {"chosen": self.chosen, "held_out_batches": self.held_out_batches,
                "held_out_errors": {name: round(error, 6) for name, error in self.errors.items()}}


def choose_on_held_out(analysis: Analysis, allocation: Allocation, batches: list[Feeds], spec: CalibrationSpec,
                       score: Callable[[Calibration], dict[int, np.ndarray]], fresh: Callable[[], Analysis],
                       refit: Callable[[Analysis, PruningPlan, list[Feeds]], None]) -> Choice:
    """Fit every candidate on ¾ of `batches`, judge each on the other ¼ (the pruned model's output error against
    the dense one's) and return the least. `score(statistics)` scores the groups with OBS; `fresh()` gives a
    new analysis of the unpruned model for `refit(analysis, plan, batches)`, the sequential refit, to change."""
    fit, held = split(batches, "choosing the method")
    samples = sum(next(iter(feeds.values())).shape[0] for feeds in fit)
    stats = calibrated(analysis, Batches(samples, "the fit part", iter(fit)), criterion_class(CRITERION).gram_limit,
                       spec)
    scores = score(stats)
    widths = [g for g in analysis.prunable() if g.kind != "expert"]
    sensitivity = allocation.reused("validation fit", lambda: measure(
        analysis, scores, widths, fit, max_group_ratio=allocation.max_group_ratio,
        compensation=obs_preview(analysis, stats)))
    measured = replace(allocation, strategy="measured", batches=fit, sensitivity=sensitivity)
    plans = {"uniform, one-shot": replace(allocation, strategy="uniform").plan(analysis, scores),
             "measured, one-shot": replace(measured, sensitivity=_without_blocks(analysis, sensitivity))
             .plan(analysis, scores)}
    if any(g.blocks is not None for g in widths):
        plans["measured with depth, one-shot"] = measured.plan(analysis, scores)
    dense = run_batches(analysis.model, held)
    errors = {}
    with progress.step("choosing the method on held-out data"):
        for name, plan in plans.items():
            errors[name] = held_out_error(analysis, plan, held, dense, obs_weight_updates(analysis, plan, stats))
        best_measured = min((n for n in plans if n.startswith("measured")), key=errors.__getitem__)
        refit_name = best_measured.replace("one-shot", "refit")
        refit_plan = _copy(plans[best_measured])
        copy = fresh()
        refit(copy, refit_plan, fit)
        errors[refit_name] = squared_error_ratio(dense, run_batches(copy.model, held), held)
    chosen = min(errors, key=errors.__getitem__)
    log.info("held-out output error of each method (%d batches held out): %s; chosen: %s", len(held),
             ", ".join(f"{name} {error:.4g}" for name, error in errors.items()), chosen)
    plan = refit_plan if chosen == refit_name else plans[chosen]
    return Choice(plan, chosen == refit_name, errors, chosen, len(held))


def _without_blocks(analysis: Analysis, sensitivity: Sensitivity) -> Sensitivity:
    """The measurements of width groups only: residual blocks are never ranked, so none is removed."""
    keep = [gid for gid in sensitivity.counts if analysis.group(gid).blocks is None]
    return Sensitivity({gid: sensitivity.counts[gid] for gid in keep}, {gid: sensitivity.errors[gid] for gid in keep})


def _copy(plan: PruningPlan) -> PruningPlan:
    """A plan a refit may re-pick units in without touching the original."""
    return PruningPlan({gid: units.copy() for gid, units in plan.removed.items()}, dict(plan.meta))
