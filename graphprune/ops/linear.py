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
            ctx.consumer(Dim(b, b_k), Dim(a, a_k), node)
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
    """A[..., M, K] @ B[..., K, N] with numpy batch broadcasting. A contraction with a constant weight is a
    consumer (Linear, or stacked [E, K, N] expert weights); batch axes shared by two activations are attention
    heads; a contraction between two activations (over head_dim) is never pruned."""

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        w_shape = ctx.shape(node.inputs[1])
        if ctx.const(node.inputs[1]) is None or w_shape is None or len(w_shape) < 2:
            return []
        return [Dim(node.inputs[1], len(w_shape) - 1)]  # [.., K, N]: stacked [E, K, N] expert weights too

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
        touched = Dim(port.value(node), axis)
        shapes = [ctx.shape(v) for v in (a, b, y)]
        if any(s is None or len(s) < 2 for s in shapes):
            ctx.freeze(touched, "MatMul with a 1-D or unknown-rank operand")
            return
        ra, rb, ry = (len(s) for s in shapes)
        role, out_axis = self._role(port, axis, ra, rb, ry)
        if role == "k":
            self._couple_contraction(ctx, node, (ra, rb), touched)
        elif role == "m":
            ctx.link(Dim(a, ra - 2), Dim(y, ry - 2))
        elif role == "n":
            ctx.link(Dim(b, rb - 1), Dim(y, ry - 1))
        else:
            self._couple_batch(ctx, a, b, y, shapes, out_axis)

    @staticmethod
    def _role(port: Port, axis: int, ra: int, rb: int, ry: int) -> tuple[str, int]:
        """(m | n | k | batch, output axis for batch)."""
        if port.output:
            return ("m" if axis == ry - 2 else "n" if axis == ry - 1 else "batch"), axis
        rank = ra if port.index == 0 else rb
        if axis >= rank - 2:
            contraction = axis == (ra - 1 if port.index == 0 else rb - 2)
            return ("k" if contraction else "m" if port.index == 0 else "n"), -1
        return "batch", axis + ry - rank

    @staticmethod
    def _couple_contraction(ctx: CoupleContext, node: ir.Node, ranks: tuple[int, int], touched: Dim) -> None:
        a, b = node.inputs[0], node.inputs[1]
        ra, rb = ranks
        if ctx.const(b) is not None:
            ctx.link(Dim(a, ra - 1), Dim(b, rb - 2))
            ctx.consumer(Dim(b, rb - 2), Dim(a, ra - 1), node)
        elif ctx.const(a) is not None and ra == 2:
            ctx.link(Dim(a, 1), Dim(b, rb - 2))
            ctx.consumer(Dim(a, 1), Dim(b, rb - 2), node)
        else:
            ctx.freeze(touched, "MatMul contraction between two activations (e.g. over head_dim)")

    @staticmethod
    def _couple_batch(ctx: CoupleContext, a: ir.Value, b: ir.Value, y: ir.Value, shapes: list, out_axis: int) -> None:
        """A broadcast batch axis: linked between the output and each operand that is not broadcast there."""
        y_shape = shapes[2]
        linked = 0
        for operand, shape in ((a, shapes[0]), (b, shapes[1])):
            in_axis = out_axis - (len(y_shape) - len(shape))
            if in_axis >= 0 and (shape[in_axis] != 1 or y_shape[out_axis] == 1):
                ctx.link(Dim(y, out_axis), Dim(operand, in_axis))
                linked += 1
        if linked == 2 and ctx.const(a) is None and ctx.const(b) is None:
            ctx.tag(Dim(y, out_axis), "head")
