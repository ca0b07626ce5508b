"""Concat, Split, Slice and Gather: channels along the joined/split axis are remapped by offset,
and every shape-carrying constant (split sizes, slice bounds) is recomputed from the survivors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.moe import masked_zero
from graphprune.ops.registry import (
    CoupleContext,
    Dim,
    OpRule,
    Port,
    RewriteContext,
    attr_int,
    attr_ints,
    int_list,
    normalize_axis,
    present,
    register,
)


def _axis(ctx, node: ir.Node, default: int = 0) -> int | None:
    shape = ctx.shape(node.inputs[0])
    return None if shape is None else normalize_axis(attr_int(node, "axis", default), len(shape))


def _static_size(ctx, value: ir.Value, axis: int) -> int | None:
    shape = ctx.shape(value)
    size = shape[axis] if shape is not None else None
    return size if isinstance(size, int) else None


def couple_pieces(ctx: CoupleContext, node: ir.Node, port: Port, axis: int, whole: ir.Value,
                  pieces: list[ir.Value], join: int | None) -> None:
    """`whole` is `pieces` laid end to end along `join`: piece i occupies [offset_i, offset_i + size_i).
    Any other axis is shared by all of them."""
    if join is None or axis != join:
        for piece in pieces:
            ctx.link(Dim(whole, axis), Dim(piece, axis))
        return
    sizes = [_static_size(ctx, piece, join) for piece in pieces]
    if any(s is None for s in sizes):
        ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} with a dynamic size along its axis")
        return
    offset = 0
    for piece, size in zip(pieces, sizes, strict=True):
        ctx.link_pairs(Dim(piece, join), np.arange(size), Dim(whole, join), offset + np.arange(size))
        offset += size


@register("Concat")
class Concat(OpRule):
    """The output is the inputs laid end to end along `axis`."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        couple_pieces(ctx, node, port, axis, node.outputs[0], [v for _, v in present(node.inputs)], _axis(ctx, node))


@register("Split")
class Split(OpRule):
    """The outputs are consecutive ranges of the input along `axis`; the sizes are rewritten."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        if port.index != 0 and not port.output:
            ctx.freeze(Dim(port.value(node), axis), "Split sizes carry no channels")
            return
        couple_pieces(ctx, node, port, axis, node.inputs[0], [v for _, v in present(node.outputs)], _axis(ctx, node))

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        cut = _axis(ctx, node)
        kept = [ctx.kept(value, cut) for value in node.outputs]
        if all(k is None for k in kept):
            return
        sizes = [len(k) if k is not None else ctx.shape(v)[cut] for k, v in zip(kept, node.outputs, strict=True)]
        new = np.array(sizes, dtype=np.int64)
        if "split" in node.attributes:
            ctx.set_attr(node, ir.AttrInt64s("split", sizes))
        elif len(node.inputs) > 1 and node.inputs[1] is not None:
            ctx.set_input_const(node, 1, new)
        else:
            node.attributes.pop("num_outputs", None)
            ctx.set_input_const(node, 1, new)


def _slice_axes(ctx, node: ir.Node) -> list[int] | None:
    """The axes a Slice cuts (normalised); None when they are not known statically."""
    shape = ctx.shape(node.inputs[0])
    if shape is None:
        return None
    if "starts" in node.attributes:
        axes = attr_ints(node, "axes") or list(range(len(node.attributes["starts"].as_ints())))
    elif len(node.inputs) > 3 and node.inputs[3] is not None:
        axes = int_list(ctx, node, "axes", 3)
    else:
        starts_shape = ctx.shape(node.inputs[1])
        axes = list(range(starts_shape[0])) if starts_shape and isinstance(starts_shape[0], int) else None
    return None if axes is None else [normalize_axis(a, len(shape)) for a in axes]


def _slice_params(ctx, node: ir.Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(starts, ends, axes, steps) normalised to non-negative axes; None when any is dynamic."""
    axes = _slice_axes(ctx, node)
    starts, ends = int_list(ctx, node, "starts", 1), int_list(ctx, node, "ends", 2)
    steps = int_list(ctx, node, "steps", 4)
    has_steps = len(node.inputs) > 4 and node.inputs[4] is not None
    if axes is None or starts is None or ends is None or (has_steps and steps is None):
        return None
    return starts, ends, axes, steps or [1] * len(starts)


def _clamp(bound: int, size: int) -> int:
    bound = bound + size if bound < 0 else bound
    return min(max(bound, 0), size)


