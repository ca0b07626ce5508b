"""Ops modelled on purpose as barriers, with the reason shown to the user (anything unlisted freezes too)."""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, register

_REASONS = {
    "DepthToSpace": "DepthToSpace/PixelShuffle moves channels into space",
    "SpaceToDepth": "SpaceToDepth moves space into channels",
    "Size": "its element count is read by a Size op",
    "If": "control flow (If) subgraph",
    "Loop": "control flow (Loop) subgraph",
    "Scan": "control flow (Scan) subgraph",
    "NonZero": "NonZero output depends on values",
    "CumSum": "CumSum accumulates along an axis",
}


@register(*_REASONS)
class Barrier(OpRule):
    """Always freezes, naming why."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        ctx.freeze(Dim(port.value(node), axis), _REASONS[node.op_type])
