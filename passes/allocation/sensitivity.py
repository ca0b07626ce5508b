"""Measured sensitivity: how much the model's outputs move when one group alone loses its lowest-scored units,
at a few removal fractions, measured in ONNX Runtime on calibration inputs (the group's consumer rows masked,
and, where the run compensates, its consumers' weights updated as the rewrite will update them: a group whose
loss compensation repairs is measured as cheap as it will be).

The measurements become a ranking of single units for the allocator: each group's error curve (error against
parameters removed) is replaced by its lower convex hull, and every unit is valued by the hull slope of the
segment it falls in — the error it costs per parameter it saves. Spending a budget in that order is the greedy
knapsack over measured errors (optimal on convex curves), not over scores normalised across layers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphprune import progress
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group
from graphprune.analysis.masking import Masked
from graphprune.errors import GraphpruneError, first_line
from graphprune.io import runtime
from graphprune.passes.allocation.suffix import SuffixRunner
from graphprune.passes.calibration.sources import Feeds, shared_rows
from graphprune.verify.drift import SquaredError

log = logging.getLogger("graphprune")

GRID = (0.125, 0.25, 0.375, 0.5, 0.75)  # fractions of a group measured (the largest is also the most removed)
SAMPLES = 32  # samples measured on at most: PP-OCRv4's held-out reading 0.9848 on 48, 0.9860 on 32, 0.9783 on 16
Compensation = Callable[[Group, np.ndarray], dict[ir.Value, np.ndarray]]  # (group, units) → new real weights


@dataclass
class Sensitivity:
    """Per group id: units removed at each measured point (0 first) and the relative output error there."""

    counts: dict[int, np.ndarray]
    errors: dict[int, np.ndarray]

    def ranking(self, analysis: Analysis, scores: dict[int, np.ndarray],
                unit_costs: dict[int, np.ndarray] | None = None) -> list[tuple[float, int, float]]:
        """(error per unit of cost, group id, cost) of every unit the measurements cover, cheapest first; a
        group's units come in its score order, valued by the convex hull of its error curve over cost. The cost
        of a unit is its parameters, or `unit_costs[group id][unit]` (milliseconds, MACs); at equal error per
        cost the unit that saves more goes first (one that saves nothing never precedes one that does)."""
        ranked = []
        for gid, counts in self.counts.items():
            group = analysis.group(gid)
            costs = unit_costs.get(gid, np.zeros(group.size)) if unit_costs is not None else group.params_per_unit
            order = np.argsort(scores[gid], kind="stable")
            spent = np.concatenate([[0.0], np.cumsum(costs[order])])[counts]
            for start, end, slope in _hull_segments(spent, self.errors[gid]):
                for unit in order[counts[start]:counts[end]]:
                    ranked.append((slope, gid, float(costs[unit])))
        ranked.sort(key=lambda item: (item[0], -item[2]))
        return ranked


def _hull_segments(x: np.ndarray, y: np.ndarray) -> list[tuple[int, int, float]]:
    """(start index, end index, slope) of the lower convex hull of the points (x, y), left to right."""
    hull = [0]
    for index in range(1, len(x)):
        while len(hull) >= 2 and _slope(x, y, hull[-2], hull[-1]) >= _slope(x, y, hull[-2], index):
            hull.pop()
        hull.append(index)
    return [(a, b, _slope(x, y, a, b)) for a, b in zip(hull, hull[1:], strict=False)]


def _slope(x: np.ndarray, y: np.ndarray, a: int, b: int) -> float:
    """Error per cost between points a and b; a stretch that saves nothing is worth nothing (infinitely dear,
    unless it costs no error either)."""
    if x[b] - x[a] <= 1e-12:
        return 0.0 if y[b] - y[a] <= 0 else float("inf")
    return (y[b] - y[a]) / (x[b] - x[a])


def measure(analysis: Analysis, scores: dict[int, np.ndarray], groups: list[Group], batches: list[Feeds],
            grid: tuple[float, ...] = GRID, max_group_ratio: float = 0.99,
            compensation: Compensation | None = None) -> Sensitivity:
    """Output error of `analysis.model` with each group's lowest-scored units masked, one group at a time, at
    each fraction of `grid` (capped by `max_group_ratio`, always leaving one unit), the weights `compensation`
    gives for that removal in place, on the first SAMPLES samples; the model is restored."""
    if not batches:
        raise GraphpruneError("measuring sensitivity needs calibration inputs")
    batches = leading(batches, SAMPLES)
    dense = run_batches(analysis.model, batches)
    runner, error = SuffixRunner(analysis.model, groups, batches, dense), SquaredError(dense, batches)
    counts, errors = {}, {}
    points = [(g, c) for g in groups for c in _counts(g.size, grid, max_group_ratio)]
    with progress.step("measuring sensitivity"), progress.bar(len(points), "sensitivity", "point") as bar:
        for group in groups:
            order = np.argsort(scores[group.id], kind="stable")
            counts[group.id] = np.array([0, *_counts(group.size, grid, max_group_ratio)])
            measured = [0.0]
            for count in counts[group.id][1:]:
                units = order[:count]
                updates = compensation(group, units) if compensation and group.blocks is None else None
                with Masked(analysis.model, group, units, updates) as masked:
                    outputs = runner.run(group, masked.changed) or run_batches(analysis.model, batches)
                    measured.append(error(outputs))
                bar.update(1)
            errors[group.id] = np.array(measured)
    log.info("sensitivity measured at %d points over %d groups", len(points), len(groups))
    return Sensitivity(counts, errors)


def _counts(size: int, grid: tuple[float, ...], max_group_ratio: float) -> list[int]:
    """Distinct unit counts the grid asks of a group of `size`, each removing at least one and leaving one."""
    most = min(size - 1, int(np.floor(size * max_group_ratio + 1e-9)))
    return sorted({min(most, max(1, int(round(size * fraction)))) for fraction in grid} - {0}) if most > 0 else []


def leading(batches: list[Feeds], samples: int) -> list[Feeds]:
    """The first `samples` samples of the batches (all of them, if fewer): whole batches, the last one cut to
    its first rows where every input has them along its leading axis."""
    kept: list[Feeds] = []
    for feeds in batches:
        missing = samples - sum(next(iter(part.values())).shape[0] for part in kept)
        if missing <= 0:
            break
        rows = shared_rows(feeds)
        kept.append({name: array[:missing] for name, array in feeds.items()} if rows and rows > missing else feeds)
    return kept


def run_batches(model, batches: list[Feeds]) -> list[list[np.ndarray]]:
    try:
        sess = runtime.session(model)
        names = [i.name for i in sess.get_inputs()]
        return [sess.run(None, {k: v for k, v in feeds.items() if k in names}) for feeds in batches]
    except Exception as exc:  # noqa: BLE001 - ORT raises several types
        raise GraphpruneError(f"measuring sensitivity: ONNX Runtime cannot run the model ({first_line(exc)[:200]})") \
            from exc


