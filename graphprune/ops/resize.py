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
        pads = int_list(ctx, node, "pads", 1)
        shape = ctx.shape(node.inputs[0])
        if pads is None or shape is None:
            return None
        axes = int_list(ctx, node, "axes", 3) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if len(node.inputs) > 3 and node.inputs[3] is not None and axes is None:
            return None
        axes = [a + len(shape) if a < 0 else a for a in (axes if axes is not None else range(len(shape)))]
        if axis not in axes:
            return 0, 0
        n, at = len(axes), axes.index(axis)
        return pads[at], pads[n + at]

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        """Padding shrinks by the padded positions removed (kept input positions move up with them)."""
        for axis in range(len(ctx.shape(node.outputs[0]) or [])):
            kept = ctx.kept(node.outputs[0], axis)
            padded = self._padding(ctx, node, axis)
            if kept is None or padded is None or padded == (0, 0):
                continue
            size = ctx.shape(node.inputs[0])[axis]
            begin, end = int(np.sum(kept < padded[0])), int(np.sum(kept >= padded[0] + size))
            pads = list(int_list(ctx, node, "pads", 1))
            axes = int_list(ctx, node, "axes", 3) if len(node.inputs) > 3 and node.inputs[3] is not None else None
            rank = len(ctx.shape(node.inputs[0]))
            axes = [a + rank if a < 0 else a for a in (axes if axes is not None else range(rank))]
            at = axes.index(axis)
            pads[at], pads[len(axes) + at] = begin, end
            if "pads" in node.attributes:
                ctx.set_attr(node, ir.AttrInt64s("pads", pads))
            else:
                ctx.set_input_const(node, 1, np.array(pads, dtype=np.int64))


def _mode(node: ir.Node) -> str:
    attr = node.attributes.get("mode")
    return attr.as_string() if attr is not None else "constant"
