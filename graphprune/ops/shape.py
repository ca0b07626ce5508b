"""Shape and ConstantOfShape: reading a tensor's sizes is safe only where the channel entry is never used, and a
fill of a whole shape (zeros_like) carries the source's axes.

A merged batch·heads axis is read too (DeBERTa's `query.size(0) // num_heads`): where the read size only feeds
shape arithmetic that ends in Reshape, Expand or Tile shape inputs, the rewrite seals it — the reader gets the
original size back (× period / kept) — so the arithmetic computes what it did, and the Reshape and Expand
rules scale the entries that land on the periodic axis to the new size."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, RewriteContext, register
from graphprune.ops.shapevec import copied_shape, scaled


@register("Shape")
class Shape(OpRule):
    """The channel count changes after pruning: safe only if every reader of the shape vector extracts other
    entries (Gather or Slice with constant indices), as exporters do to read batch and sequence lengths."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        shape = ctx.shape(node.inputs[0])
        dim = Dim(port.value(node), axis)
        if shape is None or port.output:
            ctx.freeze(dim, "Shape output or unknown rank")
            return
        rank = len(shape)
        start, end = _range(node, rank)
        if not start <= axis < end:
            return
        position, length = axis - start, end - start
        sealable = ctx.is_periodic(dim)
        if not all(_excludes(ctx, use.node, position, length) or (length == rank and _fills(ctx, use))
                   or (sealable and _sealable(ctx, use.node)) for use in node.outputs[0].uses()):
            ctx.freeze(dim, "its size is read by a Shape op (shape-computing subgraph)")

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        x, vector = node.inputs[0], node.outputs[0]
        start, end = _range(node, len(ctx.shape(x)))
        numerator, denominator = np.ones(end - start, np.int64), np.ones(end - start, np.int64)
        for axis in range(start, end):
            period = ctx.period(x, axis)
            if period is not None:
                numerator[axis - start], denominator[axis - start] = period, len(ctx.kept(x, axis))
        if np.array_equal(numerator, denominator):
            return
        for use in list(vector.uses()):
            if use.node.op_type == "Gather" and not all(_excludes(ctx, use.node, p, end - start)
                                                        for p in np.flatnonzero(numerator != denominator)):
                use.node.replace_input_with(use.idx, scaled(ctx, use.node, vector, numerator, denominator))


def _range(node: ir.Node, rank: int) -> tuple[int, int]:
    """The [start, end) of the axes a Shape node reads."""
    start = node.attributes["start"].as_int() if "start" in node.attributes else 0
    end = node.attributes["end"].as_int() if "end" in node.attributes else rank
    return tuple(max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))


_SIZE_ARITHMETIC = ("Cast", "Identity", "Squeeze", "Unsqueeze", "Concat", "Mul", "Div", "Add", "Sub")
_SIZE_SINKS = (("Reshape", 1), ("Expand", 1), ("Tile", 1))


def _sealable(ctx: CoupleContext, reader: ir.Node) -> bool:
    """A Gather at constant indices whose result only flows through integer size arithmetic into shape inputs
    of Reshape, Expand or Tile (which then see the original sizes, see the module docstring)."""
    if reader.op_type != "Gather" or ctx.const(reader.inputs[1]) is None:
        return False
    todo, seen = [reader.outputs[0]], set()
    while todo:
        value = todo.pop()
        if value.is_graph_output():
            return False
        for use in value.uses():
            op = use.node.op_type
            if (op, use.idx) in _SIZE_SINKS:
                continue
            if op not in _SIZE_ARITHMETIC and not (op in ("Reshape", "Gather") and use.idx == 0):
                return False
            for out in use.node.outputs:
                if id(out) not in seen:
                    seen.add(id(out))
                    todo.append(out)
    return True


def _fills(ctx: CoupleContext, use) -> bool:  # use: an onnx_ir Usage (node, idx)
    """A fill of the whole shape (ConstantOfShape, Expand of a single value): its own rule couples its axes to
    the source's."""
    if (use.node.op_type, use.idx) == ("Expand", 1):
        fill = ctx.shape(use.node.inputs[0])
        return fill is not None and all(n == 1 for n in fill)
    return (use.node.op_type, use.idx) == ("ConstantOfShape", 0)


@register("ConstantOfShape")
class ConstantOfShape(OpRule):
    """A fill of the shape of `src` read whole by Shape (zeros_like): output axes are src's axes."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        src = copied_shape(ctx, node.inputs[0])
        if src is None or not port.output:
            ctx.freeze(Dim(port.value(node), axis), "ConstantOfShape of a shape that is not a tensor's whole shape")
            return
        ctx.link(Dim(src, axis), Dim(node.outputs[0], axis))


def _excludes(ctx: CoupleContext, reader: ir.Node, position: int, length: int) -> bool:
    """Whether `reader` of a shape vector provably ignores entry `position`."""
    if reader.op_type == "Gather" and len(reader.inputs) > 1:
        indices = ctx.const(reader.inputs[1])
        return indices is not None and position not in {int(i) % length for i in np.atleast_1d(indices)}
    if reader.op_type == "Slice":
        bounds = [ctx.const(v) if v is not None else None for v in list(reader.inputs[1:]) + [None] * 4][:4]
        starts, ends, axes, steps = bounds
        if starts is None or ends is None or (axes is not None and list(np.atleast_1d(axes)) not in ([0], [-1])):
            return False
        if steps is not None and int(np.atleast_1d(steps)[0]) != 1:
            return False
        lo, hi = (max(0, min(length, int(v) + length if int(v) < 0 else int(v)))
                  for v in (np.atleast_1d(starts)[0], np.atleast_1d(ends)[0]))
        return not lo <= position < hi
    return False
