"""Normalisations: per-channel ones (BatchNorm, InstanceNorm) pass channels through with their parameters;
ones whose statistics span the channel axis (LayerNorm, GroupNorm, LRN) freeze it."""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, attr_int, normalize_axis, present, register


@register("BatchNormalization", "InstanceNormalization")
class PerChannelNorm(OpRule):
    """X, Y: [N, C, ...]; every other input and output is a per-channel [C] vector."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        is_data = port.index == 0
        if (is_data and axis != 1) or (not is_data and axis != 0):
            if is_data and axis == 0:
                ctx.link(Dim(node.inputs[0], 0), Dim(node.outputs[0], 0))
                return
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} axis {axis} is not its channel axis")
            return
        channel = Dim(node.outputs[0], 1)
        ctx.link(channel, Dim(node.inputs[0], 1))
        for _, value in present(node.inputs)[1:]:
            ctx.link(channel, Dim(value, 0))
        for _, value in present(node.outputs)[1:]:
            ctx.link(channel, Dim(value, 0))


@register("LayerNormalization")
class LayerNorm(OpRule):
    """Statistics over axes [axis:]; the leading axes pass through."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x_shape = ctx.shape(node.inputs[0])
        dim = Dim(port.value(node), axis)
        if x_shape is None or port.index != 0:
            ctx.freeze(dim, "LayerNormalization normalises over this axis")
            return
        start = normalize_axis(attr_int(node, "axis", -1), len(x_shape))
        if axis >= start:
            ctx.freeze(dim, "LayerNormalization statistics span this axis")
            return
        for _, value in present(node.outputs):
            ctx.link(Dim(node.inputs[0], axis), Dim(value, axis))


@register("GroupNormalization", "LpNormalization", "LRN", "MeanVarianceNormalization")
class CrossChannelNorm(OpRule):
    """Statistics cross the channel axis (GroupNorm group boundaries, LRN windows): never pruned."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} mixes channels in its statistics")
