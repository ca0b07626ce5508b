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


@register("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
class LayerNorm(OpRule):
    """Statistics over axes [axis:]; the leading axes pass through. Over a single last axis (the hidden
    dimension) channels are coupled with scale and bias, approximately: the statistics change."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, y = node.inputs[0], node.outputs[0]
        x_shape = ctx.shape(x)
        dim = Dim(port.value(node), axis)
        if x_shape is None:
            ctx.freeze(dim, f"{node.op_type} input rank unknown")
            return
        rank = len(x_shape)
        start = normalize_axis(attr_int(node, "axis", -1), rank)
        data_port = port.index == 0
        if data_port and axis < start:
            for _, value in present(node.outputs):
                ctx.link(Dim(x, axis), Dim(value, axis))
            return
        normalized = axis if data_port else axis + start
        if start != rank - 1 or normalized != rank - 1 or (port.output and port.index > 0):
            ctx.freeze(dim, f"{node.op_type} statistics span this axis")
            return
        ctx.link(Dim(x, rank - 1), Dim(y, rank - 1))
        for _, param in present(node.inputs)[1:]:
            ctx.link(Dim(y, rank - 1), Dim(param, 0))
        ctx.approximate(Dim(y, rank - 1), f"{node.op_type} statistics span this axis")


@register("GroupNormalization", "LpNormalization", "LRN", "MeanVarianceNormalization")
class CrossChannelNorm(OpRule):
    """Statistics cross the channel axis (GroupNorm group boundaries, LRN windows): never pruned."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} mixes channels in its statistics")
