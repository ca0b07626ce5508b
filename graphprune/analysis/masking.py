"""Masking: the model with a plan's units switched off in place — consumer weight rows zeroed, residual branches
multiplied by 0, removed experts never routed to. A correct rewrite must reproduce the masked model exactly
(the masked-equivalence tests), and measured sensitivity runs it to see what a removal costs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Block, Group, Member
from graphprune.analysis.plan import PruningPlan
from graphprune.analysis.weights import stored_weight
from graphprune.ops import lookup


def mask_consumers(analysis: Analysis, plan: PruningPlan) -> ir.Model:
    """Zero, in place, every consumer weight slice that reads a planned unit, and force the router logits of
    planned experts to -inf (a router that never picks them): the model a correct rewrite must reproduce.
    Activations whose range a node reads (dynamic quantization) get their planned channels zeroed too: the
    pruned model's range covers only the kept ones (and zero)."""
    for gid, units in plan.removed.items():
        group = analysis.group(gid)
        if group.experts is not None:
            _mask_experts(analysis.model, group, units)
        for unit in units.tolist() if group.blocks is not None else []:
            mask_block(analysis.model, group.blocks[unit])
        for member in group.members:
            if member.consumer:
                _zero(member, units)
            elif member.is_param:
                _silence(member, member.positions(units))
            else:
                _mask_ranges(analysis.model, member.value, member.axis, member.positions(units))
    return analysis.model


def _silence(member: Member, positions: np.ndarray) -> None:
    """Zero the entries of parameter `member` that the ops reading it silence for removed units (`silenced`)."""
    for usage in member.value.uses():
        rule = lookup(usage.node)
        silenced = rule.silenced(usage.node, usage.idx, positions) if rule is not None else positions[:0]
        if silenced.size:
            stored_weight(member.value).zero(member.axis, silenced)


def mask_block(model: ir.Model, block: Block) -> ir.Node:
    """Multiply the block's branch by 0 before it joins the stream (x + 0·f(x)); returns the inserted Mul."""
    branch = block.branch
    zero = ir.Value(name=f"{branch.name}_block_zero", const_value=ir.tensor(np.zeros((), branch.dtype.numpy())))
    model.graph.register_initializer(zero)
    masked = ir.node("Mul", [branch, zero], name=f"{branch.name}_mask_block")
    masked.outputs[0].shape, masked.outputs[0].type = branch.shape, branch.type
    model.graph.insert_before(block.add, masked)
    block.add.replace_input_with(1 - block.stream_index, masked.outputs[0])
    return masked


def unmask_block(model: ir.Model, block: Block, masked: ir.Node) -> None:
    """Undo `mask_block`."""
    zero = masked.inputs[1]
    block.add.replace_input_with(1 - block.stream_index, masked.inputs[0])
    model.graph.remove(masked, safe=True)
    model.graph.initializers.pop(zero.name)


def _mask_ranges(model: ir.Model, value: ir.Value, axis: int, positions: np.ndarray) -> None:
    """Zero `positions` of `value` along `axis` where a node reads its range (DynamicQuantizeLinear)."""
    readers = [u for u in value.uses() if u.idx == 0 and (rule := lookup(u.node)) is not None and rule.reads_range]
    if not readers or not positions.size:
        return
    rank = len(value.shape)
    mask = np.ones([value.shape[axis] if a == axis else 1 for a in range(rank)], dtype=value.dtype.numpy())
    mask.reshape(-1)[positions] = 0
    constant = ir.Value(name=f"{value.name}_range_mask", const_value=ir.tensor(mask))
    model.graph.register_initializer(constant)
    masked = ir.node("Mul", [value, constant], name=f"{value.name}_mask_range")
    readers[0].node.graph.insert_before(readers[0].node, masked)
    for usage in readers:
        usage.node.replace_input_with(usage.idx, masked.outputs[0])


def _mask_experts(model: ir.Model, group: Group, units: np.ndarray) -> None:
    """Add -inf to the router logits of experts `units`, right after the layer computing them."""
    for dim in group.experts.logits():
        logits, axis = dim.value, dim.axis
        positions = next(m for m in group.members if m.value is logits and m.axis == axis).positions(units)
        bias = np.zeros([logits.shape[axis]] + [1] * (len(logits.shape) - 1 - axis), dtype=logits.dtype.numpy())
        bias[positions] = -np.inf
        mask = ir.Value(name=f"{logits.name}_expert_mask", const_value=ir.tensor(bias))
        model.graph.register_initializer(mask)
        masked = ir.node("Add", [logits, mask], name=f"{logits.name}_mask_experts")
        ir.convenience.replace_all_uses_with(logits, masked.outputs[0])
        masked.replace_input_with(0, logits)
        logits.producer().graph.insert_after(logits.producer(), masked)


def _zero(member: Member, units: np.ndarray) -> tuple[ir.Value, ir.TensorProtocol]:
    """Zero the rows of consumer `member`'s weight that read `units`; returns (its value, the tensor it held)."""
    weight = stored_weight(member.value)
    held = (weight.value, weight.value.const_value)
    weight.zero(member.axis, member.positions(units))
    return held


class Masked:
    """Context: one group's consumer rows reading `units` zeroed (residual blocks: their branches multiplied by
    0) in `model`, then `updates` (new real weights, e.g. the compensation a removal will get) set in place;
    all restored on exit."""

    def __init__(self, model: ir.Model, group: Group, units: np.ndarray,
                 updates: dict[ir.Value, np.ndarray] | None = None) -> None:
        self.model, self.group, self.units, self.updates = model, group, units, updates or {}
        self.saved: list = []
        self.masks: list = []

    @property
    def changed(self) -> list[ir.Value]:
        """The weights this context set (zeroed rows or updates), once entered."""
        return [value for value, _ in self.saved]

    def __enter__(self) -> Masked:
        for member in (m for m in self.group.members if m.consumer):
            if stored_weight(member.value).value not in self.updates:  # an update zeroes these rows already
                self.saved.append(_zero(member, self.units))
        self.saved.extend(_store(self.updates))
        for unit in self.units.tolist() if self.group.blocks is not None else []:
            block = self.group.blocks[unit]
            self.masks.append((block, mask_block(self.model, block)))
        return self

    def __exit__(self, *exc) -> None:
        _restore(self.saved)
        for block, mask in reversed(self.masks):
            unmask_block(self.model, block, mask)


def _store(updates: dict[ir.Value, np.ndarray]) -> list[tuple[ir.Value, ir.TensorProtocol | None]]:
    """Set new real weights in place; (value, its former tensor) for each, to restore them from."""
    saved = []
    for value, array in updates.items():
        weight = stored_weight(value)
        saved.append((weight.value, weight.value.const_value))
        weight.store(array)
    return saved


class Updated:
    """Context: `updates` (new real weights, e.g. a whole plan's compensation) set in place, restored on exit."""

    def __init__(self, updates: dict[ir.Value, np.ndarray]) -> None:
        self.updates, self.saved = updates, []

    def __enter__(self) -> None:
        self.saved = _store(self.updates)

    def __exit__(self, *exc) -> None:
        _restore(self.saved)


def _restore(saved: list[tuple[ir.Value, ir.TensorProtocol | None]]) -> None:
    """Put back the tensors `saved` held, last set first."""
    for value, tensor in reversed(saved):
        value.const_value = tensor
