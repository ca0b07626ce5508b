"""Elementwise ops: unary activations map every axis to itself; n-ary ops couple broadcast-aligned axes."""

from __future__ import annotations

import numpy as np
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

    def couple_ids(self, ctx: CoupleContext, node: ir.Node, input_index: int, dim: Dim) -> None:
        if node.op_type in ("Cast", "Identity"):  # values unchanged
            for _, out in present(node.outputs):
                ctx.expert_ids(out, dim)
        else:
            super().couple_ids(ctx, node, input_index, dim)


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
        inputs = present(node.inputs)
        if node.op_type == "Equal" and ctx.expert(Dim(port.value(node), axis)):
            inputs = [(i, v) for i, v in inputs if ctx.const(v) is None]  # the arange table is renumbered per node
        couple_broadcast(ctx, node, port, axis, inputs)

    def couple_ids(self, ctx: CoupleContext, node: ir.Node, input_index: int, dim: Dim) -> None:
        """`ids == e` selects expert e's branch; `ids[..., None] == arange(E)` is a one-hot table over experts."""
        other = node.inputs[1 - input_index] if node.op_type == "Equal" else None
        table = ctx.const(other)
        if table is None:
            super().couple_ids(ctx, node, input_index, dim)
        elif table.size == 1:
            ctx.selector(dim, int(table.reshape(())), node, 1 - input_index)
        else:
            _one_hot_table(ctx, node, other, table, dim)


def _one_hot_table(ctx: CoupleContext, node: ir.Node, table_value: ir.Value, table: np.ndarray, dim: Dim) -> None:
    """A constant arange(E) along one axis compared with broadcast expert indices: that axis of the output is an
    expert axis; the table (maybe shared by other layers) is replaced for this node by the rewrite."""
    out_shape = ctx.shape(node.outputs[0])
    long_axes = [a for a, n in enumerate(table.shape) if n != 1]
    size = ctx.shape(dim.value)[dim.axis]
    if out_shape is None or len(long_axes) != 1 or not np.array_equal(table.reshape(-1), np.arange(size)):
        ctx.freeze(dim, "expert indices compared with a constant that is not arange(experts)")
        return
    out = Dim(node.outputs[0], long_axes[0] + len(out_shape) - table.ndim)
    ctx.link(dim, out)
    ctx.id_table(out, node, list(node.inputs).index(table_value))
