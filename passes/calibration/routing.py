"""Routing statistics of MoE layers on calibration data: how often, and with what gate weight, the router picks
each expert, and how large each expert's gated output is. Collected by the calibration runner."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group, Member

# what to observe for one expert group: its logits (name, axis) and its per-expert outputs
Contribution = tuple[str, int | None, np.ndarray | int]  # (tensor, expert axis or None, unit_of or unit)


@dataclass
class RoutingStats:
    """Per expert: times picked among the top-k, summed renormalised gate weight, summed L2 norm of its
    gated output (None where the graph hides per-expert outputs, e.g. a fused MoE op); over `tokens`."""

    picks: np.ndarray
    gate: np.ndarray
    output: np.ndarray | None
    tokens: int = 0


@dataclass
class RoutingPlan:
    """The tensors one expert group's statistics come from."""

    group: Group
    logits: tuple[str, int]
    contributions: list[Contribution]

    def tensors(self) -> list[str]:
        return [self.logits[0]] + [name for name, _, _ in self.contributions]


def routing_plans(analysis: Analysis) -> list[RoutingPlan]:
    """One plan per prunable expert group (its first router, when one layer has several)."""
    plans = []
    for group in analysis.prunable():
        if group.experts is None:
            continue
        logits = group.experts.logits()[0]
        plans.append(RoutingPlan(group, (logits.value.name, logits.axis), _contributions(group)))
    return plans


def _contributions(group: Group) -> list[Contribution]:
    """Per-expert gated outputs: the inputs of sums over the expert axis (stacked experts), or what each
    branch adds or scatters into its accumulation (one expert each)."""
    found: list[Contribution] = []
    for member in group.members:
        if member.is_param:
            continue
        if any(_sums_over(use.node, member) for use in member.value.uses()):
            found.append((member.value.name, member.axis, member.unit_of))
    for unit, joins in group.experts.joins.items():
        for join in joins:
            index = 2 if join.node.op_type.startswith("Scatter") else 1 - join.accumulator
            found.append((join.node.inputs[index].name, None, unit))
    return found


def _sums_over(node: ir.Node, member: Member) -> bool:
    if node.op_type != "ReduceSum":
        return False
    if "axes" in node.attributes:
        axes = node.attributes["axes"].as_ints()
    elif len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].const_value is not None:
        axes = np.atleast_1d(node.inputs[1].const_value.numpy()).tolist()
    else:
        return False
    return member.axis in {int(a) % len(member.value.shape) for a in axes}


def update(stats: RoutingStats | None, plan: RoutingPlan, arrays: dict[str, np.ndarray]) -> RoutingStats:
    """Fold one batch into `stats` (None: the first batch)."""
    group, (name, axis) = plan.group, plan.logits
    logits = np.moveaxis(arrays[name], axis, -1).reshape(-1, group.size).astype(np.float64)
    if stats is None:
        stats = RoutingStats(np.zeros(group.size), np.zeros(group.size),
                             np.zeros(group.size) if plan.contributions else None)
    k = group.experts.top_k
    chosen = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    picked = np.take_along_axis(probs, chosen, axis=1)
    weights = picked / picked.sum(axis=1, keepdims=True)
    unit_of = next(m.unit_of for m in group.members if m.value.name == name and m.axis == axis)
    np.add.at(stats.picks, unit_of[chosen.ravel()], 1)
    np.add.at(stats.gate, unit_of[chosen.ravel()], weights.ravel())
    for tensor, expert_axis, owner in plan.contributions:
        norms = np.linalg.norm(arrays[tensor].astype(np.float64), axis=-1)
        if expert_axis is None:
            stats.output[owner] += norms.sum()
        else:
            per_position = np.moveaxis(norms, expert_axis, 0).reshape(norms.shape[expert_axis], -1).sum(axis=1)
            owned = owner >= 0
            stats.output += np.bincount(owner[owned], weights=per_position[owned], minlength=group.size)
    stats.tokens += logits.shape[0]
    return stats
