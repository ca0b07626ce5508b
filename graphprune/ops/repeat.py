"""Tile repeats a tensor along its axes: a repeated channel axis carries the same channels in every copy.

Repeated a constant number of times, copy r of channel c sits at position r·C + c; repeated a run-time number
of times (DeBERTa tiles its relative-position keys over the batch: [heads, ..] -> [batch*heads, ..]), the output
axis is periodic, like a merged batch·heads axis. The repeat counts never change: copies stay copies.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, register


@register("Tile")
class Tile(OpRule):
    """Output axis a is input axis a repeated; a size-1 axis repeated is a broadcast and carries no channels."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, y = node.inputs[0], node.outputs[0]
        dim = Dim(port.value(node), axis)
        if not port.output and port.index != 0:
            ctx.freeze(dim, "Tile repeat counts carry no channels")
            return
        xs, ys = ctx.shape(x), ctx.shape(y)
        if xs is None or ys is None or len(xs) != len(ys):
            ctx.freeze(dim, "Tile of unknown rank")
            return
        size, out = xs[axis], ys[axis]
        if size == out:
            ctx.link(Dim(x, axis), Dim(y, axis))
        elif not isinstance(size, int) or size == 1:
            ctx.freeze(dim, f"Tile repeats an axis of size {size} (a broadcast, or copies of a batch axis)")
        elif isinstance(out, int):
            positions = np.arange(out)
            ctx.link_pairs(Dim(x, axis), positions % size, Dim(y, axis), positions)
        elif ctx.periodic(Dim(y, axis), size):
            ctx.link_pairs(Dim(x, axis), np.arange(size), Dim(y, axis), np.arange(size))
        else:
            ctx.freeze(dim, "Tile repeats channels onto an axis coupled otherwise")