@register("Slice")
class Slice(OpRule):
    """A unit-step slice along the channel axis keeps a contiguous range; its bounds are recounted."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        dim = Dim(port.value(node), axis)
        axes = _slice_axes(ctx, node)
        if port.index != 0 or axes is None:
            ctx.freeze(dim, "Slice with dynamic axes" if axes is None else "Slice bound inputs carry no channels")
            return
        x, y = node.inputs[0], node.outputs[0]
        if axis not in axes:
            ctx.link(Dim(x, axis), Dim(y, axis))
            return
        params = _slice_params(ctx, node)
        if params is None:
            ctx.freeze(dim, "Slice with dynamic bounds along the channel axis")
            return
        starts, ends, axes, steps = params
        k = axes.index(axis)
        size = _static_size(ctx, x, axis)
        if steps[k] != 1 or size is None:
            ctx.freeze(dim, "Slice with a non-unit step or dynamic size along the channel axis")
            return
        start, end = _clamp(starts[k], size), _clamp(ends[k], size)
        if end - start == 1 and not port.output and _picks_expert(ctx, node, Dim(x, axis), port, start):
            return
        ctx.link_pairs(Dim(x, axis), np.arange(start, end), Dim(y, axis), np.arange(end - start))

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        x = node.inputs[0]
        if all(ctx.kept(x, axis) is None for axis in _slice_axes(ctx, node)):
            return
        starts, ends, axes, _ = _slice_params(ctx, node)
        new_starts, new_ends = list(starts), list(ends)
        for k, axis in enumerate(axes):
            kept = ctx.kept(x, axis)
            if kept is None:
                continue
            size = ctx.shape(x)[axis]
            new_starts[k] = int(np.searchsorted(kept, _clamp(starts[k], size)))
            new_ends[k] = int(np.searchsorted(kept, _clamp(ends[k], size)))
        if new_starts == starts and new_ends == ends:
            return
        if "starts" in node.attributes:
            ctx.set_attr(node, ir.AttrInt64s("starts", new_starts))
            ctx.set_attr(node, ir.AttrInt64s("ends", new_ends))
        else:
            ctx.set_input_const(node, 1, np.array(new_starts, dtype=np.int64))
            ctx.set_input_const(node, 2, np.array(new_ends, dtype=np.int64))


def _picks_expert(ctx: CoupleContext, node: ir.Node, dim: Dim, port: Port, index: int) -> bool:
    """A one-wide Slice `[e, e+1)` of an expert axis whose unrouted entries are zero picks expert e's gate
    (`g[..., e:e+1]` of a scattered gate): its bounds are selectors. True when so (or when deferred)."""
    if not ctx.expert(dim) and ctx.defer(node, port, dim.axis):
        return True
    if "starts" in node.attributes or not masked_zero(ctx, dim.value, dim.axis):
        return False
    ctx.selector(dim, index, node, 1, by_rule=True)  # Slice.rewrite recounts its bounds over the survivors
    return True


@register("Gather")
class Gather(OpRule):
    """data[..., indices, ...] along `axis`: other data axes and every indices axis pass through. Constant 1-D
    indices without repeats select channels: output channel i is data channel indices[i] (channels nobody
    selects are simply not read), and the indices are renumbered after pruning."""

    carries_ids = True

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
        shape, idx_shape = ctx.shape(data), ctx.shape(indices)
        dim = Dim(port.value(node), axis)
        if shape is None or idx_shape is None:
            ctx.freeze(dim, "Gather with unknown ranks")
            return
        g = normalize_axis(attr_int(node, "axis", 0), len(shape))
        q = len(idx_shape)
        selection = _selection(ctx, node, shape[g])
        if selection is not None and ((port.output and axis == g) or (port.index == 0 and axis == g)):
            ctx.link_pairs(Dim(y, g), np.arange(len(selection)), Dim(data, g), selection)
            return
        if port.output:
            if g <= axis < g + q:
                ctx.link(Dim(indices, axis - g), Dim(y, axis))
            else:
                ctx.link(Dim(data, axis if axis < g else axis - q + 1), Dim(y, axis))
        elif port.index == 1:
            ctx.link(Dim(indices, axis), Dim(y, g + axis))
        elif axis == g:
            _select_expert(ctx, node, dim)
        else:
            ctx.link(Dim(data, axis), Dim(y, axis if axis < g else axis + q - 1))


    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        shape = ctx.shape(node.inputs[0])
        selection = _selection(ctx, node, shape[normalize_axis(attr_int(node, "axis", 0), len(shape))])
        if selection is None:
            return
        g = normalize_axis(attr_int(node, "axis", 0), len(shape))
        kept_data, kept_out = ctx.kept(node.inputs[0], g), ctx.kept(node.outputs[0], g)
        if kept_data is None and kept_out is None:
            return
        chosen = selection if kept_out is None else selection[kept_out]
        renumbered = chosen if kept_data is None else np.searchsorted(kept_data, chosen)
        ctx.set_input_const(node, 1, renumbered.astype(ctx.const(node.inputs[1]).dtype))


@register("GatherElements")
class GatherElements(OpRule):
    """out[.., j, ..] = data[.., indices[.., j, ..], ..] along `axis`: every other axis of data, indices and out
    is one axis (same sizes); positions along `axis` are chosen at run time, so it carries no channels."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
        shape, idx_shape = ctx.shape(data), ctx.shape(indices)
        dim = Dim(port.value(node), axis)
        if shape is None or idx_shape is None or len(shape) != len(idx_shape):
            ctx.freeze(dim, "GatherElements with unknown ranks")
        elif axis == normalize_axis(attr_int(node, "axis", 0), len(shape)):
            ctx.freeze(dim, "GatherElements picks positions along this axis")
        elif shape[axis] != idx_shape[axis]:
            ctx.freeze(dim, "GatherElements reads part of this axis (indices shorter than data)")
        else:
            ctx.link(Dim(data, axis), Dim(y, axis))
            ctx.link(Dim(indices, axis), Dim(y, axis))


