"""Quantization ops: QDQ pairs, ONNX Runtime's QOperator activations and dynamic quantization.

DequantizeLinear of a constant is a weight stored as integers (its scale and zero point are sliced with its
channels); on activations QuantizeLinear/DequantizeLinear pass channels through, slicing per-channel scales
along their axis and blocked scales in whole blocks. QLinear activation ops behave like their float twins:
their scales and zero points are per tensor (anything else freezes). DynamicQuantizeLinear computes one range
per tensor (always containing 0): the pruned model's range is that of the kept channels, so it matches an
original whose removed channels are zero there — which is how the masked reference is built (`reads_range`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ir.values import const_of
from graphprune.ops.elementwise import couple_broadcast
from graphprune.ops.encodings import Affine, Encoding, NBits, pack, unpack
from graphprune.ops.pool import Pool
from graphprune.ops.reduce import Softmax
from graphprune.ops.registry import (
    MS,
    CoupleContext,
    Dim,
    OpRule,
    Port,
    RewriteContext,
    attr_int,
    input_at,
    normalize_axis,
    present,
    register,
)
from graphprune.ops.slicing import couple_pieces


def _per_tensor(ctx: CoupleContext, node: ir.Node, indices: tuple[int, ...]) -> bool:
    """Every input among `indices` (scales, zero points) is a single number."""
    shapes = [ctx.shape(v) for v in (input_at(node, i) for i in indices) if v is not None]
    return all(shape is not None and int(np.prod(shape)) == 1 for shape in shapes)


def _same_shape(node: ir.Node) -> list[ir.Shape | None]:
    """Output shapes of elementwise contrib ops, which ONNX shape inference does not know."""
    return [node.inputs[0].shape]


def _broadcast(a: ir.Shape | None, b: ir.Shape | None) -> ir.Shape | None:
    """numpy broadcasting of two shapes (a symbolic size against 1 stays symbolic)."""
    if a is None or b is None:
        return None
    rank = max(len(a), len(b))
    dims_a = [1] * (rank - len(a)) + list(a.dims)
    dims_b = [1] * (rank - len(b)) + list(b.dims)
    return ir.Shape([y if x == 1 else x for x, y in zip(dims_a, dims_b, strict=True)])


@register("QuantizeLinear", "DequantizeLinear")
@register("QuantizeLinear", "DequantizeLinear", domain=MS)
class QuantizeCast(OpRule):
    """y = x quantized or dequantized with scale and zero point per tensor, per `axis` (1-D) or per block of
    `block_size` along `axis` (same rank as x)."""

    dequantizes = True  # DequantizeLinear's output is its input's real values (QuantizeLinear has no encoding)

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, scale, zero, y = node.inputs[0], node.inputs[1], input_at(node, 2), node.outputs[0]
        shape, scale_shape = ctx.shape(x), ctx.shape(scale)
        if shape is None or scale_shape is None:
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} with an unknown rank")
            return
        q_axis = normalize_axis(attr_int(node, "axis", 1), len(shape))
        block = attr_int(node, "block_size", 0)
        per_tensor = int(np.prod(scale_shape)) == 1
        data_axis = axis if port.output or port.index == 0 or block else q_axis
        ctx.link(Dim(x, data_axis), Dim(y, data_axis))
        if per_tensor:
            return
        params = [v for v in (scale, zero) if v is not None]
        if not block:
            if data_axis == q_axis:
                for param in params:
                    ctx.link(Dim(x, q_axis), Dim(param, 0))
            return
        if data_axis != q_axis:
            for param in params:
                ctx.link(Dim(x, data_axis), Dim(param, data_axis))
            return
        size = shape[q_axis]
        if not isinstance(size, int):
            ctx.freeze(Dim(x, q_axis), f"blocked {node.op_type} along an axis of unknown size")
            return
        for param in params:  # a block is one unit: its scale goes only with all of its channels
            ctx.link_pairs(Dim(x, q_axis), np.arange(size), Dim(param, q_axis), np.arange(size) // block)

    def encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        if node.op_type != "DequantizeLinear" or input_index != 0 or node.inputs[0].const_value is None:
            return None
        scale = const_of(node.inputs[1])
        if scale is None:
            return None
        shape = tuple(node.inputs[0].const_value.shape)
        q_axis = normalize_axis(attr_int(node, "axis", 1), len(shape))
        return Affine.along(scale, const_of(input_at(node, 2)), shape, q_axis, attr_int(node, "block_size", 0))

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        return (1, 2)


@register("DynamicQuantizeLinear")
class DynamicQuantizeLinear(OpRule):
    """x → (uint8 y, scale, zero point): y keeps x's layout; the range is one per tensor."""

    reads_range = True
    quantizes = True

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        if port.output and port.index > 0:
            ctx.freeze(Dim(port.value(node), axis), "DynamicQuantizeLinear scale and zero point are scalars")
            return
        ctx.link(Dim(node.inputs[0], axis), Dim(node.outputs[0], axis))


