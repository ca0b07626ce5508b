"""Layout ops: Transpose permutes axes; Reshape, Flatten, Squeeze and Unsqueeze regroup them.

Regrouping is modelled by aligning input and output axes into blocks of equal prefix product (row-major).
An axis alone in its block maps 1:1; an axis merged with others into one output axis maps each of its
channels to the strided set of output positions it occupies (Flatten into a Linear). An axis split over
several output axes maps blocks of consecutive channels to the outermost factor: heads in a head split,
groups in a channel shuffle; the inner factor (head_dim) is never pruned through the split.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphprune.ops.registry import (
    CoupleContext,
    Dim,
    OpRule,
    Port,
    RewriteContext,
    attr_ints,
    int_list,
    normalize_axis,
    register,
)
from graphprune.ops.shapevec import copied_shape, rewrite_entries_for, settable_entries

Block = tuple[list[int], list[int]]


def align_blocks(src: list, dst: list) -> list[Block] | None:
    """Pair axes of `src` and `dst` into row-major blocks of equal size; None when unprovable."""
    blocks: list[Block] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1:
            blocks.append(([i], []))
            i += 1
        elif j < len(dst) and dst[j] == 1:
            blocks.append(([], [j]))
            j += 1
        elif i >= len(src) or j >= len(dst) or src[i] is None or dst[j] is None:
            return None
        elif src[i] == dst[j]:
            blocks.append(([i], [j]))
            i, j = i + 1, j + 1
        else:
            block = _grow_block(src, dst, i, j)
            if block is None:
                return None
            blocks.append(block)
            i, j = block[0][-1] + 1, block[1][-1] + 1
    return blocks


Product = tuple[int, tuple[str, ...]]  # a size as a constant times a sorted multiset of symbolic dims


def size_product(dim: int | str | None) -> Product | None:
    """A static size, a symbol, or a product of them as shape inference writes it ("seq*batch")."""
    if isinstance(dim, int):
        return dim, ()
    if not isinstance(dim, str) or not re.fullmatch(r"[A-Za-z_0-9]+(\*[A-Za-z_0-9]+)*", dim):
        return None
    factors = dim.split("*")
    constant = int(np.prod([int(f) for f in factors if f.isdigit()]))
    return constant, tuple(sorted(f for f in factors if not f.isdigit()))


def _times(a: Product, b: Product) -> Product:
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def _smaller(a: Product, b: Product) -> bool | None:
    """Whether a block of size `a` must grow to reach `b` (True), `b` must grow (False), or neither provably."""
    rest = list(b[1])
    for symbol in a[1]:
        if symbol not in rest:
            break
        rest.remove(symbol)
    else:
        if rest or a[0] < b[0]:
            return True
    rest = list(a[1])
    for symbol in b[1]:
        if symbol not in rest:
            return None
        rest.remove(symbol)
    return True if not rest and a[0] < b[0] else (False if rest or b[0] < a[0] else None)


def _grow_block(src: list, dst: list, i: int, j: int) -> Block | None:
    """Extend a block from src[i], dst[j] until both sides have the same product (static sizes compared by
    value, symbolic ones as multisets of symbols)."""
    left, right = [i], [j]
    p, q = size_product(src[i]), size_product(dst[j])
    while p is not None and q is not None and p != q:
        grow_left = _smaller(p, q)
        if grow_left is None:
            return None
        if grow_left:
            i += 1
            factor = size_product(src[i]) if i < len(src) else None
            left.append(i)
            p = None if factor is None else _times(p, factor)
        else:
            j += 1
            factor = size_product(dst[j]) if j < len(dst) else None
            right.append(j)
            q = None if factor is None else _times(q, factor)
    return (left, right) if p is not None and q is not None else None


def couple_regroup(ctx: CoupleContext, node: ir.Node, port: Port, axis: int,
                   settable: Callable[[int], bool] = lambda out_axis: True) -> None:
    """Couple input 0 and output 0 of a node that only regroups axes (row-major order unchanged).
    `settable(o)` says whether output axis o's size can be rewritten (a Reshape target entry)."""
    x, y = node.inputs[0], node.outputs[0]
    dim = Dim(port.value(node), axis)
    if not port.output and port.index != 0:
        ctx.freeze(dim, f"{node.op_type} shape input carries no channels")
        return
    src, dst = ctx.shape(x), ctx.shape(y)
    blocks = None if src is None or dst is None else align_blocks(src, dst)
    if blocks is None:
        ctx.freeze(dim, f"{node.op_type}: cannot prove how axes regroup ({src} -> {dst})")
        return
    left, right = next(b for b in blocks if axis in b[1 if port.output else 0])
    if not left or not right:
        return  # a size-1 axis appearing or vanishing: its single unit is never removable
    carrier = right[_outer_symbols(dst, right)] if len(right) > 1 else right[0]
    if not settable(carrier):
        ctx.freeze(dim, f"{node.op_type} target size of output axis {carrier} is computed at run time")
    elif len(left) == 1 and len(right) == 1:
        ctx.link(Dim(x, left[0]), Dim(y, right[0]))
    elif len(right) == 1:
        _couple_merge(ctx, node, x, y, left, right[0], axis if not port.output else None, src)
    elif len(left) == 1 and (not port.output or axis == carrier or _inner_carrier(ctx, x, left[0], right, dst) == axis):
        _couple_split(ctx, x, y, left[0], right, dst)
    elif len(left) == 1 and not ctx.has_dim(Dim(x, left[0])) and ctx.defer(node, port, axis):
        return  # the input's units may yet show that this inner factor carries them
    elif len(left) == 1:
        ctx.freeze(dim, f"{node.op_type} splits an axis and this is an inner factor (e.g. head_dim)")
    else:
        ctx.freeze(dim, f"{node.op_type} regroups several axes into several axes")


