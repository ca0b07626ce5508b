"""One budget over tokens and widths: a MACs target spent, step by step, on whichever is cheaper in measured
output error per MAC saved — the next slice of width units (the measured sensitivity ranking, by error per MAC)
or one block's next token keep level (the measured token sensitivity).

The MACs of any combination are counted without rewriting: a layer's MACs are a product of its width sizes and
its token count, so each node's projected width MACs are scaled by the fraction of them the token rates leave
(counted on a reduced copy), plus the MACs of the inserted reduction ops. Errors are added across the two, as
the structured allocator adds them across groups; the written model's drift is still verified."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import GraphpruneError
from graphprune.passes.allocation.sensitivity import Sensitivity
from graphprune.passes.allocation.strategies import RoundTo, spend
from graphprune.passes.allocation.tokens import Keeps, TokenSensitivity, next_levels, step_error
from graphprune.verify.cost import projected_cost, projected_node_macs

log = logging.getLogger("graphprune")
STEP = 0.01  # a width step removes units worth this fraction of the dense model's MACs
BISECTION = 20  # steps of the final bisection of the width budget


@dataclass
class _State:
    """A point of the search: the width budget (dense MACs), its plan, the token rates and the MACs fraction."""

    budget: float
    plan: PruningPlan
    keeps: Keeps
    macs: float


def unit_macs(analysis: Analysis, groups: list[int], dims: dict[str, int] | None) -> dict[int, np.ndarray]:
    """Group id → the MACs removing each of its units saves, on the dense model (every unit of a width group
    costs alike; each residual block is counted alone)."""
    dense = projected_cost(analysis, PruningPlan(), dims).macs
    costs = {}
    for gid in groups:
        group = analysis.group(gid)
        units = range(group.size) if group.blocks is not None else [0]
        saved = []
        for unit in units:
            plan = PruningPlan()
            plan.remove(group, np.array([unit]))
            saved.append(dense - projected_cost(analysis, plan, dims).macs)
        costs[gid] = np.array(saved, dtype=np.float64) if group.blocks is not None else np.full(group.size, saved[0])
    return costs


class JointBudget:
    """The ranking of width units by measured error per MAC and the dense MACs, computed once; `plan(target)`
    then searches one MACs target (a latency target probes several). `tokens.model` must be `analysis.model`."""

    def __init__(self, analysis: Analysis, scores: dict[int, np.ndarray], sensitivity: Sensitivity,
                 tokens: TokenSensitivity, round_to: RoundTo = 1, max_group_ratio: float = 0.99) -> None:
        self.analysis, self.scores, self.tokens = analysis, scores, tokens
        self.round_to, self.max_group_ratio = round_to, max_group_ratio
        self.ranking = sensitivity.ranking(analysis, scores, unit_macs(analysis, list(sensitivity.counts),
                                                                       tokens.dims))
        self.dense = sum(projected_node_macs(analysis, PruningPlan(), tokens.dims).values())
        self.along: dict[int, list[float]] = {}  # group id → the predicted error of removing its first n units
        for slope, gid, cost in self.ranking:
            self.along.setdefault(gid, [0.0]).append(self.along[gid][-1] + slope * cost)

    def width_error(self, plan: PruningPlan) -> float:
        return sum(self.along[gid][min(len(units), len(self.along[gid]) - 1)] for gid, units in plan.removed.items()
                   if gid in self.along)

    def plan(self, target: float) -> PruningPlan:
        """The plan (widths, and token rates in `meta["tokens"]`) that brings the MACs to at most `target` × the
        dense model's at the least predicted output error; refused with what is reachable when even all is not
        enough."""
        if not 0.0 < target <= 1.0:
            raise GraphpruneError(f"a target is a fraction of the original in (0, 1], got {target}")
        tokens, dense = self.tokens, self.dense
        meta = {"allocation": "measured", "target": {"flops": target}, "cost": "MACs", "round_to": self.round_to}

        def at(budget: float, keeps: Keeps) -> _State:
            plan = spend(self.analysis, self.scores, self.ranking, budget, self.round_to, self.max_group_ratio, meta)
            factors, inserted = tokens.factors(keeps)
            nodes = projected_node_macs(self.analysis, plan, tokens.dims)
            macs = (sum(m * factors.get(node, 1.0) for node, m in nodes.items()) + inserted) / dense
            return _State(budget, plan, keeps, macs)

        state, total = at(0.0, tokens.full()), sum(cost for _, _, cost in self.ranking)
        while state.macs > target:
            options = []
            budget = state.budget
            while budget < total:  # the next width step that saves anything
                budget = min(total, budget + STEP * dense)
                wider = at(budget, state.keeps)
                if wider.macs < state.macs:
                    options.append(((self.width_error(wider.plan) - self.width_error(state.plan))
                                    / (state.macs - wider.macs), wider))
                    break
            for block, level in next_levels(tokens, state.keeps):
                fewer = at(state.budget, {**state.keeps, block: level})
                if fewer.macs < state.macs:
                    options.append((step_error(tokens, state.keeps, block, level) / (state.macs - fewer.macs), fewer))
            if not options:
                raise GraphpruneError(f"cannot reach MACs {target:.3f} of the original with tokens and widths "
                                      f"together within the group limits and token levels (at most {state.macs:.3f})")
            state = min(options, key=lambda option: option[0])[1]
        state = _least_width(state, target, at)
        return _planned(state, target, tokens, self.width_error(state.plan), at)


def _least_width(state: _State, target: float, at) -> _State:
    """The smallest width budget that still reaches the target at the chosen token rates (the last step may
    have overshot it)."""
    low, high = 0.0, state.budget
    for _ in range(BISECTION):
        middle = (low + high) / 2
        trial = at(middle, state.keeps)
        if trial.macs <= target:
            high, state = middle, trial
        else:
            low = middle
    return state


def _planned(state: _State, target: float, tokens: TokenSensitivity, width_error: float, at) -> PruningPlan:
    """The plan with its token rates and what the choice predicted, for the report."""
    token_error = sum(tokens.errors[b, state.keeps[b]] for b in tokens.blocks if state.keeps[b] < 1)
    plan, schedule = state.plan, tokens.schedule(state.keeps)
    reduces = any(state.keeps[b] < 1 for b in tokens.blocks)
    plan.meta["tokens"] = {"schedule": asdict(schedule) if reduces else None, "measured": {
        "target": target, "macs": round(state.macs, 4), "joint": True, "error": token_error + width_error,
        "token_error": token_error, "width_error": width_error, "evaluations": len(tokens.errors),
        "tokens_alone": round(at(0.0, state.keeps).macs, 4),
        "widths_alone": round(at(state.budget, tokens.full()).macs, 4)}}
    log.info("one budget: token rates %s, widths %s (MACs %.3f)",
             ", ".join(f"block {b}: {state.keeps[b]:g}" for b in tokens.blocks),
             plan.meta["tokens"]["measured"]["widths_alone"], state.macs)
    return plan