def _per_tensor_or_freeze(ctx: CoupleContext, node: ir.Node, port: Port, axis: int, params: tuple[int, ...],
                          data: tuple[int, ...]) -> bool:
    """QLinear activation ops are modelled with per-tensor scales; data ports only."""
    if port.output and port.index != 0 or (not port.output and port.index not in data):
        ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} input {port.index} is a scale or zero point")
        return False
    if not _per_tensor(ctx, node, params):
        ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} with per-channel activation scales")
        return False
    return True


@register("QLinearAdd", "QLinearMul", domain=MS)
class QLinearBinary(OpRule):
    """A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point: broadcast like Add/Mul."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        if _per_tensor_or_freeze(ctx, node, port, axis, (1, 2, 4, 5, 6, 7), (0, 3)):
            couple_broadcast(ctx, node, port, axis, [(0, node.inputs[0]), (3, node.inputs[3])])

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None]:
        return [_broadcast(node.inputs[0].shape, node.inputs[3].shape)]

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        return (1, 2, 4, 5, 6, 7)


class _OneInput(OpRule):
    """X, X_scale, X_zero_point, Y_scale, Y_zero_point: one data input, scales per tensor."""

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        return _ONE_INPUT


_ONE_INPUT = (1, 2, 3, 4)


@register("QLinearSigmoid", "QLinearLeakyRelu", domain=MS)
class QLinearUnary(_OneInput):
    """Elementwise."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        if _per_tensor_or_freeze(ctx, node, port, axis, _ONE_INPUT, (0,)):
            ctx.link(Dim(node.inputs[0], axis), Dim(node.outputs[0], axis))

    output_shapes = staticmethod(_same_shape)



@register("QLinearGlobalAveragePool", domain=MS)
class QLinearGlobalAveragePool(_OneInput, Pool):
    """NCHW unless channels_last."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        if attr_int(node, "channels_last", 0):
            ctx.freeze(Dim(port.value(node), axis), "QLinearGlobalAveragePool with channels_last")
        elif _per_tensor_or_freeze(ctx, node, port, axis, _ONE_INPUT, (0,)):
            super().couple(ctx, node, port, axis)

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None]:
        shape = node.inputs[0].shape
        return [None if shape is None else ir.Shape([*shape.dims[:2], *[1] * (len(shape) - 2)])]



@register("QLinearSoftmax", domain=MS)
class QLinearSoftmax(_OneInput, Softmax):
    """`opset` says which Softmax it follows."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        shape = ctx.shape(node.inputs[0])
        if not _per_tensor_or_freeze(ctx, node, port, axis, _ONE_INPUT, (0,)):
            return
        if shape is None:
            ctx.freeze(Dim(port.value(node), axis), "QLinearSoftmax input rank unknown")
            return
        norm = normalize_axis(attr_int(node, "axis", -1), len(shape))
        if axis == norm or (attr_int(node, "opset", 13) < 13 and axis >= norm):
            ctx.freeze(Dim(port.value(node), axis), "QLinearSoftmax normalises over this axis")
            return
        ctx.link(Dim(node.inputs[0], axis), Dim(node.outputs[0], axis))

    output_shapes = staticmethod(_same_shape)