def _selection(ctx: CoupleContext | RewriteContext, node: ir.Node, size: int | str | None) -> np.ndarray | None:
    """Constant 1-D indices without repeats into an axis of static `size`, made non-negative; else None."""
    index = ctx.const(node.inputs[1])
    if index is None or index.ndim != 1 or not isinstance(size, int):
        return None
    index = np.where(index < 0, index + size, index).astype(np.int64)
    if np.any(index < 0) or np.any(index >= size) or len(np.unique(index)) != len(index):
        return None
    return index


def _select_expert(ctx: CoupleContext, node: ir.Node, dim: Dim) -> None:
    """A constant scalar index into an expert axis whose unrouted entries are zero picks one expert's branch
    (Hugging Face's `expert_mask[e]`); any other selection along a channel axis freezes it."""
    index = ctx.const(node.inputs[1])
    scalar = index is not None and index.ndim == 0
    if scalar and not ctx.expert(dim) and ctx.defer(node, Port(False, 0), dim.axis):
        return
    if not scalar or not masked_zero(ctx, dim.value, dim.axis):
        ctx.freeze(dim, "Gather selects along this axis")
        return
    ctx.selector(dim, int(index) % ctx.shape(dim.value)[dim.axis], node, 1)


def _index_depth(ctx: CoupleContext, indices: ir.Value) -> tuple[int, int] | None:
    """(rank of indices, entries per index tuple) of a GatherND/ScatterND indices tensor with a static last axis."""
    shape = ctx.shape(indices)
    return None if shape is None or not isinstance(shape[-1], int) else (len(shape), shape[-1])


@register("GatherND")
class GatherND(OpRule):
    """data[indices]: data axes after the indexed ones pass through, shifted behind the indices' leading axes
    (x[token_ids] in Mixtral's loop); batch and indexed axes freeze."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        depth = _index_depth(ctx, node.inputs[1])
        dim = Dim(port.value(node), axis)
        batch = attr_int(node, "batch_dims", 0)
        if depth is None or (not port.output and port.index != 0):
            ctx.freeze(dim, "GatherND indices, or an index depth unknown")
            return
        first_kept = batch + depth[1]  # first data axis not consumed by an index
        offset = depth[0] - 1 - first_kept  # output axis = data axis + offset
        data_axis = axis - offset if port.output else axis
        if data_axis < first_kept or batch:
            ctx.freeze(dim, "GatherND indexes this axis")
            return
        ctx.link(Dim(node.inputs[0], data_axis), Dim(node.outputs[0], data_axis + offset))


@register("ScatterND")
class ScatterND(OpRule):
    """Output has data's shape; data axes after the indexed ones are the updates' trailing axes (index_add_ of
    expert outputs into tokens). Indexed axes freeze: their positions are written in the indices."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        data, indices, updates = node.inputs[0], node.inputs[1], node.inputs[2]
        depth = _index_depth(ctx, indices)
        dim = Dim(port.value(node), axis)
        if depth is None or port.index == 1 and not port.output:
            ctx.freeze(dim, "ScatterND indices, or an index depth unknown")
            return
        offset = depth[0] - 1 - depth[1]  # updates axis = data axis + offset
        data_axis = axis - offset if (not port.output and port.index == 2) else axis
        if data_axis < depth[1]:
            ctx.freeze(dim, "ScatterND indexes this axis")
            return
        ctx.link(Dim(data, data_axis), Dim(node.outputs[0], data_axis))
        ctx.link(Dim(data, data_axis), Dim(updates, data_axis + offset))
