"""Reductions, arg-reductions and softmax: channels pass through unless the op reduces or normalises over them."""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ops.moe import is_router_softmax, masked_zero
from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, attr_int, int_list, normalize_axis, register


def _kept_axis(axis: int, reduced: set[int], keepdims: bool) -> int:
    """Where input `axis` lands in the output of a reduction."""
    return axis if keepdims else axis - sum(1 for r in reduced if r < axis)


def _input_axis(out_axis: int, rank: int, reduced: set[int], keepdims: bool) -> int:
    """Inverse of _kept_axis."""
    if keepdims:
        return out_axis
    survivors = [a for a in range(rank) if a not in reduced]
    return survivors[out_axis]


_STATISTICS = {"ReduceMean", "ReduceSumSquare", "ReduceL2"}  # RMSNorm-style statistics over the hidden axis


def couple_reduction(ctx: CoupleContext, node: ir.Node, port: Port, axis: int, reduced: set[int], rank: int) -> None:
    """Axes outside `reduced` pass from input 0 to output 0 (shifted when keepdims=0); reduced ones freeze."""
    keepdims = bool(attr_int(node, "keepdims", 1))
    in_axis = _input_axis(axis, rank, reduced, keepdims) if port.output else axis
    if in_axis in reduced:
        expert_sum = node.op_type == "ReduceSum" and not (keepdims and port.output)
        if expert_sum and masked_zero(ctx, node.inputs[0], in_axis):
            return  # a sum over experts: the ones never routed to add zeros
        if expert_sum and ctx.defer(node, port, axis):
            return  # the axis may turn out to be an expert axis
        if node.op_type in _STATISTICS and len(reduced) == 1:
            ctx.approximate(Dim(node.inputs[0], in_axis), f"{node.op_type} reduces over this axis")
        else:
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} reduces over this axis")
        return
    ctx.link(Dim(node.inputs[0], in_axis), Dim(node.outputs[0], _kept_axis(in_axis, reduced, keepdims)))


@register(
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)
class Reduce(OpRule):
    """Reducing over other axes passes the channel through; reducing over it freezes it."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x = node.inputs[0]
        shape = ctx.shape(x)
        dim = Dim(port.value(node), axis)
        if port.index != 0 or shape is None:
            ctx.freeze(dim, f"{node.op_type}: axes input or unknown rank")
            return
        rank = len(shape)
        axes = int_list(ctx, node, "axes", 1)
        if axes is None or not axes:
            if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
                ctx.freeze(dim, f"{node.op_type} axes are computed at run time")
                return
            if attr_int(node, "noop_with_empty_axes", 0):
                ctx.link(Dim(x, axis), Dim(node.outputs[0], axis))
                return
            axes = list(range(rank))
        couple_reduction(ctx, node, port, axis, {normalize_axis(a, rank) for a in axes}, rank)


@register("ArgMax", "ArgMin")
class ArgReduce(OpRule):
    """Index of the extreme along `axis`: other axes pass through."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        shape = ctx.shape(node.inputs[0])
        if shape is None:
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} input rank unknown")
            return
        couple_reduction(ctx, node, port, axis, {normalize_axis(attr_int(node, "axis", 0), len(shape))}, len(shape))


@register("Softmax", "LogSoftmax", "Hardmax")
class Softmax(OpRule):
    """Normalises along `axis` (opset < 13: over the flattened axes [axis:]); those axes freeze."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        shape = ctx.shape(node.inputs[0])
        dim = Dim(port.value(node), axis)
        if shape is None:
            ctx.freeze(dim, f"{node.op_type} input rank unknown")
            return
        legacy = ctx.opset() < 13
        norm = normalize_axis(attr_int(node, "axis", 1 if legacy else -1), len(shape))
        if axis == norm and is_router_softmax(ctx, node, axis):
            ctx.link(Dim(node.inputs[0], axis), Dim(node.outputs[0], axis))
            return
        if axis == norm or (legacy and axis >= norm):
            ctx.freeze(dim, f"{node.op_type} normalises over this axis")
            return
        ctx.link(Dim(node.inputs[0], axis), Dim(node.outputs[0], axis))