def _couple_merge(ctx: CoupleContext, node: ir.Node, x: ir.Value, y: ir.Value, left: list[int], out_axis: int,
                  in_axis: int | None, src: list) -> None:
    """Input axes `left` merge into output axis `out_axis`; link the one that carries channels. Under
    query-slot GQA units, a merged axis that an Expand broadcast (repeat_kv's n_rep) is the carrier."""
    slots = [a for a in left if a in _broadcast_axes(ctx, x)] if ctx.option("gqa_units") == "query-slot" else []
    if slots:
        if in_axis is not None and in_axis != slots[0]:
            ctx.freeze(Dim(x, in_axis), "KV heads stay whole under query-slot GQA units")
            return
        in_axis = slots[0]
        ctx.tag(Dim(x, in_axis), "query-slot")
    if in_axis is not None and not slots:
        outer = [a for a in left[:left.index(in_axis)] if src[a] != 1]
        if any(ctx.has_dim(Dim(x, a)) for a in outer):
            ctx.freeze(Dim(x, in_axis), _merged_under(node))
            return
        if outer and ctx.defer(node, Port(False, 0), in_axis):
            return  # an inner axis yields to an outer one that propagation may still reach
    if in_axis is None:
        carriers = [a for a in left if ctx.has_dim(Dim(x, a))]
        if not carriers and ctx.defer(node, Port(True, 0), out_axis):
            return  # asked again once propagation has reached the input side
        if not carriers:
            ctx.freeze(Dim(y, out_axis), f"{node.op_type} merges axes {left}; none alone is known to carry channels")
            return
        in_axis = carriers[0]  # the outermost; inner ones (head_dim under heads) cannot carry units through it
        for inner in carriers[1:]:
            ctx.freeze(Dim(x, inner), _merged_under(node))
    sizes = [src[a] for a in left]
    k = left.index(in_axis)
    if all(isinstance(n, int) for n in sizes):
        positions = np.arange(int(np.prod(sizes)))
        channel_of = np.unravel_index(positions, sizes)[k]
        ctx.link_pairs(Dim(x, in_axis), channel_of, Dim(y, out_axis), positions)
    elif 0 < _outer_symbols(sizes, range(len(sizes))) == k and ctx.periodic(Dim(y, out_axis), int(np.prod(sizes[k:]))):
        period = np.arange(int(np.prod(sizes[k:])))  # [batch, heads(, d)] -> [batch*heads(*d)]: channels repeat
        ctx.link_pairs(Dim(x, in_axis), period // int(np.prod(sizes[k + 1:])), Dim(y, out_axis), period)
    else:
        ctx.freeze(Dim(x, in_axis), f"{node.op_type} merges this axis with axes of symbolic size ({sizes})")


def _outer_symbols(sizes: list, axes) -> int:
    """How many of `axes` lead with symbolic sizes (batch) before only static ones follow; 0 unless exactly
    symbols-then-statics, the form whose merged axis is periodic (channel = position mod the static product)."""
    kinds = [isinstance(sizes[a], int) for a in axes]
    lead = kinds.index(True) if True in kinds else len(kinds)
    return lead if lead < len(kinds) and all(kinds[lead:]) and all(
        isinstance(sizes[a], str) for a in list(axes)[:lead]) else 0


def _merged_under(node: ir.Node) -> str:
    return f"{node.op_type} merges this axis under an outer axis that carries units (e.g. head_dim under heads)"


def _broadcast_axes(ctx: CoupleContext, value: ir.Value) -> set[int]:
    """Axes of an Expand's output that it broadcast from size 1."""
    node = value.producer()
    if node is None or node.op_type != "Expand":
        return set()
    xs, ys = ctx.shape(node.inputs[0]), ctx.shape(value)
    if xs is None or ys is None:
        return set()
    offset = len(ys) - len(xs)
    return {a for a in range(len(ys)) if a < offset or (xs[a - offset] == 1 and ys[a] != 1)}


def _couple_split(ctx: CoupleContext, x: ir.Value, y: ir.Value, in_axis: int, right: list[int], dst: list) -> None:
    """Input axis splits into output axes `right` (heads x head_dim, shuffle groups x group size): a unit is
    one index of the outermost factor, i.e. a block of consecutive input channels — unless the input's units
    already follow another factor alone (a static [batch*heads] whose units are heads: position mod heads)."""
    lead = _outer_symbols(dst, right)
    statics = right[lead:]
    if not all(isinstance(dst[a], int) for a in statics):
        ctx.freeze(Dim(x, in_axis), f"axis {in_axis} splits into axes of symbolic size {[dst[a] for a in right]}")
        return
    sizes = [dst[a] for a in statics]
    positions = np.arange(int(np.prod(sizes)))
    if lead and not ctx.periodic(Dim(x, in_axis), len(positions)):  # [batch*heads] -> [batch, heads]
        ctx.freeze(Dim(x, in_axis), f"axis {in_axis} splits into axes of symbolic size {[dst[a] for a in right]}")
        return
    factor = _followed_factor(ctx.partition(Dim(x, in_axis)), sizes) if not lead else 0
    ctx.link_pairs(Dim(x, in_axis), positions, Dim(y, statics[factor]), np.unravel_index(positions, sizes)[factor])


def _inner_carrier(ctx: CoupleContext, x: ir.Value, in_axis: int, right: list[int], dst: list) -> int | None:
    """The output axis of a static split that the input's units follow, when it is not the outermost."""
    sizes = [dst[a] for a in right]
    if not all(isinstance(n, int) for n in sizes):
        return None
    factor = _followed_factor(ctx.partition(Dim(x, in_axis)), sizes)
    return right[factor] if factor else None


def _followed_factor(units: np.ndarray | None, sizes: list[int]) -> int:
    """The one factor of `sizes` other than the outermost whose index alone decides the unit of every position
    (`units`: the unit of each position of the input axis, None while it has none); else 0, the outermost."""
    if units is None or len(np.unique(units)) < 2:
        return 0
    grid = units.reshape(sizes)
    follows = [k for k, n in enumerate(sizes) if n > 1 and all(
        len(np.unique(row)) == 1 for row in np.moveaxis(grid, k, 0).reshape(n, -1))]
    return follows[0] if len(follows) == 1 and follows[0] > 0 else 0


@register("Flatten")
class Regroup(OpRule):
    """Shape follows from attributes; nothing to rewrite."""

    carries_ids = True

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        couple_regroup(ctx, node, port, axis)


@register("Squeeze", "Unsqueeze")
class SqueezeAxes(OpRule):
    """Removes or inserts size-1 axes: with the axes known, every other axis maps 1:1 in order, whatever shape
    inference could say of the sizes (a squeezed axis is 1 by definition); else as a regroup."""

    carries_ids = True

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        if not port.output and port.index != 0:
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} axes input carries no channels")
            return
        axes = int_list(ctx, node, "axes", 1)
        squeeze = node.op_type == "Squeeze"
        ranked = ctx.shape(node.inputs[0] if squeeze else node.outputs[0])
        if axes is None or ranked is None:
            couple_regroup(ctx, node, port, axis)
            return
        moved = {normalize_axis(a, len(ranked)) for a in axes}
        others = [a for a in range(len(ranked)) if a not in moved]  # the wider tensor's axes that stay
        wide, narrow = (node.inputs[0], node.outputs[0]) if squeeze else (node.outputs[0], node.inputs[0])
        if port.output == squeeze:  # asked on the narrow side
            ctx.link(Dim(narrow, axis), Dim(wide, others[axis]))
        elif axis in others:
            ctx.link(Dim(wide, axis), Dim(narrow, others.index(axis)))


