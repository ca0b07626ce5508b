"""Gemm and MatMul with a constant weight: the contraction axis is consumed, the output axis produced.

Quantized twins (QGemm, QLinearMatMul, MatMulInteger, MatMulIntegerToFloat, DynamicQuantizeMatMul) read the
same roles from other input slots; per-column weight scales and zero points go with the output columns.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ir.values import const_of
from graphprune.ops.elementwise import couple_broadcast
from graphprune.ops.encodings import Affine, Encoding
from graphprune.ops.registry import MS, CoupleContext, Dim, OpRule, Port, attr_int, input_at, per_channel, register


class _Quantized(OpRule):
    """Where a matrix product's operands are (float: A=0, B=1), and its quantization inputs, if any."""

    a, b, bias = 0, 1, -1
    b_params: tuple[int, ...] = ()  # B's scale and zero point: per tensor or per output column
    activation_params: tuple[int, ...] = ()  # per-tensor scales and zero points of A and Y
    b_scale, b_zero_point = -1, -1

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        return self.b_params + self.activation_params

    def encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        value = input_at(node, input_index)
        if input_index != self.b or not self.b_params or value is None or value.const_value is None:
            return None
        scale = const_of(input_at(node, self.b_scale))
        if scale is None and self.b_scale >= 0:
            return None
        shape = tuple(value.const_value.shape)
        return Affine.along(scale, const_of(input_at(node, self.b_zero_point)), shape, self._column_axis(node, shape))

    def _column_axis(self, node: ir.Node, shape: tuple[int, ...]) -> int:
        return len(shape) - 1

    def activation_encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        if input_index != self.a or 1 not in self.activation_params or const_of(node.inputs[1]) is None:
            return None  # QLinearMatMul and QGemm read A with a constant scale and zero point (inputs 1, 2)
        zero = const_of(input_at(node, 2))
        return Affine(const_of(node.inputs[1]).reshape(()), np.int64(0) if zero is None else zero.reshape(()))

    def output_columns(self, ctx: CoupleContext, node: ir.Node) -> list[ir.Value]:
        """1-D inputs with one entry per output column: per-column scales, zero points, a fused bias."""
        return [v for v in [*per_channel(ctx, node, self.b_params), input_at(node, self.bias)] if v is not None]

    def logical_port(self, port: Port) -> Port | None:
        """The float op's port for `port` (A → 0, B → 1), None for the quantization and bias inputs."""
        if port.output:
            return port
        return {self.a: Port(False, 0), self.b: Port(False, 1)}.get(port.index)


@register("Gemm")
class Gemm(_Quantized):
    """Y = A' B' + C with A' = A or Aᵀ, B' = B or Bᵀ; B must be a weight (constant after folding)."""

    c = 2

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        if not ctx.weight(node.inputs[self.b]):
            return []
        return [Dim(node.inputs[self.b], 0 if attr_int(node, "transB", 0) else 1)]

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        a, b, y, c = node.inputs[self.a], node.inputs[self.b], node.outputs[0], input_at(node, self.c)
        trans_a, trans_b = attr_int(node, "transA", 0), attr_int(node, "transB", 0)
        a_k, a_m = (0, 1) if trans_a else (1, 0)
        b_k, b_n = (1, 0) if trans_b else (0, 1)
        if not ctx.weight(b):
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} with a non-constant B operand")
            return
        role = self._role(ctx, node, port, axis, a_k, b_k)
        if role == "k":
            ctx.link(Dim(a, a_k), Dim(b, b_k))
            ctx.consumer(Dim(b, b_k), Dim(a, a_k), node)
        elif role == "m":
            ctx.link(Dim(a, a_m), Dim(y, 0))
            if c is not None:
                couple_broadcast(ctx, node, Port(True, 0), 0, [(self.c, c)])
        else:
            ctx.link(Dim(y, 1), Dim(b, b_n))
            for column in self.output_columns(ctx, node):
                ctx.link(Dim(y, 1), Dim(column, 0))
            if c is not None:
                couple_broadcast(ctx, node, Port(True, 0), 1, [(self.c, c)])

    def _role(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int, a_k: int, b_k: int) -> str:
        """Which Gemm dimension (m, k or n) the touched axis is."""
        logical = self.logical_port(port)
        if port.output:
            return "m" if axis == 0 else "n"
        if logical is not None:
            return ("k" if axis == (a_k if logical.index == 0 else b_k) else "m" if logical.index == 0 else "n")
        if port.index != self.c:
            return "n"
        c_rank = len(ctx.shape(node.inputs[self.c]) or [])
        return "m" if axis + 2 - c_rank == 0 else "n"

    def _column_axis(self, node: ir.Node, shape: tuple[int, ...]) -> int:
        return 0 if attr_int(node, "transB", 0) else 1

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None] | None:
        a, b = node.inputs[self.a].shape, node.inputs[self.b].shape
        if a is None or b is None or len(a) != 2 or len(b) != 2:
            return None
        return [ir.Shape([a[1 if attr_int(node, "transA", 0) else 0], b[0 if attr_int(node, "transB", 0) else 1]])]