@register("QLinearConcat", domain=MS)
class QLinearConcat(OpRule):
    """Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input, laid end to end along `axis`."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        pieces = [v for i, v in present(node.inputs) if i >= 2 and (i - 2) % 3 == 0]
        params = tuple(i for i, _ in present(node.inputs) if i < 2 or (i - 2) % 3)
        if not _per_tensor_or_freeze(ctx, node, port, axis, params, tuple(range(2, len(node.inputs), 3))):
            return
        shape = ctx.shape(pieces[0])
        join = None if shape is None else normalize_axis(attr_int(node, "axis", 0), len(shape))
        couple_pieces(ctx, node, port, axis, node.outputs[0], pieces, join)

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None]:
        shapes = [v.shape for i, v in present(node.inputs) if i >= 2 and (i - 2) % 3 == 0]
        if any(s is None for s in shapes):
            return [None]
        join = normalize_axis(attr_int(node, "axis", 0), len(shapes[0]))
        sizes = [s[join] for s in shapes]
        total = sum(sizes) if all(isinstance(n, int) for n in sizes) else None
        return [ir.Shape([total if a == join else d for a, d in enumerate(shapes[0].dims)])]

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        return tuple(i for i, _ in present(node.inputs) if i < 2 or (i - 2) % 3)


@register("MatMulNBits", domain=MS)
class MatMulNBits(OpRule):
    """A [..., K] · B (K×N packed in `bits`-bit blocks: [N, blocks, block·bits/8]) with scales [N, blocks],
    optional packed uint8 zero points [N, ceil(blocks·bits/8)] and bias [N]. Output columns prune exactly;
    input columns prune in whole blocks (a block is one unit); `K`, `N` and the packed zero points are
    rewritten."""

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        return [Dim(node.inputs[1], 0)] if node.inputs[1].const_value is not None else []

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        a, b, scales, y = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
        zero, bias = input_at(node, 3), input_at(node, 5)
        shape = ctx.shape(a)
        touched = Dim(port.value(node), axis)
        reason = self._unsupported(ctx, node)
        if reason or shape is None:
            ctx.freeze(touched, reason or "MatMulNBits input rank unknown")
            return
        rank = len(shape)
        if (not port.output and port.index == 0 and axis == rank - 1) or (port.index in (1, 2) and axis == 1):
            k, block = attr_int(node, "K", 0), attr_int(node, "block_size", 0)
            ctx.link_pairs(Dim(a, rank - 1), np.arange(k), Dim(b, 1), np.arange(k) // block)
            ctx.link(Dim(b, 1), Dim(scales, 1))
            ctx.consumer(Dim(b, 1), Dim(a, rank - 1), node)
        elif (port.output and axis == rank - 1) or (not port.output and port.index > 0):
            ctx.link(Dim(y, rank - 1), Dim(b, 0))
            for param in (scales, zero, bias):
                if param is not None:
                    ctx.link(Dim(y, rank - 1), Dim(param, 0))
        else:
            ctx.link(Dim(a, axis), Dim(y, axis))

    @staticmethod
    def _unsupported(ctx: CoupleContext, node: ir.Node) -> str | None:
        zero = input_at(node, 3)
        if input_at(node, 4) is not None:
            return "MatMulNBits with g_idx (act-order) is not modelled"
        if node.inputs[1].const_value is None or len(ctx.shape(node.inputs[2]) or []) != 2:
            return "MatMulNBits with computed weights or flat scales is not modelled"
        if zero is not None and (zero.const_value is None or zero.const_value.dtype != ir.DataType.UINT8
                                 or len(zero.const_value.shape) != 2):
            return "MatMulNBits with float or flat zero points is not modelled"
        return None

    def encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        scales, zero = const_of(node.inputs[2]), const_of(input_at(node, 3))
        if input_index != 1 or scales is None or scales.ndim != 2:
            return None
        bits, block = attr_int(node, "bits", 4), attr_int(node, "block_size", 0)
        zero_points = None if zero is None else unpack(zero, bits, scales.shape[1])
        return NBits(scales.astype(np.float32), zero_points, bits, block)

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        return (2, 3, 4)

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        rows, blocks = ctx.kept(node.inputs[1], 0), ctx.kept(node.inputs[1], 1)
        if rows is not None:
            ctx.set_attr(node, ir.AttrInt64("N", len(rows)))
        if blocks is None:
            return
        k, block, bits = attr_int(node, "K", 0), attr_int(node, "block_size", 0), attr_int(node, "bits", 4)
        ctx.set_attr(node, ir.AttrInt64("K", int(sum(min(block, k - b * block) for b in blocks))))
        zero = const_of(input_at(node, 3))
        if zero is not None:  # packed: several blocks share a byte, so repack the kept ones (and kept rows)
            count = ctx.shape(node.inputs[1])[1]
            kept = unpack(zero, bits, count)[:, blocks]
            ctx.set_input_const(node, 3, pack(kept if rows is None else kept[rows], bits))

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None]:
        shape = node.inputs[0].shape
        return [None if shape is None else ir.Shape([*shape.dims[:-1], attr_int(node, "N", 0)])]
