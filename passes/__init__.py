"""Passes over an analysed model, one folder per stage: calibration, importance, allocation, rewrite, and the
end-to-end pipeline (`prune_file`, `apply_file`)."""

from graphprune.passes import importance
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.allocation.strategies import kept_count, uniform
from graphprune.passes.calibration.spec import CalibrationSpec, run_calibration
from graphprune.passes.pipeline.prune import PruneResult, apply_file, make_plan, prune_file
from graphprune.passes.pipeline.request import Output, PruneRequest
from graphprune.passes.rewrite.apply import apply_plan

__all__ = [
    "Allocation", "CalibrationSpec", "Output", "PruneRequest", "PruneResult", "apply_file", "apply_plan",
    "importance", "kept_count", "make_plan", "prune_file", "run_calibration", "uniform",
]
