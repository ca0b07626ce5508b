"""Allocation: turn per-unit scores into a pruning plan.

- uniform: the same ratio in every group (per kind where given);
- global: scores normalised by each group's mean, one threshold over all units;
- adaptive (FLAP): scores standardised per group, units weighted by their parameter cost, removed until
  `ratio` of the prunable parameters is gone;
- measured: the parameters the uniform plan would remove (per kind), spent along a ranking of measured output
  error per parameter (see passes/allocation/sensitivity.py).
Every strategy keeps at least one unit per group, honours `max_group_ratio`, rounds kept widths down to a
multiple of `round_to`. A target (`params` or `flops`, a fraction of the original) is met exactly by bisection
over how many units of the global or adaptive ranking go, on the projected cost of the plan.
MoE experts are never ranked against channels: `experts` removes a ratio of every expert group (the plan
refuses to leave fewer experts than the router's top-k).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import GraphpruneError
from graphprune.verify.cost import projected_cost

Scores = dict[int, np.ndarray]
RoundTo = int | dict[int, int]  # one multiple for every group, or one per group id (fast widths; absent: 1)
log = logging.getLogger("graphprune")


def kept_count(size: int, ratio: float, round_to: int = 1) -> int:
    """Units to keep when removing `ratio` of `size`, rounded down to a multiple of `round_to`, at least one."""
    keep = size - int(np.floor(size * ratio + 1e-9))
    if round_to > 1 and size >= round_to:
        keep = max(round_to, keep - keep % round_to)
    return min(size, max(1, keep))


def _check(*ratios: float) -> None:
    for value in ratios:
        if not 0.0 <= value < 1.0:
            raise GraphpruneError(f"ratios must be in [0, 1), got {value}")


def _strategy_groups(analysis: Analysis, blocks: bool = False) -> list[Group]:
    """Groups the strategies allocate: every prunable group but MoE experts (see `experts`) and, unless
    `blocks`, residual blocks (depth is removed only when asked: a block ratio or a measured allocation)."""
    return [g for g in analysis.prunable() if g.kind != "expert" and (blocks or g.blocks is None)]


def _removal_counts(groups: list[Group], ratio_of: Callable[[Group], float]) -> dict[int, int]:
    """Units to remove per group, floor(size × ratio); warns, per kind, where a positive ratio removes none."""
    removals = {g.id: int(np.floor(g.size * ratio_of(g) + 1e-9)) for g in groups}
    untouched: dict[tuple[str, float], list[int]] = {}
    for group in groups:
        if ratio_of(group) > 0 and removals[group.id] == 0:
            untouched.setdefault((group.kind, ratio_of(group)), []).append(group.size)
    for (kind, ratio), sizes in untouched.items():
        log.warning("ratio %g removes nothing from %d %s group(s) of %s unit(s): %g × %d rounds down to 0 "
                    "(a ratio of at least %.3g removes one)", ratio, len(sizes), kind,
                    "/".join(str(s) for s in sorted(set(sizes))), ratio, min(sizes), 1 / max(sizes))
    return removals


def experts(analysis: Analysis, scores: Scores, ratio: float) -> PruningPlan:
    """Remove the lowest-scored `ratio` of the experts of every MoE layer."""
    _check(ratio)
    groups = [g for g in analysis.prunable() if g.kind == "expert"]
    removals = _removal_counts(groups, lambda group: ratio)
    return _plan_from_counts(groups, scores, removals, 1, 1.0, {"expert_ratio": ratio})


def _plan_from_counts(groups: list[Group], scores: Scores, removals: dict[int, int], round_to: RoundTo,
                      max_group_ratio: float, meta: dict) -> PruningPlan:
    """Remove the lowest-scored units of each group, as many as `removals` says, within the limits."""
    plan = PruningPlan(meta=meta)
    for group in groups:
        ratio = min(removals.get(group.id, 0) / group.size, max_group_ratio)
        multiple = round_to if isinstance(round_to, int) else round_to.get(group.id, 1)
        keep = kept_count(group.size, ratio, multiple)
        order = np.argsort(scores[group.id], kind="stable")
        plan.remove(group, order[: group.size - keep])
    return plan


def uniform(analysis: Analysis, scores: Scores, ratio: float, round_to: RoundTo = 1,
            kind_ratios: dict[str, float] | None = None, max_group_ratio: float = 0.99) -> PruningPlan:
    """Remove the lowest-scored `ratio` of every prunable group (`kind_ratios[group.kind]` where given)."""
    kind_ratios = kind_ratios or {}
    _check(ratio, *kind_ratios.values())
    groups = _strategy_groups(analysis, blocks="block" in kind_ratios)
    removals = _removal_counts(groups, lambda group: kind_ratios.get(group.kind, ratio))
    meta = {"allocation": "uniform", "ratio": ratio, "kind_ratios": kind_ratios, "round_to": round_to}
    return _plan_from_counts(groups, scores, removals, round_to, max_group_ratio, meta)


def _normalised(scores: np.ndarray) -> np.ndarray:
    mean = float(np.mean(np.abs(scores)))
    return scores / mean if mean > 0 else scores


def _standardised(scores: np.ndarray) -> np.ndarray:
    std = float(np.std(scores))
    return (scores - np.mean(scores)) / std if std > 0 else scores - np.mean(scores)


def _ranking(analysis: Analysis, scores: Scores, strategy: str) -> list[tuple[float, int, float]]:
    """(normalised score, group id, parameter cost) of every unit, least important first."""
    transform = _normalised if strategy == "global" else _standardised
    ranked = []
    for group in _strategy_groups(analysis):
        values = transform(np.asarray(scores[group.id], dtype=np.float64))
        ranked += [(float(v), group.id, float(c)) for v, c in zip(values, group.params_per_unit, strict=True)]
    ranked.sort(key=lambda item: item[0])
    return ranked


def _removals(ranking: list[tuple[float, int, float]], count: int) -> dict[int, int]:
    removals: dict[int, int] = {}
    for _, gid, _ in ranking[:count]:
        removals[gid] = removals.get(gid, 0) + 1
    return removals


def ranked(analysis: Analysis, scores: Scores, ratio: float, round_to: RoundTo = 1, strategy: str = "global",
           max_group_ratio: float = 0.99) -> PruningPlan:
    """Global (`ratio` of all units) or adaptive (`ratio` of all prunable parameters) allocation."""
    _check(ratio)
    ranking = _ranking(analysis, scores, strategy)
    if strategy == "global":
        count = int(np.floor(len(ranking) * ratio + 1e-9))
    else:
        budget = ratio * sum(cost for _, _, cost in ranking)
        count = int(np.searchsorted(np.cumsum([cost for _, _, cost in ranking]), budget, side="right"))
    meta = {"allocation": strategy, "ratio": ratio, "round_to": round_to, "max_group_ratio": max_group_ratio}
    groups = _strategy_groups(analysis)
    return _plan_from_counts(groups, scores, _removals(ranking, count), round_to, max_group_ratio, meta)


Ranking = list[tuple[float, int, float]]  # (value, group id, parameter cost) per unit, least important first


def measured(analysis: Analysis, scores: Scores, ranking: Ranking, ratio: float, round_to: RoundTo = 1,
             kind_ratios: dict[str, float] | None = None, max_group_ratio: float = 0.99) -> PruningPlan:
    """Remove, kind by kind, as many parameters as the uniform plan at these ratios would, taking units in
    `ranking` order (measured error per parameter) instead of the same fraction of every group. With residual
    blocks in the ranking, one budget is pooled over every kind: depth competes with width. Units are charged
    their own parameters, which counts a weight pruned on both axes twice; so each kind's budget is scaled (by
    bisection) until that kind's projected parameters match the uniform plan's (never fewer left)."""
    kind_ratios = kind_ratios or {}
    _check(ratio, *kind_ratios.values())
    groups = _strategy_groups(analysis, blocks=True)
    pooled = any(g.blocks is not None for g in groups)
    kind_of = {g.id: "all" if pooled else g.kind for g in groups}
    counts = {g.id: int(np.floor(g.size * kind_ratios.get(g.kind, 0.0 if g.blocks else ratio) + 1e-9))
              for g in groups}
    budget: dict[str, float] = {}
    for group in groups:
        lowest = np.argsort(scores[group.id], kind="stable")[:counts[group.id]]
        budget[kind_of[group.id]] = budget.get(kind_of[group.id], 0.0) + float(group.params_per_unit[lowest].sum())
    meta = {"allocation": "measured", "ratio": ratio, "kind_ratios": kind_ratios, "round_to": round_to}
    home = _enclosing_blocks(groups) if pooled else {}
    block_order = {g.id: np.argsort(scores[g.id], kind="stable") for g in groups if g.blocks is not None}

    def plan_at(scales: dict[str, float]) -> PruningPlan:
        scaled = {kind: value * scales.get(kind, 0.0) for kind, value in budget.items()}
        removals = _spend(analysis, ranking, scaled, pooled, home, block_order)
        return _plan_from_counts(groups, scores, removals, round_to, max_group_ratio, meta)

    def params(plan: PruningPlan) -> int:
        return projected_cost(analysis, plan).params

    scales = {}
    for kind in budget:
        goal = params(_plan_from_counts(groups, scores, {g: n for g, n in counts.items() if kind_of[g] == kind},
                                        round_to, max_group_ratio, meta))
        low, high = 0.0, 4.0
        for _ in range(BUDGET_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if params(plan_at({kind: middle})) >= goal else (low, middle)
        scales[kind] = low
    return plan_at(scales)


def spend(analysis: Analysis, scores: Scores, ranking: Ranking, budget: float, round_to: RoundTo = 1,
          max_group_ratio: float = 0.99, meta: dict | None = None) -> PruningPlan:
    """Units in `ranking` order (measured error per unit of its cost: parameters, milliseconds) while their
    costs add up to at most `budget`; residual blocks and widths share the one budget."""
    groups = _strategy_groups(analysis, blocks=True)
    home = _enclosing_blocks(groups)
    block_order = {g.id: np.argsort(scores[g.id], kind="stable") for g in groups if g.blocks is not None}
    removals = _spend(analysis, ranking, {"all": budget}, True, home, block_order)
    return _plan_from_counts(groups, scores, removals, round_to, max_group_ratio, dict(meta or {}))


BUDGET_STEPS = 24  # bisection steps of the budget scale, in [0, 4]: 2.4e-7 of the budget


def _spend(analysis: Analysis, ranking: Ranking, budget: dict[str, float], pooled: bool,
           home: dict[int, tuple[int, int]], block_order: dict[int, np.ndarray]) -> dict[int, int]:
    """Units to remove per group: `ranking` taken in order while each kind's (or, `pooled`, the one) budget
    allows. Width units inside a removed residual block (`home`: width group → its block) are neither
    removed again nor charged, and a block (taken in `block_order`) is charged only what its width units
    already taken left of it."""
    spent = dict.fromkeys(budget, 0.0)
    removals: dict[int, int] = {}
    taken: set[tuple[int, int]] = set()  # removed blocks (depth group id, unit)
    inside: dict[tuple[int, int], float] = {}  # parameters already charged for width units inside each block
    for _, gid, cost in ranking:
        group = analysis.group(gid)
        kind = "all" if pooled else group.kind
        block = (gid, int(block_order[gid][removals.get(gid, 0)])) if group.blocks else None
        if block is None and home.get(gid) in taken:
            continue  # its weights went with the block: neither removed again nor charged
        cost = cost - inside.get(block, 0.0) if block else cost
        if spent[kind] + cost <= budget[kind] + 1e-6:
            spent[kind] += cost
            removals[gid] = removals.get(gid, 0) + 1
            if block:
                taken.add(block)
            elif gid in home:
                inside[home[gid]] = inside.get(home[gid], 0.0) + cost
    return removals


def _enclosing_blocks(groups: list[Group]) -> dict[int, tuple[int, int]]:
    """Width group id → (depth group id, block unit) of the residual block whose branch holds every weight
    of the group (an FFN's neurons, a layer's heads): removing that block removes the group's units too."""
    enclosing = {}
    for depth in (g for g in groups if g.blocks is not None):
        for unit, block in enumerate(depth.blocks):
            weights = {id(weight) for weight in block.weights}
            for group in groups:
                members = group.param_members()
                if group.blocks is None and members and all(id(m.value) in weights for m in members):
                    enclosing[group.id] = (depth.id, unit)
    return enclosing