@register("Reshape")
class Reshape(OpRule):
    """Like Regroup; the target entries of pruned axes are rewritten, so they must be constants (or -1)."""

    carries_ids = True

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        settable = settable_entries(ctx, node.inputs[1])
        if settable is None:
            ctx.freeze(Dim(port.value(node), axis), "Reshape target shape is computed at run time")
            return
        couple_regroup(ctx, node, port, axis, lambda o: o < len(settable) and settable[o])

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        rewrite_entries_for(ctx, node, 1, node.outputs[0], keep={-1})


@register("Expand")
class Expand(OpRule):
    """Broadcast input 0 to a shape vector: an axis the input already has at full size passes through (its
    shape entry is rewritten unless it is 1); an axis Expand creates from size 1 holds copies, so its channels
    are removed by a smaller target."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, y = node.inputs[0], node.outputs[0]
        dim = Dim(port.value(node), axis)
        x_shape, y_shape = ctx.shape(x), ctx.shape(y)
        src = copied_shape(ctx, node.inputs[1])
        if src is not None and port.output and x_shape is not None and all(n == 1 for n in x_shape):
            ctx.link(Dim(src, axis), Dim(y, axis))  # a fill shaped like src (zeros_like)
            return
        settable = settable_entries(ctx, node.inputs[1])
        if (not port.output and port.index != 0) or x_shape is None or y_shape is None or settable is None:
            ctx.freeze(dim, "Expand shape input, unknown ranks or a computed shape vector")
            return
        offset = len(y_shape) - len(x_shape)
        out_axis = axis if port.output else axis + offset
        in_axis = out_axis - offset
        shape_axis = out_axis - (len(y_shape) - len(settable))
        if shape_axis >= 0 and not settable[shape_axis]:
            ctx.freeze(dim, "Expand target size of this axis is computed at run time")
            return
        if in_axis < 0 or x_shape[in_axis] != y_shape[out_axis]:
            if not port.output:
                ctx.freeze(dim, "Expand broadcasts this axis from size 1")
            return  # every channel a copy of the same values (a KV head for query slots, one gather index for
            # every batch·head): fewer channels are a smaller target, nothing upstream changes
        ctx.link(Dim(x, in_axis), Dim(y, out_axis))

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        if copied_shape(ctx, node.inputs[1]) is None:
            rewrite_entries_for(ctx, node, 1, node.outputs[0], keep={1})


@register("Transpose")
class Transpose(OpRule):
    """Output axis o is input axis perm[o]."""

    carries_ids = True

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        shape = ctx.shape(node.inputs[0])
        perm = attr_ints(node, "perm")
        if perm is None:
            if shape is None:
                ctx.freeze(Dim(port.value(node), axis), "Transpose without perm on unknown rank")
                return
            perm = list(reversed(range(len(shape))))
        perm = [normalize_axis(p, len(perm)) for p in perm]
        in_axis = perm[axis] if port.output else axis
        ctx.link(Dim(node.inputs[0], in_axis), Dim(node.outputs[0], perm.index(in_axis)))
