"""Magnitude criteria (Torch-Pruning's default): per-unit norms of every member weight slice, and random."""

from __future__ import annotations

import numpy as np

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group
from graphprune.analysis.weights import position_norms, stored_weight
from graphprune.passes.importance.registry import Criterion, register_criterion


def per_unit(unit_of: np.ndarray, per_position: np.ndarray, size: int) -> np.ndarray:
    """Sum a per-position statistic into the units that own the positions (-1: another group's)."""
    owned = unit_of >= 0
    return np.bincount(unit_of[owned], weights=per_position[owned], minlength=size)


class _Norm(Criterion):
    power = 1

    def score(self, analysis: Analysis, group: Group) -> np.ndarray:
        total = np.zeros(group.size)
        for member in group.param_members():
            weight = stored_weight(member.value)
            if weight is None:
                continue  # a quantization scale or zero point
            total += per_unit(member.unit_of, position_norms(weight.dense(), member.axis, self.power), group.size)
        return total


@register_criterion("l1")
class L1(_Norm):
    """Σ over member slices of ‖slice‖₁."""

    power = 1


@register_criterion("l2")
class L2(_Norm):
    """Σ over member slices of ‖slice‖₂²."""

    power = 2


@register_criterion("random")
class Random(Criterion):
    """Uniform random scores: the baseline every criterion must beat."""

    def score(self, analysis: Analysis, group: Group) -> np.ndarray:
        return np.random.default_rng((self.seed, group.id)).random(group.size)
