"""A quality floor: prune as far as the output error on held-out calibration batches allows. Sensitivity is
measured on one part of the user's batches and the removal judged on the other, so the floor holds on data
the ranking was not fitted to."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import onnx_ir as ir

from graphprune import progress
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.masking import Masked, Updated
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import GraphpruneError
from graphprune.passes.allocation.sensitivity import run_batches
from graphprune.passes.allocation.strategies import Ranking, RoundTo, spend
from graphprune.passes.calibration.sources import Feeds, shared_rows
from graphprune.verify.drift import squared_error_ratio

log = logging.getLogger("graphprune")
HELD_OUT = 0.25  # share of the calibration batches held out to judge the floor on (at least one batch)
STEPS = 20  # bisection steps over the budget


def split(batches: list[Feeds], why: str = "--max-error judges the removal") -> tuple[list[Feeds], list[Feeds]]:
    """(fit, held-out) parts of the calibration batches: the last quarter, at least one batch, is held out; a
    single batch is cut into four batches of rows first (every input shares its leading axis)."""
    if len(batches) == 1:
        batches = _rows(batches[0])
    if len(batches) < 2:
        raise GraphpruneError(f"{why} on held-out calibration batches: it needs at least 2 batches or a batch "
                              "of 4 rows (more --samples, or a smaller --batch-size)")
    held = max(1, round(len(batches) * HELD_OUT))
    return batches[:-held], batches[-held:]


def splittable(batches: list[Feeds]) -> bool:
    """Whether `split` can hold some of these batches out."""
    return len(batches) >= 2 or (len(batches) == 1 and len(_rows(batches[0])) >= 2)


def _rows(feeds: Feeds, parts: int = 4) -> list[Feeds]:
    """One batch as `parts` batches of consecutive rows, or as is when its inputs differ in leading size or
    it has fewer rows."""
    rows = shared_rows(feeds)
    if rows is None or rows < parts:
        return [feeds]
    bounds = np.linspace(0, rows, parts + 1).round().astype(int)
    return [{name: array[a:b] for name, array in feeds.items()} for a, b in zip(bounds, bounds[1:], strict=False)]


def held_out_error(analysis: Analysis, plan: PruningPlan, held: list[Feeds],
                   dense: list[list[np.ndarray]] | None = None,
                   updates: dict[ir.Value, np.ndarray] | None = None) -> float:
    """Σ‖y − ŷ‖² / Σ‖y‖² on `held` of the model with `plan`'s units masked, and with `updates` (the weights
    compensation gives the whole plan) in place if given."""
    dense = dense if dense is not None else run_batches(analysis.model, held)
    with contextlib.ExitStack() as stack:
        for gid, units in plan.removed.items():
            stack.enter_context(Masked(analysis.model, analysis.group(gid), units))
        if updates:
            stack.enter_context(Updated(updates))
        return squared_error_ratio(dense, run_batches(analysis.model, held), held)


def within_error(analysis: Analysis, scores: dict[int, np.ndarray], ranking: Ranking, held: list[Feeds],
                 max_error: float, round_to: RoundTo = 1, max_group_ratio: float = 0.99) -> PruningPlan:
    """The largest removal along `ranking` whose held-out error stays at most `max_error` (bisection over the
    budget spent, the error taken as growing with it); the plan records that error."""
    dense = run_batches(analysis.model, held)
    meta = {"allocation": "measured", "max_error": max_error, "round_to": round_to}
    low, high = 0.0, sum(cost for _, _, cost in ranking)
    best, best_error = spend(analysis, scores, ranking, 0.0, round_to, max_group_ratio, meta), 0.0
    with progress.step(f"pruning to held-out error {max_error:g}"):
        for _ in range(STEPS):
            middle = (low + high) / 2
            plan = spend(analysis, scores, ranking, middle, round_to, max_group_ratio, meta)
            error = held_out_error(analysis, plan, held, dense)
            log.info("quality floor: budget %.4g -> held-out error %.4g (floor %g)", middle, error, max_error)
            if error <= max_error:
                low, best, best_error = middle, plan, error
            else:
                high = middle
    best.meta["quality"] = {"max_error": max_error, "held_out_error": round(best_error, 6),
                            "held_out_batches": len(held)}
    return best
