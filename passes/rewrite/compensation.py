"""Bias compensation (FLAP): a removed input channel j of a consumer is replaced by its calibration mean,
folded into the consumer's bias: b += Σ_{j∈P} W[:, j] · mean(X_j). Convolutions treat the mean as constant
over space (exact away from zero-padded borders)."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group, Member
from graphprune.analysis.plan import PruningPlan
from graphprune.analysis.weights import ConsumerView, StoredWeight, consumer_view, refuse_non_finite, stored_weight
from graphprune.io.scratch import scratch_array
from graphprune.ir.values import attr_float
from graphprune.passes.calibration.statistics import Calibration
from graphprune.passes.importance.obs import inverse_hessian

BiasDeltas = dict[ir.Node, np.ndarray]
WeightUpdates = dict[ir.Value, np.ndarray]
_names = itertools.count()


def bias_deltas(analysis: Analysis, plan: PruningPlan, calibration: Calibration) -> BiasDeltas:
    """Per consumer node, the change to its output bias that removing the plan's channels calls for."""
    deltas: BiasDeltas = {}
    for gid, units in plan.removed.items():
        for member in analysis.group(gid).members:
            if not member.consumer:
                continue
            view = consumer_view(member)
            positions = view.positions(units)
            mean = calibration.of(member.reads.value, member.reads.axis).mean[positions]
            contribution = view.row_combination(positions, mean)
            delta = per_output(member.node, contribution)
            if delta is not None:
                deltas[member.node] = deltas.get(member.node, 0) + delta
    return deltas


def per_output(node: ir.Node, contribution: np.ndarray) -> np.ndarray | None:
    """Reduce a weight-shaped contribution (input axis summed out) to one value per output channel."""
    if node.op_type in ("Conv", "QLinearConv"):
        return contribution.reshape(contribution.shape[0], -1).sum(axis=1)
    if node.op_type == "ConvTranspose" and contribution.ndim >= 1:
        return contribution.reshape(contribution.shape[0], -1).sum(axis=1)
    if node.op_type in ("Gemm", "QGemm", "MatMul", "Attention") and contribution.ndim == 1:
        return contribution
    return None


def apply_bias_deltas(model: ir.Model, deltas: BiasDeltas,
                      on_new_bias: Callable[[ir.Node, ir.Value], None] = lambda node, bias: None) -> None:
    """Add each delta to its node's bias, creating the bias where the node has none; `on_new_bias(node,
    value)` hears of created biases (the rewrite slices them with the node's output channels). A quantized
    bias is requantized with its own scale; a quantized node without one gets none (there is no scale)."""
    for node, delta in deltas.items():
        if add_to_bias(node, delta):
            continue
        if node.op_type not in _FLOAT_BIAS:
            continue
        refuse_non_finite(f"{node.name} bias", delta)
        created = _constant(model, delta.astype(node.outputs[0].dtype.numpy() if node.outputs[0].dtype else np.float32))
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, created)
        else:
            _add_after(model, node, created)
        on_new_bias(node, created)


def add_to_bias(node: ir.Node, delta: np.ndarray) -> bool:
    """Add `delta` to the bias `node` has (requantized with its own scale where quantized); False if none."""
    bias = bias_of(node)
    if bias is None:
        return False
    dense = bias.dense()
    bias.store(dense + (delta / _bias_scale(node)).reshape(dense.shape))
    return True


def _bias_scale(node: ir.Node) -> float:
    return attr_float(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0


_FLOAT_BIAS = ("Conv", "ConvTranspose", "Gemm", "Attention", "MatMul")  # may be given a new float bias
_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "Attention": 2, "QLinearConv": 8, "QGemm": 6}


def bias_of(node: ir.Node) -> StoredWeight | None:
    """The constant bias (maybe quantized) a node's output gets: its own bias input, or a MatMul's sole
    following Add."""
    if node.op_type in _BIAS_INPUT:
        index = _BIAS_INPUT[node.op_type]
        bias = node.inputs[index] if len(node.inputs) > index else None
        return _sole_weight(bias)
    uses = node.outputs[0].uses()
    if len(uses) == 1 and uses[0].node.op_type == "Add":
        other = _sole_weight(uses[0].node.inputs[1 - uses[0].idx])
        if other is not None and other.value.const_value.shape.rank() == 1:
            return other
    return None


