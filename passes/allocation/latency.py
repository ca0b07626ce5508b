"""Latency as the target: find the plan whose measured ONNX Runtime latency is R × the dense model's.

The search variable is the FLOPs target (the criterion's ranking still decides what goes); every probe rewrites
a fresh copy of the model and times it against the dense one, interleaved in this process, on the user's
inputs (or random ones sized by --dim), provider and threads. Proportional steps, kept inside the bracket the
probes found; the result is the probe closest to R from below (within the tolerance, the least pruned)."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnxruntime as ort

from graphprune import progress
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.passes.rewrite.apply import apply_plan
from graphprune.passes.rewrite.tokens import TokenSchedule, insert_token_reduction

log = logging.getLogger("graphprune")
TOLERANCE = 0.03  # accept a measured ratio within 3 % of the target
MAX_PROBES = 8
RUNS = 30


@dataclass
class LatencyProbe:
    """Times plans: `fresh()` gives an unmodified analysis of the model (each probe rewrites its own copy)."""

    fresh: Callable[[], Analysis]
    dense: ort.InferenceSession
    feeds: dict[str, np.ndarray]
    threads: int | None = None
    runs: int = RUNS
    probes: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, fresh: Callable[[], Analysis], source: str, feeds: dict[str, np.ndarray] | None,
           dims: dict[str, int] | None, threads: int | None) -> LatencyProbe:
        dense = runtime.session(source, threads=threads, timing=True)
        return cls(fresh, dense, feeds if feeds is not None else runtime.random_feeds(dense, dims=dims), threads)

    def ratio(self, plan: PruningPlan) -> float:
        """Latency of the model pruned by `plan` over the dense model's, timed interleaved (the median of the
        rounds' ratios); with the token reduction the plan carries, when it does."""
        model = apply_plan(self.fresh(), plan)
        schedule = TokenSchedule.planned(plan.meta)
        if schedule is not None:
            insert_token_reduction(model, schedule)
        pruned = runtime.session(model, threads=self.threads, timing=True)
        dense_ms, pruned_ms = runtime.interleaved_ms([self.dense, pruned], [self.feeds, self.feeds], runs=self.runs)
        return statistics.median(runtime.round_ratios(dense_ms, pruned_ms))


def search(plan_at: Callable[[float], PruningPlan], probe: LatencyProbe, target: float) -> PruningPlan:
    """The plan (from `plan_at(flops_fraction)`) whose measured latency ratio is closest to `target` from
    below; the probes are recorded in the plan's meta. Raises when no probe gets under the target."""
    low, high = 0.0, 1.0  # FLOPs fractions known to be under / over the target latency
    flops, best = target, None
    with progress.step(f"searching the latency target {target:g}"):
        for _ in range(MAX_PROBES):
            try:
                plan = plan_at(flops)
            except GraphpruneError:  # cannot remove that much within the group limits
                low = flops
                flops = (flops + high) / 2
                continue
            measured = probe.ratio(plan)
            probe.probes.append({"flops": round(flops, 4), "latency": round(measured, 4)})
            log.info("latency probe: FLOPs %.3f -> latency %.3f (target %.3f)", flops, measured, target)
            if measured <= target * (1 + TOLERANCE) and (best is None or flops > best[0]):
                best = (flops, plan, measured)
            if abs(measured - target) <= TOLERANCE * target:
                break
            if measured > target:
                high = flops
            else:
                low = flops
            step = flops * target / measured
            flops = step if low < step < high else (low + high) / 2
    if best is None:
        reached = min((p["latency"] for p in probe.probes), default=None)
        raise GraphpruneError(f"cannot reach latency {target:g} of the dense model within the group limits"
                              + (f" (fastest probe: {reached:.3f})" if reached is not None else ""))
    flops, plan, measured = best
    plan.meta["latency"] = {"target": target, "measured": round(measured, 4), "probes": probe.probes}
    return plan
