"""Gemm and MatMul with a constant weight: the contraction axis is consumed, the output axis produced."""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ops.elementwise import couple_broadcast
from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, attr_int, register


@register("Gemm")
class Gemm(OpRule):
    """Y = A' B' + C with A' = A or Aᵀ, B' = B or Bᵀ; B must be a weight (constant after folding)."""

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        if ctx.const(node.inputs[1]) is None:
            return []
        return [Dim(node.inputs[1], 0 if attr_int(node, "transB", 0) else 1)]

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
        trans_a, trans_b = attr_int(node, "transA", 0), attr_int(node, "transB", 0)
        a_k, a_m = (0, 1) if trans_a else (1, 0)
        b_k, b_n = (1, 0) if trans_b else (0, 1)
        if ctx.const(b) is None:
            ctx.freeze(Dim(port.value(node), axis), "Gemm with a non-constant B operand")
            return
        role = self._role(ctx, node, port, axis, a_k, b_k)
        if role == "k":
            ctx.link(Dim(a, a_k), Dim(b, b_k))
            ctx.consumer(Dim(b, b_k))
        elif role == "m":
            ctx.link(Dim(a, a_m), Dim(y, 0))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                couple_broadcast(ctx, node, Port(True, 0), 0, [(2, node.inputs[2])])
        else:
            ctx.link(Dim(y, 1), Dim(b, b_n))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                couple_broadcast(ctx, node, Port(True, 0), 1, [(2, node.inputs[2])])

    @staticmethod
    def _role(ctx: CoupleContext, node: ir.Node, port: Port, axis: int, a_k: int, b_k: int) -> str:
        """Which Gemm dimension (m, k or n) the touched axis is."""
        if port.output:
            return "m" if axis == 0 else "n"
        if port.index == 0:
            return "k" if axis == a_k else "m"
        if port.index == 1:
            return "k" if axis == b_k else "n"
        c_rank = len(ctx.shape(node.inputs[2]) or [])
        return "m" if axis + 2 - c_rank == 0 else "n"


@register("MatMul")
class MatMul(OpRule):
    """X[..., K] @ W[K, N] with a 2-D constant W; leading axes of X pass through to Y."""

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        w_shape = ctx.shape(node.inputs[1])
        if ctx.const(node.inputs[1]) is None or w_shape is None or len(w_shape) != 2:
            return []
        return [Dim(node.inputs[1], 1)]

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
        touched = Dim(port.value(node), axis)
        w_shape, x_shape = ctx.shape(w), ctx.shape(x)
        if ctx.const(w) is None or w_shape is None or len(w_shape) != 2:
            ctx.freeze(touched, "MatMul without a 2-D constant right operand")
            return
        if x_shape is None or len(x_shape) < 2:
            ctx.freeze(touched, "MatMul with a 1-D or unknown-rank left operand")
            return
        last = len(x_shape) - 1
        if (port.output, port.index, axis) in ((False, 0, last), (False, 1, 0)):
            ctx.link(Dim(x, last), Dim(w, 0))
            ctx.consumer(Dim(w, 0))
        elif (port.output, port.index, axis) in ((True, 0, last), (False, 1, 1)):
            ctx.link(Dim(y, last), Dim(w, 1))
        else:
            ctx.link(Dim(x, axis), Dim(y, axis))
