"""Resize/Upsample and Pad: the channel axis passes through when it is not scaled; padded with constants, its
positions move by the padding before them."""

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
    """Padding an axis: a constant-mode Pad appends constants before and after the input's positions, so input
    position i is output position begin + i and the padded positions are constants of their own — exact to
    prune both (TFLite grows residual channels this way: zeros padded on, then an Add with a wider tensor).
    Other modes copy input values into the padding: the padded axis freezes. `pads` is [begin_0.., end_0..]."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        if not port.output and port.index != 0:
            ctx.freeze(Dim(port.value(node), axis), f"Pad input {port.index} carries no channels")
            return
        padded = self._padding(ctx, node, axis)
        if padded == (0, 0):
            ctx.link(Dim(node.inputs[0], axis), Dim(node.outputs[0], axis))
        elif padded is None:
            ctx.freeze(Dim(port.value(node), axis), "Pad pads (or may pad) this axis")
        elif min(padded) < 0:
            ctx.freeze(Dim(port.value(node), axis), "Pad crops this axis (negative pads)")
        elif _mode(node) != "constant":
            ctx.freeze(Dim(port.value(node), axis), f"Pad in {_mode(node)} mode copies values into the padding")
        else:
            size = (ctx.shape(node.inputs[0]) or [None] * (axis + 1))[axis]
            if not isinstance(size, int):
                ctx.freeze(Dim(port.value(node), axis), "Pad pads an axis of unknown size")
                return
            ctx.link_pairs(Dim(node.inputs[0], axis), np.arange(size), Dim(node.outputs[0], axis),
                           padded[0] + np.arange(size))

    @staticmethod
    def _padding(ctx, node: ir.Node, axis: int) -> tuple[int, int] | None:
        """(begin, end) padding of `axis`; None when the pads are not known constants."""
        pads, axes = int_list(ctx, node, "pads", 1), _padded_axes(ctx, node)
        if pads is None or axes is None:
            return None
        if axis not in axes:
            return 0, 0
        at = axes.index(axis)
        return pads[at], pads[len(axes) + at]

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        """Padding shrinks by the padded positions removed (kept input positions move up with them)."""
        pads, axes = int_list(ctx, node, "pads", 1), _padded_axes(ctx, node)
        if pads is None or axes is None:
            return
        changed = False
        for at, axis in enumerate(axes):
            kept, begin = ctx.kept(node.outputs[0], axis), pads[at]
            if kept is None or (begin, pads[len(axes) + at]) == (0, 0):
                continue
            size = ctx.shape(node.inputs[0])[axis]
            pads[at], pads[len(axes) + at] = int(np.sum(kept < begin)), int(np.sum(kept >= begin + size))
            changed = True
        if not changed:
            return
        if "pads" in node.attributes:
            ctx.set_attr(node, ir.AttrInt64s("pads", pads))
        else:
            ctx.set_input_const(node, 1, np.array(pads, dtype=np.int64))


def _padded_axes(ctx, node: ir.Node) -> list[int] | None:
    """The axes `pads` lists (its `axes` input, else every axis), non-negative; None when not known."""
    shape = ctx.shape(node.inputs[0])
    given = node.inputs[3] if len(node.inputs) > 3 else None
    axes = int_list(ctx, node, "axes", 3) if given is not None else list(range(len(shape or [])))
    if shape is None or axes is None:
        return None
    return [a + len(shape) if a < 0 else a for a in axes]


def _mode(node: ir.Node) -> str:
    attr = node.attributes.get("mode")
    return attr.as_string() if attr is not None else "constant"
