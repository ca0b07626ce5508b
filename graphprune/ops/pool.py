"""Pooling: channels pass through; spatial axes shrink."""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, register


@register(
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
)
class Pool(OpRule):
    """[N, C, spatial...] → [N, C, spatial'...]; MaxPool's Indices output encodes channel offsets."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        dim = Dim(port.value(node), axis)
        if axis > 1 or (port.output and port.index > 0) or (not port.output and port.index > 0):
            ctx.freeze(dim, f"{node.op_type} port {port} axis {axis} is not a pass-through channel axis")
            return
        if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
            ctx.freeze(dim, "MaxPool Indices output flattens the channel axis into its values")
            return
        ctx.link(Dim(node.inputs[0], axis), Dim(node.outputs[0], axis))


