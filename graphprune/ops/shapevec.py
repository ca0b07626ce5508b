"""Shape vectors (Reshape targets, Expand shapes): read their entries and rewrite the ones that carry channel
counts, whether the vector is a constant or a Concat of runtime pieces (batch, sequence) and constants."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, RewriteContext, attr_int

Piece = tuple[ir.Value, np.ndarray | None, int]


def copied_shape(ctx: CoupleContext | RewriteContext, vector: ir.Value | None) -> ir.Value | None:
    """`src` when `vector` is the whole `Shape(src)` (zeros_like written as Expand/ConstantOfShape), else None."""
    producer = vector.producer() if vector is not None else None
    if producer is None or producer.op_type != "Shape":
        return None
    rank = len(ctx.shape(producer.inputs[0]) or [])
    start, end = attr_int(producer, "start", 0), attr_int(producer, "end", rank)
    return producer.inputs[0] if rank and start in (0, -rank) and end >= rank else None


def _pieces(ctx: CoupleContext | RewriteContext, value: ir.Value) -> list[Piece] | None:
    """(piece, constant or None, length) for a constant vector (one piece) or a Concat of 1-D pieces."""
    array = ctx.const(value)
    if array is not None:
        return [(value, np.atleast_1d(array).astype(np.int64), int(np.atleast_1d(array).size))]
    producer = value.producer()
    if producer is None or producer.op_type != "Concat" or attr_int(producer, "axis", 0) != 0:
        return None
    pieces = []
    for piece in producer.inputs:
        shape = ctx.shape(piece)
        if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
            return None
        array = ctx.const(piece)
        pieces.append((piece, None if array is None else np.atleast_1d(array).astype(np.int64), shape[0]))
    return pieces


def settable_entries(ctx: CoupleContext | RewriteContext, value: ir.Value) -> list[bool] | None:
    """Per entry, whether the rewrite can give it a new value: it lies in a constant piece, or is a runtime
    piece of its own (a size the exporter read with Shape; channel axes are static, so a constant replaces it)."""
    pieces = _pieces(ctx, value)
    if pieces is None:
        return None
    return [array is not None or length == 1 for _, array, length in pieces for _ in range(length)]


def shape_entries(ctx: CoupleContext | RewriteContext, value: ir.Value) -> list[int | None] | None:
    """Each entry of the vector: its constant value, or None where it is computed at run time."""
    pieces = _pieces(ctx, value)
    if pieces is None:
        return None
    entries: list[int | None] = []
    for _, array, length in pieces:
        entries.extend(array.tolist() if array is not None else [None] * length)
    return entries


def rewrite_shape_vector(ctx: RewriteContext, node: ir.Node, index: int, updates: dict[int, int],
                         scales: dict[int, tuple[int, int]] | None = None) -> None:
    """Set entries `updates` (position → value) of the shape vector at input `index` of `node`, and multiply
    runtime entries `scales` (position → (numerator, denominator)) exactly. A Concat is cloned for this node
    alone (other nodes may share it); updated positions must be settable_entries."""
    scales = scales or {}
    pieces = _pieces(ctx, node.inputs[index])
    new_pieces, offset, changed = [], 0, False
    for piece, array, length in pieces:
        touched = {p - offset: v for p, v in updates.items() if offset <= p < offset + length}
        if touched:
            new = array.copy() if array is not None else np.zeros(1, dtype=np.int64)
            for position, value in touched.items():
                new[position] = value
            if array is None or not np.array_equal(new, array):
                changed = True
                piece = ctx.new_const(new)
        elif array is None and offset in scales:
            changed = True
            piece = scaled(ctx, node, piece, *scales[offset])
        new_pieces.append(piece)
        offset += length
    if not changed:
        return
    if len(pieces) == 1:
        node.replace_input_with(index, new_pieces[0])
    else:
        node.replace_input_with(index, ctx.add_node("Concat", new_pieces, {"axis": 0}, before=node))


def scaled(ctx: RewriteContext, node: ir.Node, sizes: ir.Value, numerator: int | np.ndarray,
           denominator: int | np.ndarray) -> ir.Value:
    """sizes * numerator / denominator (per entry), computed before `node` at run time in integers (exact: the
    sizes are multiples of the denominator)."""
    product = ctx.add_node("Mul", [sizes, ctx.new_const(np.atleast_1d(numerator).astype(np.int64))], {}, before=node)
    return ctx.add_node("Div", [product, ctx.new_const(np.atleast_1d(denominator).astype(np.int64))], {}, before=node)


def rewrite_entries_for(ctx: RewriteContext, node: ir.Node, index: int, output: ir.Value, keep: set[int]) -> None:
    """Write the surviving channel counts of `output`'s pruned axes into the shape vector at input `index`,
    leaving entries whose value in `keep` makes the op infer the size (Reshape's -1, Expand's 1). A periodic
    axis (batch·heads) keeps its run-time entry, scaled by kept / period."""
    entries = shape_entries(ctx, node.inputs[index])
    updates, scales = {}, {}
    for axis, entry in enumerate(entries):
        kept = ctx.kept(output, axis)
        if kept is None or entry in keep:
            continue
        period = ctx.period(output, axis)
        if period is None:
            updates[axis] = len(kept)
        elif entry is None:
            scales[axis] = (len(kept), period)
    rewrite_shape_vector(ctx, node, index, updates, scales)
