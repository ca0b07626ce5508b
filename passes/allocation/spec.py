"""What an allocation is asked for (`Allocation`): a strategy and a ratio or target, and what the pipeline
hands it (sizes, fast widths, a latency probe, calibration batches, a compensation preview)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import GraphpruneError
from graphprune.passes.allocation.joint import JointBudget
from graphprune.passes.allocation.latency import LatencyProbe, search
from graphprune.passes.allocation.latency_table import LatencyTable
from graphprune.passes.allocation.quality import split, within_error
from graphprune.passes.allocation.sensitivity import Compensation, Sensitivity, measure
from graphprune.passes.allocation.strategies import RoundTo, experts, measured, ranked, spend, to_target, uniform
from graphprune.passes.allocation.tokens import TokenSensitivity
from graphprune.passes.calibration.sources import Feeds

STRATEGIES = ("uniform", "global", "adaptive", "measured")


MEASURED_NEEDS_DATA = "allocation 'measured' runs the model on calibration data: pass --calib FILE or --data-free"


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
    table: LatencyTable | None = None  # set by prune_file for fast widths and latency targets
    max_error: float | None = None  # a quality floor: held-out output error the removal may reach
    tokens: TokenSensitivity | None = None  # token rates measured: the target is spent on tokens and widths together
    sensitivity: Sensitivity | None = None  # measured already (on these batches): ranked without measuring again
    reuse: dict[str, Sensitivity] | None = None  # shared by the prunes of one model, data and method (a sweep's
    # targets): sensitivity measured by one of them, by the batches it was measured on, read by the others

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
        """Measured error per unit of the targeted cost — parameters, or milliseconds from the latency table for
        a latency target (verified by timing) — spent to the ratio, the target or the quality floor."""
        if self.batches is None:
            raise GraphpruneError(MEASURED_NEEDS_DATA)
        latency = self.target is not None and self.target[0] == "latency"
        if latency and (self.latency is None or self.table is None):
            raise GraphpruneError("a latency target needs the model file to time: use prune_file")
        fit, held = split(self.batches) if self.max_error is not None else (self.batches, None)
        groups = [g for g in analysis.prunable() if g.kind != "expert"]
        sensitivity = self.sensitivity or self.reused("fit" if held is not None else "all", lambda: measure(
            analysis, scores, groups, fit, max_group_ratio=self.max_group_ratio, compensation=self.compensation))
        if self.tokens is not None:  # ranked by error per MAC there
            plan = self._joint_plan(analysis, scores, sensitivity)
            plan.meta["sensitivity"] = _errors(sensitivity)
            return plan
        ranking = sensitivity.ranking(analysis, scores, self.table.unit_ms(analysis) if latency else None)
        if latency:
            total, meta = self.table.total_ms(), {"allocation": "measured", "cost": "ms", "round_to": self.round_to}
            plan = search(lambda kept: spend(analysis, scores, ranking, (1 - kept) * total, self.round_to,
                                             self.max_group_ratio, meta), self.latency, self.target[1])
        elif held is not None:
            plan = within_error(analysis, scores, ranking, held, self.max_error, self.round_to, self.max_group_ratio)
        elif self.target is not None:
            plan = to_target(analysis, scores, *self.target, self.round_to, "measured", self.max_group_ratio,
                             self.dims, ranking)
        else:
            plan = measured(analysis, scores, ranking, self.ratio, self.round_to, self.kind_ratios,
                            self.max_group_ratio)
        plan.meta["sensitivity"] = _errors(sensitivity)
        return plan

    def reused(self, batches: str, measuring: Callable[[], Sensitivity]) -> Sensitivity:
        """The sensitivity `reuse` holds for `batches` ("all", "fit", "validation fit"), else `measuring()`'s,
        kept there."""
        if self.reuse is None:
            return measuring()
        if batches not in self.reuse:
            self.reuse[batches] = measuring()
        return self.reuse[batches]

    def _joint_plan(self, analysis: Analysis, scores: dict, sensitivity: Sensitivity) -> PruningPlan:
        """Tokens and widths under one MACs target, or under the MACs fraction whose timed latency meets a latency
        target (each probe times the widths and the token reduction together)."""
        if self.target is None or self.target[0] not in ("flops", "latency"):
            raise GraphpruneError("--tokens auto with widths spends one --target-flops or --target-latency")
        plan_at = JointBudget(analysis, scores, sensitivity, self.tokens, self.round_to, self.max_group_ratio).plan
        if self.target[0] == "flops":
            return plan_at(self.target[1])
        plan = search(plan_at, self.latency, self.target[1])
        plan.meta["tokens"]["measured"]["latency"] = self.target[1]
        return plan


def _errors(sensitivity: Sensitivity) -> dict[str, list[float]]:
    """The measured error curves, as the plan records them."""
    return {str(gid): [round(float(e), 6) for e in errors] for gid, errors in sensitivity.errors.items()}
