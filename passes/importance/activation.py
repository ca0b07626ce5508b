"""Activation-aware criteria from calibration statistics of the tensors each group's consumer weights read.

- wanda-sp (structured Wanda, as defined by the FLAP authors): S_j = mean_i |W_ij| · ‖X_j‖₂.
- flap (fluctuation, FLAP's WIFV): S_j = Var(X_j) · ‖W_:,j‖²; a unit scores the mean over its channels.
Groups without a consumer weight (read by nobody) score zero: removing them changes nothing.
"""

from __future__ import annotations

import numpy as np

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group, Member
from graphprune.analysis.weights import ConsumerView, consumer_view
from graphprune.passes.importance.magnitude import per_unit
from graphprune.passes.importance.registry import Criterion, register_criterion


class _Activation(Criterion):
    needs_data = True

    def per_position(self, member: Member, view: ConsumerView) -> np.ndarray:
        """One value per channel the consumer reads."""
        raise NotImplementedError

    def score(self, analysis: Analysis, group: Group) -> np.ndarray:
        total = np.zeros(group.size)
        for member in group.members:
            if member.consumer:
                view = consumer_view(member)
                total += per_unit(view.unit_of, self.per_position(member, view), group.size) / self.unit_norm(
                    view, group)
        return total

    def unit_norm(self, view: ConsumerView, group: Group) -> np.ndarray:
        return np.ones(group.size)


@register_criterion("wanda-sp")
class WandaSP(_Activation):
    """Σ over a unit's channels of mean |W_:,j| · ‖X_j‖₂ (per-token RMS, proportional to the norm)."""

    def per_position(self, member: Member, view: ConsumerView) -> np.ndarray:
        stats = self.calibration.of(member.reads.value, member.reads.axis)
        return view.row_norms(1, mean=True) * np.sqrt(stats.mean_square)


@register_criterion("flap")
class Flap(_Activation):
    """Mean over a unit's channels of Var(X_j) · ‖W_:,j‖²; removals get the mean shift as bias (FLAP)."""

    compensation = "bias"

    def per_position(self, member: Member, view: ConsumerView) -> np.ndarray:
        stats = self.calibration.of(member.reads.value, member.reads.axis)
        return stats.variance * view.row_norms(2)

    def unit_norm(self, view: ConsumerView, group: Group) -> np.ndarray:
        owned = view.unit_of[view.unit_of >= 0]
        return np.maximum(np.bincount(owned, minlength=group.size), 1)