@register("QGemm", domain=MS)
class QGemm(Gemm):
    """A, a_scale, a_zero_point, B, b_scale, b_zero_point, C (int32), y_scale, y_zero_point."""

    a, b, c = 0, 3, 6
    b_params = (4, 5)
    activation_params = (1, 2, 7, 8)
    b_scale, b_zero_point = 4, 5


@register("MatMul")
class MatMul(_Quantized):
    """A[..., M, K] @ B[..., K, N] with numpy batch broadcasting. A contraction with a constant weight is a
    consumer (Linear, or stacked [E, K, N] expert weights); batch axes shared by two activations are attention
    heads; a contraction between two activations (over head_dim) is never pruned."""

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        w_shape = ctx.shape(node.inputs[self.b])
        if not ctx.weight(node.inputs[self.b]) or w_shape is None or len(w_shape) < 2:
            return []
        return [Dim(node.inputs[self.b], len(w_shape) - 1)]  # [.., K, N]: stacked [E, K, N] expert weights too

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        a, b, y = node.inputs[self.a], node.inputs[self.b], node.outputs[0]
        touched = Dim(port.value(node), axis)
        shapes = [ctx.shape(v) for v in (a, b, y)]
        if any(s is None or len(s) < 2 for s in shapes):
            ctx.freeze(touched, f"{node.op_type} with a 1-D or unknown-rank operand")
            return
        ra, rb, ry = (len(s) for s in shapes)
        logical = self.logical_port(port)
        role, out_axis = ("n", -1) if logical is None else self._role(logical, axis, ra, rb, ry)
        if role == "k":
            self._couple_contraction(ctx, node, (ra, rb), touched)
        elif role == "m":
            ctx.link(Dim(a, ra - 2), Dim(y, ry - 2))
        elif role == "n":
            ctx.link(Dim(b, rb - 1), Dim(y, ry - 1))
            for column in self.output_columns(ctx, node):
                ctx.link(Dim(y, ry - 1), Dim(column, 0))
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

    def _couple_contraction(self, ctx: CoupleContext, node: ir.Node, ranks: tuple[int, int], touched: Dim) -> None:
        a, b = node.inputs[self.a], node.inputs[self.b]
        ra, rb = ranks
        if ctx.weight(b):
            ctx.link(Dim(a, ra - 1), Dim(b, rb - 2))
            ctx.consumer(Dim(b, rb - 2), Dim(a, ra - 1), node)
        elif ctx.weight(a) and ra == 2 and not self.b_params:
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
        if linked == 2 and not ctx.weight(a) and not ctx.weight(b):
            ctx.tag(Dim(y, out_axis), "head")

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None] | None:
        """numpy matmul of A and B (for the contrib twins ONNX shape inference does not know)."""
        a, b = node.inputs[self.a].shape, node.inputs[self.b].shape
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            return None
        batch = [1] * (max(len(a), len(b)) - 2)
        pad_a = batch[: len(batch) - (len(a) - 2)] + list(a.dims[:-2])
        pad_b = batch[: len(batch) - (len(b) - 2)] + list(b.dims[:-2])
        return [ir.Shape([x if y == 1 else y for x, y in zip(pad_a, pad_b, strict=True)] + [a[-2], b[-1]])]


@register("QLinearMatMul")
class QLinearMatMul(MatMul):
    """a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point (also between activations)."""

    a, b = 0, 3
    b_params = (4, 5)
    activation_params = (1, 2, 6, 7)
    b_scale, b_zero_point = 4, 5


@register("MatMulInteger")
class MatMulInteger(MatMul):
    """A, B, a_zero_point, b_zero_point → int32; the scales are applied by the nodes after it."""

    b_params = (3,)
    activation_params = (2,)
    b_zero_point = 3


@register("MatMulIntegerToFloat", domain=MS)
class MatMulIntegerToFloat(MatMul):
    """A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias → float (ORT's fusion of MatMulInteger)."""

    b_params = (3, 5)
    activation_params = (2, 4)
    b_scale, b_zero_point, bias = 3, 5, 6


@register("DynamicQuantizeMatMul", domain=MS)
class DynamicQuantizeMatMul(MatMul):
    """A (float, quantized per call over its whole range), B, b_scale, b_zero_point, bias → float."""

    reads_range = True

    b_params = (2, 3)
    b_scale, b_zero_point, bias = 2, 3, 4
