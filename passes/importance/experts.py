"""Expert importance for MoE layers (used with an expert ratio; they score expert groups only).

- router-frequency: total renormalised gate weight the router gives each expert on calibration data;
- expert-output: summed L2 norm of each expert's gated output on calibration data, per token;
- router-similarity (STUN, weights only): experts whose router rows ‖G_i − G_j‖₂ are close are clustered
  greedily; each cluster keeps one representative, the one closest to the centroid of its flattened weights.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.experts import branch_weights
from graphprune.analysis.groups import Group
from graphprune.errors import GraphpruneError
from graphprune.passes.importance.registry import Criterion, register_criterion


class _ExpertCriterion(Criterion):
    for_experts = True

    def score(self, analysis: Analysis, group: Group) -> np.ndarray:
        if group.experts is None:
            raise GraphpruneError(f"criterion {self.name!r} scores MoE experts only; use it as the expert criterion")
        return self.score_experts(group)

    def score_experts(self, group: Group) -> np.ndarray:
        raise NotImplementedError


@register_criterion("router-frequency")
class RouterFrequency(_ExpertCriterion):
    """Σ over tokens of the renormalised top-k gate weight; ties (never picked) broken by pick count."""

    needs_data = True

    def score_experts(self, group: Group) -> np.ndarray:
        stats = self.calibration.routing_of(group)
        return stats.gate / max(stats.tokens, 1) + 1e-9 * stats.picks


@register_criterion("expert-output")
class ExpertOutput(_ExpertCriterion):
    """Mean over tokens of ‖gate_e(x) · expert_e(x)‖₂."""

    needs_data = True

    def score_experts(self, group: Group) -> np.ndarray:
        stats = self.calibration.routing_of(group)
        if stats.output is None:
            raise GraphpruneError(f"{group.label}: no per-expert output tensor (experts are combined inside one op: "
                                  "a fused MoE, or an Einsum gate-weighted sum); use router-frequency or "
                                  "router-similarity")
        return stats.output / max(stats.tokens, 1)


@register_criterion("router-similarity")
class RouterSimilarity(_ExpertCriterion):
    """Greedy average-linkage clustering of router rows; when two clusters merge, the representative closer to
    the merged centroid of flattened expert weights stays (on a tie, as for a pair, the larger weights).
    Score = the merge step at which an expert stopped representing a cluster (survivors of every cut score
    highest), so any ratio keeps one per cluster."""

    def score_experts(self, group: Group) -> np.ndarray:
        rows, weights = router_rows(group), expert_weights(group)
        distance = np.linalg.norm(rows[:, None, :] - rows[None, :, :], axis=-1)
        scale = float(np.linalg.norm(weights, axis=1).mean()) or 1.0  # ties (a pair's centroid): larger norm stays
        clusters = {e: [e] for e in range(group.size)}  # representative → members
        scores = np.full(group.size, float(group.size))
        for step in range(group.size - 1):
            reps = sorted(clusters)
            a, b = min(((i, j) for n, i in enumerate(reps) for j in reps[n + 1:]),
                       key=lambda p: distance[np.ix_(clusters[p[0]], clusters[p[1]])].mean())
            members = clusters.pop(a) + clusters.pop(b)
            centroid = weights[members].mean(axis=0)
            keep, drop = sorted((a, b), key=lambda e: (round(float(np.linalg.norm(weights[e] - centroid)) / scale, 6),
                                                       -float(np.linalg.norm(weights[e]))))
            clusters[keep] = members
            scores[drop] = step
        return scores


def _router_params(group: Group) -> set[int]:
    """ids of the constants of the layer computing the first router's logits (weight, bias)."""
    node = group.experts.logits()[0].value.producer()
    params = {id(v) for v in node.inputs if v is not None and v.const_value is not None}
    if node.op_type == "Add":
        node = next(v.producer() for v in node.inputs if v is not None and v.const_value is None)
        params |= {id(v) for v in node.inputs if v is not None and v.const_value is not None}
    return params


def router_rows(group: Group) -> np.ndarray:
    """[experts, d]: the router weight slice of each expert."""
    router = _router_params(group)
    member = max((m for m in group.param_members() if id(m.value) in router), key=lambda m: m.value.const_value.size)
    return _per_unit(member.value, member.axis, member.unit_of, group.size)


def expert_weights(group: Group) -> np.ndarray:
    """[experts, n]: each expert's FFN weights flattened — stacked-weight slices, or the weights of its branch."""
    router = _router_params(group)
    stacked = [m for m in group.param_members() if id(m.value) not in router and m.value.const_value.size > group.size]
    if stacked:
        return np.concatenate([_per_unit(m.value, m.axis, m.unit_of, group.size) for m in stacked], axis=1)
    branches = branch_weights(group.experts)
    per_expert = [np.concatenate([w.const_value.numpy().ravel() for w in branches.get(unit, [])] or [np.zeros(1)])
                  for unit in range(group.size)]
    width = max(len(w) for w in per_expert)
    return np.stack([np.pad(w, (0, width - len(w))) for w in per_expert])


def _per_unit(value: ir.Value, axis: int, unit_of: np.ndarray, size: int) -> np.ndarray:
    array = np.moveaxis(value.const_value.numpy(), axis, 0).astype(np.float64)
    flat = array.reshape(array.shape[0], -1)
    return np.stack([flat[unit_of == u].ravel() for u in range(size)])
