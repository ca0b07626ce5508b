"""Allocation: turn per-unit scores into a pruning plan under a ratio, with hardware-friendly widths."""

from __future__ import annotations

import numpy as np

from graphprune.analysis import Analysis
from graphprune.plan import PruningPlan


def kept_count(size: int, ratio: float, round_to: int = 1) -> int:
    """Units to keep when removing `ratio` of `size`, rounded down to a multiple of `round_to`, at least one."""
    keep = size - int(np.floor(size * ratio + 1e-9))
    if round_to > 1 and size >= round_to:
        keep = max(round_to, keep - keep % round_to)
    return min(size, max(1, keep))


def uniform(analysis: Analysis, scores: dict[int, np.ndarray], ratio: float, round_to: int = 1,
            kind_ratios: dict[str, float] | None = None) -> PruningPlan:
    """Remove the lowest-scored `ratio` of every prunable group (`kind_ratios[group.kind]` where given)."""
    kind_ratios = kind_ratios or {}
    for value in (ratio, *kind_ratios.values()):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"ratios must be in [0, 1), got {value}")
    plan = PruningPlan(meta={"allocation": "uniform", "ratio": ratio, "kind_ratios": kind_ratios,
                             "round_to": round_to})
    for group in analysis.prunable():
        keep = kept_count(group.size, kind_ratios.get(group.kind, ratio), round_to)
        order = np.argsort(scores[group.id], kind="stable")
        plan.remove(group, order[: group.size - keep])
    return plan
