"""Conv and ConvTranspose: input channels are consumed by the weight, output channels produced by it.

Grouped convolutions (including depthwise) couple channels group by group: one prunable unit is a whole
convolution group, its input channels, output channels, weight rows and bias entries; `group` is rewritten.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, RewriteContext, attr_int, register


class _ConvLike(OpRule):
    """Shared logic; subclasses say which weight axis carries input and output channels."""

    weight_in_axis: int
    weight_out_axis: int

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        return [Dim(node.inputs[1], self.weight_out_axis if attr_int(node, "group", 1) == 1 else 0)]

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        y = node.outputs[0]
        groups = attr_int(node, "group", 1)
        side = self._side(port, axis)
        if side is None:
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} axis {axis} of port {port} is not a channel axis")
            return
        if groups == 1:
            if side == "in":
                ctx.link(Dim(x, 1), Dim(w, self.weight_in_axis))
                ctx.consumer(Dim(w, self.weight_in_axis), Dim(x, 1), node)
            else:
                ctx.link(Dim(y, 1), Dim(w, self.weight_out_axis))
                if bias is not None:
                    ctx.link(Dim(y, 1), Dim(bias, 0))
            return
        self._couple_groups(ctx, node, groups, x, w, bias, y)

    def _side(self, port: Port, axis: int) -> str | None:
        if port.output:
            return "out" if axis == 1 else None
        if port.index == 0:
            return "in" if axis == 1 else None
        if port.index == 1:
            return {self.weight_in_axis: "in", self.weight_out_axis: "out"}.get(axis)
        return "out" if axis == 0 else None

    def _couple_groups(self, ctx: CoupleContext, node: ir.Node, groups: int, x, w, bias, y) -> None:
        x_shape, y_shape = ctx.shape(x), ctx.shape(y)
        c_in = x_shape[1] if x_shape else None
        c_out = y_shape[1] if y_shape else None
        if not isinstance(c_in, int) or not isinstance(c_out, int):
            ctx.freeze(Dim(y, 1), f"grouped {node.op_type} with unknown channel counts")
            return
        unit_in = np.repeat(np.arange(groups), c_in // groups)
        unit_out = np.repeat(np.arange(groups), c_out // groups)
        # each group's first output channel stands for the group; everything else is linked to it
        anchor = Dim(y, 1)
        heads = np.arange(groups) * (c_out // groups)
        ctx.link_pairs(anchor, heads[unit_out], anchor, np.arange(c_out))
        ctx.link_pairs(anchor, heads[unit_in], Dim(x, 1), np.arange(c_in))
        w_group_axis = 0
        w_len = c_out if self.weight_out_axis == 0 else c_in
        unit_w = unit_out if self.weight_out_axis == 0 else unit_in
        ctx.link_pairs(anchor, heads[unit_w], Dim(w, w_group_axis), np.arange(w_len))
        if bias is not None:
            ctx.link(anchor, Dim(bias, 0))

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        groups = attr_int(node, "group", 1)
        kept = ctx.kept(node.inputs[0], 1)
        if groups == 1 or kept is None:
            return
        per_group = ctx.shape(node.inputs[0])[1] // groups
        ctx.set_attr(node, ir.AttrInt64("group", len(kept) // per_group))


@register("Conv")
class Conv(_ConvLike):
    """W: [C_out, C_in / group, k...]."""

    weight_in_axis = 1
    weight_out_axis = 0


@register("ConvTranspose")
class ConvTranspose(_ConvLike):
    """W: [C_in, C_out / group, k...]."""

    weight_in_axis = 0
    weight_out_axis = 1
