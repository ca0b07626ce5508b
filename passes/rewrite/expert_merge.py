"""Expert merging (optional, approximate): instead of dropping removed experts, fold each into the surviving
expert whose router row is nearest — the survivor's router row and weights become the frequency-weighted
average of its cluster (frequency: calibration gate weight, or equal without calibration)."""

from __future__ import annotations

import numpy as np

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.experts import branch_weights
from graphprune.analysis.groups import Group
from graphprune.analysis.plan import PruningPlan
from graphprune.passes.calibration.statistics import Calibration
from graphprune.passes.importance.experts import router_rows
from graphprune.passes.rewrite.compensation import WeightUpdates


def merge_updates(analysis: Analysis, plan: PruningPlan, calibration: Calibration | None) -> WeightUpdates:
    """Full-size weights in which every survivor holds its cluster's weighted average (applied before slicing)."""
    updates: WeightUpdates = {}
    for gid, removed in plan.removed.items():
        group = analysis.group(gid)
        if group.experts is None:
            continue
        weights = _cluster_weights(group, removed, calibration)
        branches = branch_weights(group.experts)
        for member in group.param_members():
            updates[member.value] = _merged(updates.get(member.value, member.value.const_value.numpy()),
                                            member.axis, member.unit_of, weights)
        for survivor, shares in weights.items():
            per_expert = {unit: branches.get(unit, []) for unit in shares}
            for slot, value in enumerate(per_expert[survivor]):
                arrays = [(per_expert[unit][slot], share) for unit, share in shares.items()
                          if len(per_expert[unit]) == len(per_expert[survivor])]
                if all(a.const_value.shape == value.const_value.shape for a, _ in arrays):
                    updates[value] = sum(share * a.const_value.numpy().astype(np.float64) for a, share in arrays)
                    updates[value] = updates[value].astype(value.const_value.numpy().dtype)
    return updates


def _cluster_weights(group: Group, removed: np.ndarray, calibration: Calibration | None) -> dict[int, dict[int, float]]:
    """survivor → {expert: share} with shares summing to one; each removed expert joins its nearest survivor."""
    rows = router_rows(group)
    kept = np.setdiff1d(np.arange(group.size), removed)
    frequency = calibration.routing_of(group).gate + 1e-12 if calibration is not None else np.ones(group.size)
    clusters = {int(k): [int(k)] for k in kept}
    for unit in removed.tolist():
        nearest = kept[np.argmin(np.linalg.norm(rows[kept] - rows[unit], axis=1))]
        clusters[int(nearest)].append(unit)
    return {k: {u: float(frequency[u] / frequency[members].sum()) for u in members}
            for k, members in clusters.items()}


def _merged(array: np.ndarray, axis: int, unit_of: np.ndarray, weights: dict[int, dict[int, float]]) -> np.ndarray:
    moved = np.moveaxis(array, axis, 0).astype(np.float64)
    result = moved.copy()
    for survivor, shares in weights.items():
        result[unit_of == survivor] = sum(share * moved[unit_of == unit] for unit, share in shares.items())
    return np.moveaxis(result, 0, axis).astype(array.dtype)