def to_target(analysis: Analysis, scores: Scores, metric: str, target: float, round_to: RoundTo = 1,
              strategy: str = "adaptive", max_group_ratio: float = 0.99,
              dims: dict[str, int] | None = None, ranking: Ranking | None = None) -> PruningPlan:
    """The smallest removal along the `strategy` ranking (or the given `ranking`) whose projected `metric`
    ("params" or "flops", the latter with symbolic sizes from `dims`) is at most `target` times the original;
    an error when even the most the limits allow is not enough."""
    if not 0.0 < target <= 1.0:
        raise GraphpruneError(f"a target is a fraction of the original in (0, 1], got {target}")
    groups = _strategy_groups(analysis, blocks=ranking is not None)
    meta = {"allocation": strategy, "target": {metric: target}, "round_to": round_to}

    def measure(plan: PruningPlan) -> int:
        projected = projected_cost(analysis, plan, dims)
        return projected.params if metric == "params" else projected.macs

    if strategy == "uniform":  # bisect the common ratio, in steps of one unit of the largest group
        steps = max(g.size for g in groups) if groups else 1

        def build(step: int) -> PruningPlan:
            ratio = min(step / steps, max_group_ratio)
            removals = {g.id: int(np.floor(g.size * ratio + 1e-9)) for g in groups}
            return _plan_from_counts(groups, scores, removals, round_to, max_group_ratio, meta)
    else:
        ranking = ranking if ranking is not None else _ranking(analysis, scores, strategy)
        steps = len(ranking)

        def build(step: int) -> PruningPlan:
            return _plan_from_counts(groups, scores, _removals(ranking, step), round_to, max_group_ratio, meta)

    goal = target * measure(PruningPlan())
    low, high = 0, steps
    if measure(build(high)) > goal:
        raise GraphpruneError(f"cannot reach {metric} {target:.3f} of the original within the group limits "
                              f"(at most {measure(build(high)) / measure(PruningPlan()):.3f})")
    while low < high:
        middle = (low + high) // 2
        if measure(build(middle)) <= goal:
            high = middle
        else:
            low = middle + 1
    return build(low)