def _sole_weight(value: ir.Value | None) -> StoredWeight | None:
    """`value`'s storage when it is a weight read only through `value` by one node."""
    weight = stored_weight(value) if value is not None else None
    if weight is None or len(value.uses()) != 1 or (weight.value is not value and len(weight.value.uses()) != 1):
        return None
    return weight


def _constant(model: ir.Model, array: np.ndarray) -> ir.Value:
    name = f"graphprune_bias_{next(_names)}"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape, value.dtype = ir.Shape(array.shape), value.const_value.dtype
    model.graph.register_initializer(value)
    return value


def _add_after(model: ir.Model, node: ir.Node, bias: ir.Value) -> None:
    """y → Add(y, bias), every former reader of y reading the sum."""
    out = node.outputs[0]
    readers = list(out.uses())
    add = ir.node("Add", [out, bias], name=f"{node.name or 'matmul'}_graphprune_bias")
    add.outputs[0].name = f"{out.name}_biased"
    add.outputs[0].shape, add.outputs[0].type = out.shape, out.type
    for usage in readers:
        usage.node.replace_input_with(usage.idx, add.outputs[0])
    if out.is_graph_output():
        outputs = node.graph.outputs
        outputs[outputs.index(out)] = add.outputs[0]
    node.graph.insert_after(node, add)


def obs_weight_updates(analysis: Analysis, plan: PruningPlan, calibration: Calibration,
                       release: bool = False) -> WeightUpdates:
    """OBS compensation: for each consumer weight, the jointly optimal change to the surviving input channels
    when the removed set P goes, W ← W − H⁻¹[:, P] (H⁻¹[P, P])⁻¹ W[P, :] (W as [input channel, outputs]).
    `release`: drop each tensor's inverse Hessian once its last reader is compensated (when this is their last
    use), so the inverses still needed and the updates made are never all held at once."""
    removed: dict[tuple[ir.Value, int], tuple[ConsumerView, list[np.ndarray], Member]] = {}
    for gid, units in plan.removed.items():
        for member in analysis.group(gid).members:
            if member.consumer:
                view = consumer_view(member)
                entry = removed.setdefault((member.value, member.axis), (view, [], member))
                entry[1].append(view.positions(units))  # this member's own rows: groups share a weight
    readers = Counter((m.reads.value.name, m.reads.axis) for _, _, m in removed.values())
    updates: WeightUpdates = {}
    for view, parts, member in removed.values():
        positions = np.concatenate(parts)
        hinv = inverse_hessian(calibration, member)
        flat = view.rows()
        block = hinv[np.ix_(positions, positions)].astype(np.float64)
        flat -= hinv[:, positions].astype(np.float64) @ np.linalg.solve(block, flat[positions])
        flat[positions] = 0.0
        updated = view.dense_from(flat)
        kept = scratch_array(updated.shape, np.result_type(view.weight.stored().dtype, np.float32))
        kept[...] = updated
        updates[view.weight.value] = kept
        key = (member.reads.value.name, member.reads.axis)
        readers[key] -= 1
        if release and readers[key] == 0:
            calibration.stats[key].hessian_inverse = None
    return updates


def obs_preview(analysis: Analysis, calibration: Calibration) -> Callable[[Group, np.ndarray], WeightUpdates]:
    """(group, units) → the OBS-compensated weights removing those units alone would give, as the rewrite
    would make them: measured allocation sees what a removal costs once repaired (sequential refits are
    closer to this than to plain masking)."""
    return lambda group, units: obs_weight_updates(analysis, PruningPlan({group.id: units}), calibration)


def apply_weight_updates(updates: WeightUpdates) -> None:
    """Replace each weight's real values by their compensated version (before any slicing); quantized weights
    are requantized with their own scales."""
    for value, array in updates.items():
        stored_weight(value).store(array)
