"""Conv and ConvTranspose: input channels are consumed by the weight, output channels produced by it.

Grouped convolutions (including depthwise) couple channels group by group: one prunable unit is a whole
convolution group, its input channels, output channels, weight rows and bias entries; `group` is rewritten.
Quantized twins (QLinearConv, ConvInteger) read the same roles from other input slots, and their per-output-
channel weight scales and zero points go with the output channels.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ir.values import const_of
from graphprune.ops.encodings import Affine, Encoding
from graphprune.ops.registry import (
    CoupleContext,
    Dim,
    OpRule,
    Port,
    RewriteContext,
    attr_int,
    input_at,
    per_channel,
    register,
)


class _ConvLike(OpRule):
    """Shared logic; subclasses say which weight axis carries input and output channels, and where the data,
    weight and bias inputs are (quantized twins: also the weight's scale and zero point)."""

    weight_in_axis: int
    weight_out_axis: int
    data, weight, bias = 0, 1, 2
    weight_params: tuple[int, ...] = ()  # per-output-channel weight scale / zero point
    activation_params: tuple[int, ...] = ()  # per-tensor scales and zero points of the activations

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        return [Dim(node.inputs[self.weight], self.weight_out_axis if attr_int(node, "group", 1) == 1 else 0)]

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, w = node.inputs[self.data], node.inputs[self.weight]
        bias = input_at(node, self.bias)
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
                for param in [bias, *per_channel(ctx, node, self.weight_params)]:
                    if param is not None:
                        ctx.link(Dim(y, 1), Dim(param, 0))
            return
        self._couple_groups(ctx, node, groups, x, w, bias, y)

    def _side(self, port: Port, axis: int) -> str | None:
        if port.output:
            return "out" if axis == 1 else None
        if port.index == self.data:
            return "in" if axis == 1 else None
        if port.index == self.weight:
            return {self.weight_in_axis: "in", self.weight_out_axis: "out"}.get(axis)
        return "out" if axis == 0 else None

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        return self.weight_params + self.activation_params

    def _couple_groups(self, ctx: CoupleContext, node: ir.Node, groups: int, x, w, bias, y) -> None:
        x_shape, y_shape = ctx.shape(x), ctx.shape(y)
        c_in = x_shape[1] if x_shape else None
        c_out = y_shape[1] if y_shape else None
        if not isinstance(c_in, int) or not isinstance(c_out, int):
            for dim in (Dim(x, 1), Dim(y, 1)):  # both sides: the input's channels may be reached from its producer
                ctx.freeze(dim, f"grouped {node.op_type} with unknown channel counts")
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
        for param in [bias, *per_channel(ctx, node, self.weight_params)]:
            if param is not None:
                ctx.link(anchor, Dim(param, 0))

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        groups = attr_int(node, "group", 1)
        kept = ctx.kept(node.inputs[self.data], 1)
        if groups == 1 or kept is None:
            return
        per_group = ctx.shape(node.inputs[self.data])[1] // groups
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


@register("QLinearConv")
class QLinearConv(Conv):
    """x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B (int32, scale x_s·w_s)."""

    data, weight, bias = 0, 3, 8
    weight_params = (4, 5)
    activation_params = (1, 2, 6, 7)

    def encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        value = input_at(node, input_index)
        x_scale, w_scale, w_zero = (const_of(input_at(node, i)) for i in (1, 4, 5))
        if value is None or value.const_value is None or x_scale is None or w_scale is None:
            return None
        shape = tuple(value.const_value.shape)
        if input_index == self.weight:
            return Affine.along(w_scale, w_zero, shape, 0)
        if input_index == self.bias:
            return Affine.along(x_scale * w_scale, None, shape, 0)
        return None

    def activation_encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        if input_index != self.data or const_of(node.inputs[1]) is None:
            return None
        return Affine(const_of(node.inputs[1]).reshape(()), const_of(node.inputs[2]).reshape(()))


@register("ConvInteger")
class ConvInteger(Conv):
    """x, w, x_zero_point, w_zero_point → int32: the scales are applied by the nodes after it."""

    bias = -1
    weight_params = (3,)
    activation_params = (2,)

    def encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        weight = node.inputs[self.weight]
        if input_index != self.weight or weight.const_value is None:
            return None
        return Affine.along(None, const_of(input_at(node, 3)), tuple(weight.const_value.shape), 0)
