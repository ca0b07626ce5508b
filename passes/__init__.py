"""Passes over an analysed model: importance scoring, allocation and the physical rewrite."""

from graphprune.passes import importance
from graphprune.passes.allocation import kept_count, uniform
from graphprune.passes.pipeline import (
    Allocation,
    CalibrationSpec,
    PruneResult,
    apply_file,
    make_plan,
    prune_file,
    run_calibration,
)
from graphprune.passes.rewrite import apply_plan

__all__ = [
    "Allocation", "CalibrationSpec", "PruneResult", "apply_file", "apply_plan", "importance", "kept_count",
    "make_plan", "prune_file", "run_calibration", "uniform",
]
