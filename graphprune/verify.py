"""Verification: the checker, output comparison, and the masked reference a pruned model must match."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir

from graphprune.analysis import Analysis
from graphprune.io import as_file, uses_external_data
from graphprune.plan import PruningPlan


def check(model: ir.Model | str | os.PathLike, full_check: bool = True) -> None:
    """Run onnx.checker (with shape inference when full_check); raises onnx.checker.ValidationError."""
    if isinstance(model, ir.Model) and not uses_external_data(model):
        onnx.checker.check_model(ir.to_proto(model), full_check=full_check)
        return
    with as_file(model) as path:
        onnx.checker.check_model(str(path), full_check=full_check)


def relative_error(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Largest ‖ref − act‖∞ / max(‖ref‖∞, 1e-12) over paired outputs (inf on a shape mismatch)."""
    worst = 0.0
    for ref, act in zip(reference, actual):
        if ref.shape != act.shape:
            return float("inf")
        ref64, act64 = ref.astype(np.float64), act.astype(np.float64)
        scale = max(float(np.max(np.abs(ref64), initial=0.0)), 1e-12)
        worst = max(worst, float(np.max(np.abs(ref64 - act64), initial=0.0)) / scale)
    return worst


def mask_consumers(analysis: Analysis, plan: PruningPlan) -> ir.Model:
    """Zero, in place, every consumer weight slice that reads a planned unit: the model a correct rewrite
    of `plan` must reproduce exactly."""
    for gid, units in plan.removed.items():
        for member in analysis.group(gid).members:
            if not member.consumer:
                continue
            positions = member.positions(units)
            array = member.value.const_value.numpy().copy()
            index = [slice(None)] * array.ndim
            index[member.axis] = positions
            array[tuple(index)] = 0
            member.value.const_value = ir.tensor(array, name=member.value.name)
    return analysis.model
