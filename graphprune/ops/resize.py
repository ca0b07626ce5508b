"""Resize/Upsample and Pad: the channel axis passes through when it is neither scaled nor padded."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, RewriteContext, int_list, register
from graphprune.ops.shapevec import rewrite_shape_vector


def _pass_through(ctx: CoupleContext, node: ir.Node, port: Port, axis: int, untouched: bool, what: str) -> None:
    dim = Dim(port.value(node), axis)
    if not port.output and port.index != 0:
        ctx.freeze(dim, f"{node.op_type} input {port.index} carries no channels")
    elif not untouched:
        ctx.freeze(dim, f"{node.op_type} {what} this axis")
    else:
        ctx.link(Dim(node.inputs[0], axis), Dim(node.outputs[0], axis))


@register("Resize", "Upsample")
class Resize(OpRule):
    """Scales must be 1 on the axis; explicit `sizes` are rewritten with the new channel count."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        scales_at = 1 if node.op_type == "Upsample" else 2
        scales = self._const_at(ctx, node, scales_at)
        sizes = self._const_at(ctx, node, 3) if node.op_type == "Resize" else None
        x_shape, y_shape = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
        if scales is not None and len(scales) > axis:
            untouched = float(scales[axis]) == 1.0
        elif sizes is not None and len(sizes) > axis and x_shape is not None:
            untouched = int(sizes[axis]) == x_shape[axis]
        else:
            untouched = x_shape is not None and y_shape is not None and x_shape[axis] == y_shape[axis] \
                and isinstance(x_shape[axis], int) and "axes" not in node.attributes
        _pass_through(ctx, node, port, axis, untouched, "rescales")

    @staticmethod
    def _const_at(ctx, node: ir.Node, index: int) -> np.ndarray | None:
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        array = ctx.const(node.inputs[index])
        return None if array is None or array.size == 0 else array

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        if node.op_type == "Resize" and self._const_at(ctx, node, 3) is not None:
            kept = {a: ctx.kept(node.outputs[0], a) for a in range(len(self._const_at(ctx, node, 3)))}
            rewrite_shape_vector(ctx, node, 3, {a: len(k) for a, k in kept.items() if k is not None})


@register("Pad")
class Pad(OpRule):
    """Zero padding on the channel axis only; `pads` is [begin_0.., end_0..]."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        pads = int_list(ctx, node, "pads", 1)
        shape = ctx.shape(node.inputs[0])
        axes = int_list(ctx, node, "axes", 3) if len(node.inputs) > 3 else None
        untouched = False
        if pads is not None and shape is not None:
            axes = axes if axes is not None else list(range(len(shape)))
            axes = [a + len(shape) if a < 0 else a for a in axes]
            n = len(axes)
            untouched = axis not in axes or (pads[axes.index(axis)] == 0 and pads[n + axes.index(axis)] == 0)
        _pass_through(ctx, node, port, axis, untouched, "pads (or may pad)")


