"""Fused ops from ONNX Runtime's transformer optimizer (com.microsoft) and the opset-23 Attention op.

Fused attention ops pack every head into one hidden axis; a unit is one head: its Q, K and V columns in the
packed weight and bias, and its slice of the output. `num_heads` (and `qkv_hidden_sizes`) are rewritten.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.elementwise import couple_broadcast
from graphprune.ops.registry import (
    MS,
    CoupleContext,
    Dim,
    OpRule,
    Port,
    RewriteContext,
    attr_int,
    attr_ints,
    present,
    register,
)


def _freeze_unless(ctx: CoupleContext, node: ir.Node, port: Port, axis: int, ok: bool, reason: str) -> bool:
    if not ok:
        ctx.freeze(Dim(port.value(node), axis), reason)
    return ok


@register("Attention", domain=MS)
class FusedAttention(OpRule):
    """input [B, S, d] · weights [d, Dq + Dk + Dv] + bias → output [B, S, Dv]; heads packed in order."""

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        return [Dim(node.inputs[1], 1)] if ctx.const(node.inputs[1]) is not None else []

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        uses_past = len(node.inputs) > 4 and node.inputs[4] is not None
        if not _freeze_unless(ctx, node, port, axis, not uses_past and (not port.output or port.index == 0),
                              "Attention with past/present key-value state"):
            return
        x_shape, w_shape, y_shape = ctx.shape(x), ctx.shape(w), ctx.shape(y)
        if not _freeze_unless(ctx, node, port, axis, None not in (x_shape, w_shape, y_shape) and len(x_shape) == 3,
                              "Attention with unknown shapes"):
            return
        if (not port.output and port.index == 0 and axis == 2) or (port.index == 1 and not port.output and axis == 0):
            ctx.link(Dim(x, 2), Dim(w, 0))
            ctx.consumer(Dim(w, 0), Dim(x, 2), node)
            return
        if not port.output and port.index == 0:
            ctx.link(Dim(x, axis), Dim(y, axis))
            return
        if port.output and axis < 2:
            ctx.link(Dim(x, axis), Dim(y, axis))
            return
        heads = attr_int(node, "num_heads", 1)
        q, k, v = attr_ints(node, "qkv_hidden_sizes") or [w_shape[1] // 3] * 3
        anchor = Dim(y, 2)
        sections = [(0, q // heads), (q, k // heads), (q + k, v // heads)]
        ctx.link_pairs(anchor, np.arange(v) // (v // heads) * (v // heads), anchor, np.arange(v))
        for target in [Dim(w, 1)] + ([Dim(bias, 0)] if bias is not None else []):
            _link_sections(ctx, anchor, v // heads, target, sections, heads)
        ctx.tag(anchor, "head")

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        kept = ctx.kept(node.outputs[0], 2)
        if kept is None:
            return
        heads = attr_int(node, "num_heads", 1)
        width = ctx.shape(node.outputs[0])[2] // heads
        ctx.set_attr(node, ir.AttrInt64("num_heads", len(kept) // width))
        sizes = attr_ints(node, "qkv_hidden_sizes")
        if sizes:
            ctx.set_attr(node, ir.AttrInt64s("qkv_hidden_sizes", [s // heads * (len(kept) // width) for s in sizes]))


def _link_sections(ctx: CoupleContext, anchor: Dim, out_head: int, target: Dim, sections: list[tuple[int, int]],
                   heads: int) -> None:
    """Link each packed section (offset, head size) of `target` head by head to the output head anchors."""
    positions, anchors = [], []
    for offset, size in sections:
        local = np.arange(heads * size)
        positions.append(offset + local)
        anchors.append(local // size * out_head)
    ctx.link_pairs(anchor, np.concatenate(anchors), target, np.concatenate(positions))


@register("MultiHeadAttention", domain=MS)
class MultiHeadAttention(OpRule):
    """query [B, S, Dq], key [B, L, Dk], value [B, L, Dv] (projected), optional packed bias [Dq + Dk + Dv]
    → output [B, S, Dv]; batch and sequence axes pass through."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        inputs = list(node.inputs) + [None] * 8
        q, k, v, bias, y = inputs[0], inputs[1], inputs[2], inputs[3], node.outputs[0]
        shapes = [ctx.shape(t) for t in (q, k, v, y)]
        extra = [t for t in inputs[4:8] if t is not None] or port.output and port.index > 0
        if not _freeze_unless(ctx, node, port, axis, not extra and all(s is not None and len(s) == 3 for s in shapes),
                              "MultiHeadAttention with masks, past state or packed layouts"):
            return
        if axis == 0 or (axis == 1 and (port.output or port.index == 0)):
            ctx.link(Dim(q, axis), Dim(y, axis))
            return
        if axis == 1:  # key/value sequence axis
            ctx.link(Dim(k, 1), Dim(v, 1))
            return
        heads = attr_int(node, "num_heads", 1)
        dq, dk, dv = shapes[0][2], shapes[1][2], shapes[2][2]
        anchor = Dim(y, 2)
        ctx.link_pairs(anchor, np.arange(dv) // (dv // heads) * (dv // heads), anchor, np.arange(dv))
        for tensor, size in ((q, dq), (k, dk), (v, dv)):
            _link_sections(ctx, anchor, dv // heads, Dim(tensor, 2), [(0, size // heads)], heads)
        if bias is not None:
            _link_sections(ctx, anchor, dv // heads, Dim(bias, 0),
                           [(0, dq // heads), (dq, dk // heads), (dq + dk, dv // heads)], heads)
        ctx.tag(anchor, "head")

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        kept = ctx.kept(node.outputs[0], 2)
        if kept is not None:
            heads = attr_int(node, "num_heads", 1)
            ctx.set_attr(node, ir.AttrInt64("num_heads", len(kept) // (ctx.shape(node.outputs[0])[2] // heads)))


@register("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
class SkipLayerNorm(OpRule):
    """LayerNorm(input + skip + bias) over the last axis; outputs: normalised, [mean, inv_std,] input+skip+bias.
    The hidden axis couples everything, approximately (statistics change)."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x, skip, y = node.inputs[0], node.inputs[1], node.outputs[0]
        rank = len(ctx.shape(x) or [])
        tensors = [x, skip, y] + ([node.outputs[3]] if len(node.outputs) > 3 and node.outputs[3] is not None else [])
        is_param = not port.output and port.index >= 2
        stats_output = port.output and port.index in (1, 2)
        if stats_output or not rank:
            ctx.freeze(Dim(port.value(node), axis), f"{node.op_type} statistics output or unknown rank")
            return
        if not is_param and axis < rank - 1:
            for tensor in tensors[1:]:
                ctx.link(Dim(x, axis), Dim(tensor, axis))
            return
        for tensor in tensors[1:]:
            ctx.link(Dim(x, rank - 1), Dim(tensor, rank - 1))
        for _, param in present(node.inputs)[2:]:
            ctx.link(Dim(y, rank - 1), Dim(param, 0))
        ctx.approximate(Dim(y, rank - 1), f"{node.op_type} statistics span this axis")


@register("BiasGelu", "FastGelu", "QuickGelu", "Gelu", "BiasAdd", domain=MS)
class BiasActivation(OpRule):
    """Elementwise activation of input (+ bias broadcast along the last axis)."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        couple_broadcast(ctx, node, port, axis, present(node.inputs))


@register("GroupQueryAttention", domain=MS)
class GroupQueryAttention(OpRule):
    """query [B, S, Hq·D], key/value [B, S, Hkv·D], optional caches past/present [B, Hkv, L, D] → output
    [B, S, Hq·D]. A unit is one KV group: its KV head (and cache slice) and the Hq/Hkv query heads reading it.
    A cache that is a graph input or output freezes the heads by the graph I/O rule."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        inputs = list(node.inputs) + [None] * 8
        q, k, v, y = inputs[0], inputs[1], inputs[2], node.outputs[0]
        caches = [t for t in (inputs[3], inputs[4], *list(node.outputs[1:3])) if t is not None]
        shapes = [ctx.shape(t) for t in (q, k, v, y)]
        hq, hkv = attr_int(node, "num_heads", 0), attr_int(node, "kv_num_heads", 0)
        data = port.output or port.index in (0, 1, 2, 3, 4)
        if not _freeze_unless(ctx, node, port, axis, k is not None and data and hq and hkv
                              and all(s is not None and len(s) == 3 for s in shapes),
                              "GroupQueryAttention with packed QKV, unknown shapes or a non-data input"):
            return
        is_cache = port.value(node) in caches
        if axis == 0:
            for t in (k, v, y, *caches):
                ctx.link(Dim(q, 0), Dim(t, 0))
        elif axis == 1 and not is_cache:
            pair = (q, y) if port.value(node) in (q, y) else (k, v)
            ctx.link(Dim(pair[0], 1), Dim(pair[1], 1))
        elif (axis == 2 and not is_cache) or (axis == 1 and is_cache):
            self._couple_heads(ctx, q, k, v, y, caches, shapes, hq, hkv)
        else:
            ctx.freeze(Dim(port.value(node), axis), "GroupQueryAttention cache length or head_dim axis")

    @staticmethod
    def _couple_heads(ctx, q, k, v, y, caches, shapes, hq: int, hkv: int) -> None:
        head_dim, rep = shapes[0][2] // hq, hq // hkv
        anchor, group_width = Dim(y, 2), rep * head_dim
        queries = np.arange(hq * head_dim)
        for target in (Dim(y, 2), Dim(q, 2)):
            ctx.link_pairs(anchor, queries // group_width * group_width, target, queries)
        keys = np.arange(hkv * head_dim)
        for target in (Dim(k, 2), Dim(v, 2)):
            ctx.link_pairs(anchor, keys // head_dim * group_width, target, keys)
        for cache in caches:
            ctx.link_pairs(anchor, np.arange(hkv) * group_width, Dim(cache, 1), np.arange(hkv))
        ctx.tag(anchor, "head")

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None] | None:
        """output: the query's shape; present caches: [B, kv_num_heads, total length, head_dim]."""
        query = node.inputs[0].shape if node.inputs and node.inputs[0] is not None else None
        if query is None or len(query) != 3 or not isinstance(query[2], int):
            return None
        head_dim = query[2] // attr_int(node, "num_heads", 1)
        cache = ir.Shape([query[0], attr_int(node, "kv_num_heads", 1), ir.SymbolicDim(None), head_dim])
        return [query, cache, cache]

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        head_dim = ctx.shape(node.inputs[0])[2] // attr_int(node, "num_heads", 1)
        kept_q, kept_k = ctx.kept(node.outputs[0], 2), ctx.kept(node.inputs[1], 2)
        if kept_q is not None:
            ctx.set_attr(node, ir.AttrInt64("num_heads", len(kept_q) // head_dim))
        if kept_k is not None:
            ctx.set_attr(node, ir.AttrInt64("kv_num_heads", len(kept_k) // head_dim))


@register("PackedAttention", "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention",
          "EmbedLayerNormalization", domain=MS)
class UnmodelledFused(OpRule):
    """Fused ops whose layouts (KV caches, packed tokens, fused embeddings) are not modelled yet."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        ctx.freeze(Dim(port.value(node), axis), f"{MS}::{node.op_type} is not modelled yet")


@register("Attention")
class OnnxAttention(OpRule):
    """Opset-23 Attention. 4-D: Q [B, Hq, S, D], K/V [B, Hkv, L, D] → Y [B, Hq, S, Dv]; 3-D: heads packed in
    the last axis with q_num_heads / kv_num_heads. Query head h reads KV head h // (Hq / Hkv), so a unit is
    one KV group. Masks with a head axis, past state and the QK output are not modelled."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        inputs = list(node.inputs) + [None] * 6
        q, k, v, mask, y = inputs[0], inputs[1], inputs[2], inputs[3], node.outputs[0]
        shapes = [ctx.shape(t) for t in (q, k, v, y)]
        mask_shape = ctx.shape(mask) if mask is not None else None
        simple = (all(s is not None for s in shapes) and not any(inputs[4:6]) and not (port.output and port.index)
                  and (mask is None or (mask_shape is not None and (len(mask_shape) < 4 or mask_shape[-3] == 1)))
                  and not (not port.output and port.index == 3))
        if not _freeze_unless(ctx, node, port, axis, simple, "Attention with past state, per-head masks or QK output"):
            return
        if len(shapes[0]) == 4:
            self._couple_4d(ctx, node, port, axis, q, k, v, y, shapes)
        else:
            self._couple_3d(ctx, node, port, axis, q, k, v, y, shapes)

    @staticmethod
    def _couple_4d(ctx, node, port, axis, q, k, v, y, shapes) -> None:
        hq, hkv = shapes[0][1], shapes[1][1]
        if axis == 0:
            for t in (k, v, y):
                ctx.link(Dim(q, 0), Dim(t, 0))
        elif axis == 1:
            ctx.link(Dim(q, 1), Dim(y, 1))
            for t in (k, v):
                ctx.link_pairs(Dim(q, 1), np.arange(hq), Dim(t, 1), np.arange(hq) // (hq // hkv))
            ctx.tag(Dim(q, 1), "head")
        elif axis == 2:
            if port.output or port.index == 0:
                ctx.link(Dim(q, 2), Dim(y, 2))
            else:
                ctx.link(Dim(k, 2), Dim(v, 2))
        else:
            ctx.freeze(Dim(port.value(node), axis), "Attention head_dim axis")

    @staticmethod
    def _couple_3d(ctx, node, port, axis, q, k, v, y, shapes) -> None:
        hq, hkv = attr_int(node, "q_num_heads", 0), attr_int(node, "kv_num_heads", 0)
        if not hq or not hkv:
            ctx.freeze(Dim(port.value(node), axis), "3-D Attention without q_num_heads/kv_num_heads")
            return
        if axis == 0 or (axis == 1 and (port.output or port.index == 0)):
            ctx.link(Dim(q, axis), Dim(y, axis))
            return
        if axis == 1:
            ctx.link(Dim(k, 1), Dim(v, 1))
            return
        anchor, dv, rep = Dim(y, 2), shapes[3][2] // hq, hq // hkv
        # every query head of a KV group shares one unit: the group's first output position
        ctx.link_pairs(anchor, np.arange(hq * dv) // (rep * dv) * (rep * dv), anchor, np.arange(hq * dv))
        _link_sections(ctx, anchor, dv, Dim(q, 2), [(0, shapes[0][2] // hq)], hq)
        for t, size in ((k, shapes[1][2]), (v, shapes[2][2])):
            width = size // hkv
            positions = np.arange(size)
            first_query = positions // width * rep  # the first query head of the KV head's group
            ctx.link_pairs(anchor, first_query * dv, Dim(t, 2), positions)
        ctx.tag(anchor, "head")

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        q, k = node.inputs[0], node.inputs[1]
        if len(ctx.shape(q)) == 4:
            kept_q, kept_k = ctx.kept(q, 1), ctx.kept(k, 1)
            new_q, new_k = (len(kept_q) if kept_q is not None else None), (len(kept_k) if kept_k is not None else None)
        else:
            hq, hkv = attr_int(node, "q_num_heads", 0), attr_int(node, "kv_num_heads", 0)
            kept_q, kept_k = ctx.kept(q, 2), ctx.kept(k, 2)
            new_q = len(kept_q) // (ctx.shape(q)[2] // hq) if kept_q is not None else None
            new_k = len(kept_k) // (ctx.shape(k)[2] // hkv) if kept_k is not None else None
        if new_q is not None and "q_num_heads" in node.attributes:
            ctx.set_attr(node, ir.AttrInt64("q_num_heads", new_q))
        if new_k is not None and "kv_num_heads" in node.attributes:
            ctx.set_attr(node, ir.AttrInt64("kv_num_heads", new_k))
