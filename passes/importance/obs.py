"""Structured Optimal Brain Surgeon (OBC/ZipLM line; SPA's OBSPA in data-free mode).

Per consumer, H = (2/N) XᵀX over its input channels (dead channels get H_jj = 1, damping λ·mean(diag H)).
A unit owning positions M costs ε_M = tr(W_Mᵀ (H⁻¹_MM)⁻¹ W_M) (W as [input channel, outputs]); a group sums
its consumers. Groups of up to GREEDY_LIMIT units are ordered greedily: remove the cheapest, update
W ← W − H⁻¹_:,M (H⁻¹_MM)⁻¹ W_M and H⁻¹ alike, re-score; wider groups (FFN neurons) use the one-shot
saliencies. The weight compensation for the units finally removed is the joint optimum (what the sequential
updates add up to), applied by `obs_weight_updates`. Convolutions use H over input channels (exact for 1x1
kernels, an approximation for larger ones).
"""

from __future__ import annotations

import numpy as np

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group, Member
from graphprune.analysis.weights import consumer_view
from graphprune.io.scratch import spilled
from graphprune.passes.calibration.statistics import Calibration
from graphprune.passes.importance.registry import Criterion, register_criterion

DAMPING = 0.01
GREEDY_LIMIT = 256  # groups up to this many units are ordered by greedy removal with re-scoring
FLOAT32_CONDITION = 1e6  # κ₂(H) under which H⁻¹ is kept in float32 (κ ≤ 1.2e5 measured: outputs within 1e-6)
GRAM_LIMIT = 8192  # widest consumer input whose Hessian is formed (8192² float32 = 256 MiB held)


def inverse_hessian(calibration: Calibration, member: Member) -> np.ndarray:
    """(H + λ·mean(diag H)·I)⁻¹ for the tensor a consumer member reads. Inverted in float64 once per tensor,
    for scoring and compensation alike, and kept in float32 where H's condition number allows; it replaces
    the Gram matrix it came from (one d×d matrix per tensor held, never two)."""
    stats = calibration.of(member.reads.value, member.reads.axis)
    if stats.hessian_inverse is None:
        if stats.gram is None:
            raise ValueError(f"no Gram matrix for {member.reads}: wider than {GRAM_LIMIT} channels?")
        h = stats.gram.astype(np.float64)
        h *= 2.0 / max(stats.count, 1)
        dead = np.diag(h) == 0
        h[dead, dead] = 1.0
        h[np.diag_indices_from(h)] += DAMPING * np.mean(np.diag(h))
        inverse = np.linalg.inv(h)
        condition = _largest_eigenvalue(h) * _largest_eigenvalue(inverse)
        kept = inverse.astype(np.float32) if condition < FLOAT32_CONDITION else inverse
        if isinstance(stats.gram, np.memmap):  # spilled statistics stay out of memory
            on_disk = spilled(kept.shape, kept.dtype)
            on_disk[...] = kept
            kept = on_disk
        stats.hessian_inverse = kept
        stats.gram = None
    return stats.hessian_inverse


def _largest_eigenvalue(matrix: np.ndarray, steps: int = 30) -> float:
    """A symmetric positive definite matrix's largest eigenvalue, by power iteration (O(d²) a step)."""
    vector = np.random.default_rng(0).standard_normal(len(matrix))
    for _ in range(steps):
        vector = matrix @ vector
        vector /= np.linalg.norm(vector)
    return float(vector @ matrix @ vector)


def block_cost(w: np.ndarray, hinv: np.ndarray, positions: np.ndarray) -> float:
    """ε_M = tr(W_Mᵀ (H⁻¹_MM)⁻¹ W_M)."""
    w_m = w[positions]
    return float(np.sum(w_m * np.linalg.solve(hinv[np.ix_(positions, positions)].astype(np.float64), w_m)))


@register_criterion("obs")
class OBS(Criterion):
    """Second-order saliency of removing each unit, with optimal weight compensation."""

    needs_data = True
    compensation = "weights"
    gram_limit = GRAM_LIMIT

    def score(self, analysis: Analysis, group: Group) -> np.ndarray:
        consumers = [m for m in group.members if m.consumer]
        if not consumers:
            return np.zeros(group.size)
        if group.size <= GREEDY_LIMIT:
            return self._greedy(group, consumers)
        total = np.zeros(group.size)
        for member in consumers:
            view = consumer_view(member)
            w, hinv = view.rows(), inverse_hessian(self.calibration, member)
            owned = view.unit_of >= 0
            if np.bincount(view.unit_of[owned], minlength=group.size).max() == 1:
                positions = np.flatnonzero(owned)
                total[view.unit_of[positions]] += (w[positions] ** 2).sum(axis=1) / np.diag(hinv)[positions]
            else:
                for unit in range(group.size):
                    total[unit] += block_cost(w, hinv, view.positions(np.array([unit])))
        return total

    def _greedy(self, group: Group, consumers: list[Member]) -> np.ndarray:
        """Scores from the greedy removal order: the first removed scores lowest."""
        views = [consumer_view(m) for m in consumers]
        state = [(v.rows(), inverse_hessian(self.calibration, m).astype(np.float64),
                  [np.flatnonzero(v.unit_of == u) for u in range(group.size)]) for m, v in zip(consumers, views,
                                                                                                strict=True)]
        remaining, order = list(range(group.size)), []
        while len(remaining) > 1:
            costs = sum(_costs(w, hinv, units, remaining) for w, hinv, units in state)
            best = remaining.pop(int(np.argmin(costs)))
            order.append(best)
            for w, hinv, units in state:
                positions = units[best]
                if positions.size:
                    block = np.linalg.inv(hinv[np.ix_(positions, positions)])
                    w -= hinv[:, positions] @ block @ w[positions]
                    hinv -= hinv[:, positions] @ block @ hinv[positions, :]
                    w[positions] = 0.0
        order += list(remaining)
        scores = np.empty(group.size)
        scores[order] = np.arange(group.size)
        return scores


def _costs(w: np.ndarray, hinv: np.ndarray, units: list[np.ndarray], candidates: list[int]) -> np.ndarray:
    """ε of each candidate unit for one consumer (0 where it reads none of the unit), solved as one batch where
    the candidates own equally many positions (the usual case: a channel or a head each)."""
    sizes = {units[u].size for u in candidates}
    if len(sizes) > 1 or 0 in sizes:
        return np.array([block_cost(w, hinv, units[u]) if units[u].size else 0.0 for u in candidates])
    positions = np.stack([units[u] for u in candidates])
    w_m = w[positions].astype(np.float64)
    if positions.shape[1] == 1:
        return np.sum(w_m[:, 0] ** 2, axis=-1) / hinv[positions[:, 0], positions[:, 0]]
    blocks = hinv[positions[:, :, None], positions[:, None, :]]
    return np.einsum("npo,npo->n", w_m, np.linalg.solve(blocks, w_m))
