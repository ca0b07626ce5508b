"""Elementwise ops: unary activations map every axis to itself; n-ary ops couple broadcast-aligned axes."""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, present, register


@register(
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu",
    "Erf", "Softplus", "Softsign", "Mish", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Sin", "Cos",
    "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Identity", "Cast",
    "Clip", "Dropout",
)
class Unary(OpRule):
    """Output i has the shape of input 0 (Clip's bounds and Dropout's ratio are scalars; its mask matches)."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        if not port.output and port.index != 0:
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} input {port.index} is not the data input")
            return
        source = Dim(node.inputs[0], axis)
        for _, out in present(node.outputs):
            ctx.link(source, Dim(out, axis))


def couple_broadcast(ctx: CoupleContext, node: ir.Node, port: Port, axis: int,
                     inputs: list[tuple[int, ir.Value]]) -> None:
    """Link an axis across `inputs` and output 0 under numpy broadcasting (size-1 operands are not coupled)."""
    out = node.outputs[0]
    out_shape = ctx.shape(out)
    touched = port.value(node)
    if out_shape is None:
        ctx.freeze(Dim(touched, axis), f"{node.op_type} output shape unknown")
        return
    rank = len(out_shape)
    out_axis = axis if port.output else axis + rank - len(ctx.shape(touched) or [])
    out_dim = Dim(out, out_axis)
    for _, value in inputs:
        shape = ctx.shape(value)
        if shape is None:
            ctx.freeze(out_dim, f"{node.op_type} operand {value.name} has unknown shape")
            continue
        in_axis = out_axis - (rank - len(shape))
        if in_axis < 0 or (shape[in_axis] == 1 and out_shape[out_axis] != 1):
            continue
        ctx.link(out_dim, Dim(value, in_axis))


@register(
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
)
class Broadcast(OpRule):
    """N-ary elementwise op with multidirectional broadcasting: residual adds couple channels here."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        couple_broadcast(ctx, node, port, axis, present(node.inputs))
