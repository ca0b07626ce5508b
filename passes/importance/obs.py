"""Structured Optimal Brain Surgeon (OBC/ZipLM line; SPA's OBSPA in data-free mode).

Per consumer, H = (2/N) XᵀX over its input channels (dead channels get H_jj = 1, damping λ·mean(diag H)).
A unit owning positions M costs ε_M = tr(W_Mᵀ (H⁻¹_MM)⁻¹ W_M) (W as [input channel, outputs]); a group sums
its consumers. Scores are these one-shot saliencies (no greedy re-scoring); the weight compensation for the
units finally removed is the joint optimum, applied by `obs_weight_updates`. Convolutions use H over input
channels (exact for 1x1 kernels, an approximation for larger ones).
"""

from __future__ import annotations

import numpy as np

from graphprune.analysis import Analysis
from graphprune.groups import Group, Member
from graphprune.passes.calibration import Calibration
from graphprune.passes.importance.activation import weight_rows
from graphprune.passes.importance.registry import Criterion, register_criterion

DAMPING = 0.01
GRAM_LIMIT = 8192  # widest consumer input whose Hessian is formed (8192² float64 = 512 MiB)


def inverse_hessian(calibration: Calibration, member: Member) -> np.ndarray:
    """(H + λ·mean(diag H)·I)⁻¹ for the tensor a consumer member reads."""
    stats = calibration.of(member.reads.value, member.reads.axis)
    if stats.gram is None:
        raise ValueError(f"no Gram matrix for {member.reads}: wider than {GRAM_LIMIT} channels?")
    h = 2.0 * stats.gram / max(stats.count, 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += DAMPING * np.mean(np.diag(h)) * np.eye(len(h))
    return np.linalg.inv(h)


def block_cost(w: np.ndarray, hinv: np.ndarray, positions: np.ndarray) -> float:
    """ε_M = tr(W_Mᵀ (H⁻¹_MM)⁻¹ W_M)."""
    w_m = w[positions]
    return float(np.sum(w_m * np.linalg.solve(hinv[np.ix_(positions, positions)], w_m)))


@register_criterion("obs")
class OBS(Criterion):
    """Second-order saliency of removing each unit, with optimal weight compensation."""

    needs_data = True

    def score(self, analysis: Analysis, group: Group) -> np.ndarray:
        total = np.zeros(group.size)
        for member in group.members:
            if not member.consumer:
                continue
            w, hinv = weight_rows(member), inverse_hessian(self.calibration, member)
            owned = member.unit_of >= 0
            if np.bincount(member.unit_of[owned], minlength=group.size).max() == 1:
                positions = np.flatnonzero(owned)
                total[member.unit_of[positions]] += (w[positions] ** 2).sum(axis=1) / np.diag(hinv)[positions]
            else:
                for unit in range(group.size):
                    total[unit] += block_cost(w, hinv, np.flatnonzero(member.unit_of == unit))
        return total
