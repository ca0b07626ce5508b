"""Mixture-of-experts ops: TopK routing, the expert-index tensors it produces, and the fused MoE op.

A TopK (largest) over the axis of router logits, their softmax or their sigmoid (DeepSeek-style scores)
makes that axis an expert axis: its units are experts, and removing one must equal forcing its logit to
-inf. Along an expert axis the usual barriers lift where that equivalence holds: the router softmax, gate
scatters, one-hot tables, sums over experts whose entries of unrouted experts are zero, and constant-index
selection of one expert's branch.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.registry import (
    MS,
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

_LINEAR = ("MatMul", "Gemm")


def is_router_softmax(ctx: CoupleContext, node: ir.Node, axis: int) -> bool:
    """A Softmax over `axis` whose output is routed over by a TopK along the same axis."""
    shape = ctx.shape(node.inputs[0])
    if shape is None or node.op_type != "Softmax" or ctx.opset() < 13:
        return False
    if normalize_axis(attr_int(node, "axis", -1), len(shape)) != axis:
        return False
    return any(_routes(use.node, use.idx, axis, len(shape)) for use in node.outputs[0].uses())


def _routes(node: ir.Node, input_index: int, axis: int, rank: int) -> bool:
    """`node` is a TopK taking the largest entries along `axis` of its input `input_index`."""
    return (node.op_type == "TopK" and input_index == 0 and attr_int(node, "largest", 1) == 1
            and normalize_axis(attr_int(node, "axis", -1), rank) == axis)


def _is_logits(value: ir.Value) -> bool:
    """Output of a linear layer (optionally plus a bias): the router logits."""
    node = value.producer()
    if node is not None and node.op_type == "Add":
        node = next((v.producer() for v in node.inputs if v is not None and v.const_value is None), None)
    return node is not None and node.op_type in _LINEAR


def _is_router_scores(ctx: CoupleContext, value: ir.Value, axis: int) -> bool:
    """Router logits, their softmax along `axis`, or their sigmoid: what a routing TopK may select from."""
    node = value.producer()
    if node is not None and node.op_type == "Sigmoid":
        return _is_logits(node.inputs[0])
    return _is_logits(value) or (node is not None and is_router_softmax(ctx, node, axis))


def masked_zero(ctx: CoupleContext, value: ir.Value, axis: int, depth: int = 0) -> bool:
    """Whether entries of `value` along expert axis `axis` are zero for experts whose logits are -inf."""
    node = value.producer()
    if depth > 32 or not ctx.expert(Dim(value, axis)):
        return False
    if node is None:  # a constant: zeros a static export folded (`zeros_like(probs)` at fixed sizes)
        fill = ctx.const(value)
        return fill is not None and not np.any(fill)
    op, rank = node.op_type, len(ctx.shape(value) or [])
    if op in ("Softmax", "Sigmoid"):  # softmax or sigmoid of -inf logits: 0
        return _is_router_scores(ctx, value, axis)
    if op in ("Equal", "OneHot"):  # one-hot over expert indices: never hot for an unrouted expert
        return True
    if op in ("Expand", "ConstantOfShape"):
        fill = ctx.const(node.inputs[0]) if op == "Expand" else _fill_value(node)
        return fill is not None and not np.any(fill)
    if op == "ScatterElements":
        return masked_zero(ctx, node.inputs[0], axis, depth + 1)
    if op in ("Cast", "Identity", "Neg", "Relu", "Abs"):
        return masked_zero(ctx, node.inputs[0], axis, depth + 1)
    if op == "Transpose":
        perm = attr_ints(node, "perm") or list(reversed(range(rank)))
        return masked_zero(ctx, node.inputs[0], perm[axis], depth + 1)
    if op == "Unsqueeze":
        inserted = sorted(normalize_axis(a, rank) for a in (int_list(ctx, node, "axes", 1) or []))
        return axis not in inserted and masked_zero(ctx, node.inputs[0], axis - sum(a < axis for a in inserted),
                                                    depth + 1)
    operands = {"Mul": node.inputs, "And": node.inputs, "MatMul": node.inputs, "Div": node.inputs[:1]}.get(op, [])
    return any(_aligned_zero(ctx, v, axis, rank, depth) for v in operands if v is not None)


def _aligned_zero(ctx: CoupleContext, operand: ir.Value, axis: int, rank: int, depth: int) -> bool:
    shape = ctx.shape(operand)
    in_axis = axis - (rank - len(shape)) if shape is not None else -1
    return in_axis >= 0 and shape[in_axis] != 1 and masked_zero(ctx, operand, in_axis, depth + 1)


def _fill_value(node: ir.Node) -> np.ndarray:
    attr = node.attributes.get("value")
    return np.zeros(1) if attr is None else attr.as_tensor().numpy()


@register("TopK")
class TopK(OpRule):
    """Other axes pass through to values and indices. Along its axis only routing is allowed: the largest
    entries of router logits (or their softmax or sigmoid), whose indices then name experts."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        x = node.inputs[0]
        shape = ctx.shape(x)
        dim = Dim(port.value(node), axis)
        if shape is None:
            ctx.freeze(dim, "TopK input rank unknown")
            return
        if axis != normalize_axis(attr_int(node, "axis", -1), len(shape)):
            for _, out in present(node.outputs):
                ctx.link(Dim(x, axis), Dim(out, axis))
            return
        k = int_list(ctx, node, "k", 1)
        routed = _routes(node, 0, axis, len(shape)) and _is_router_scores(ctx, x, axis)
        if port.output or not routed or k is None:
            ctx.freeze(dim, "TopK selects along this axis (not a router over logits with a constant k)")
            return
        ctx.router(dim, int(k[0]))
        if len(node.outputs) > 1 and node.outputs[1] is not None:
            ctx.expert_ids(node.outputs[1], dim)


@register("ScatterElements")
class ScatterElements(OpRule):
    """Output has data's shape. On any other axis, updates[.., j, ..] lands at position j of data, so data,
    indices, updates and output are coupled there (index_add_ of expert outputs); updates narrower than data
    freeze. Along the scatter axis only expert indices may scatter (gates into [N, E])."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        data, indices, updates, y = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
        shape = ctx.shape(data)
        dim = Dim(port.value(node), axis)
        if shape is None:
            ctx.freeze(dim, "ScatterElements with an unknown rank")
            return
        if axis == normalize_axis(attr_int(node, "axis", 0), len(shape)):
            on_data = port.output or port.index == 0
            if on_data and ctx.expert(dim):
                ctx.link(Dim(data, axis), Dim(y, axis))
            elif not (on_data and ctx.defer(node, port, axis)):
                ctx.freeze(dim, "ScatterElements scatters along this axis")
            return
        ctx.link(Dim(data, axis), Dim(y, axis))
        for operand in (indices, updates):
            if (ctx.shape(operand) or [None] * len(shape))[axis] != shape[axis]:
                ctx.freeze(dim, "ScatterElements updates cover part of this axis")
                return
            ctx.link(Dim(data, axis), Dim(operand, axis))

    def couple_ids(self, ctx: CoupleContext, node: ir.Node, input_index: int, dim: Dim) -> None:
        shape = ctx.shape(node.inputs[0])
        if input_index != 1 or shape is None:
            super().couple_ids(ctx, node, input_index, dim)
            return
        scatter_axis = normalize_axis(attr_int(node, "axis", 0), len(shape))
        ctx.link(dim, Dim(node.outputs[0], scatter_axis))
        ctx.link(dim, Dim(node.inputs[0], scatter_axis))


@register("OneHot")
class OneHot(OpRule):
    """One-hot over expert indices: the new axis is the expert axis, its depth the number of experts."""

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        dim = Dim(port.value(node), axis)
        if not (port.output and axis == self._axis(ctx, node) and ctx.expert(dim)):
            ctx.freeze(dim, "OneHot")

    def couple_ids(self, ctx: CoupleContext, node: ir.Node, input_index: int, dim: Dim) -> None:
        depth = ctx.const(node.inputs[1])
        if input_index != 0 or depth is None or self._axis(ctx, node) is None:
            super().couple_ids(ctx, node, input_index, dim)
            return
        ctx.link(dim, Dim(node.outputs[0], self._axis(ctx, node)))

    @staticmethod
    def _axis(ctx: CoupleContext | RewriteContext, node: ir.Node) -> int | None:
        shape = ctx.shape(node.outputs[0])
        return None if shape is None else normalize_axis(attr_int(node, "axis", -1), len(shape))

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        kept = ctx.kept(node.outputs[0], self._axis(ctx, node))
        if kept is not None:
            depth = ctx.const(node.inputs[1])
            ctx.set_input_const(node, 1, np.full(depth.shape, len(kept), dtype=depth.dtype))


@register("MoE", domain=MS)
class FusedMoE(OpRule):
    """ONNX Runtime's MoE: router_probs [N, E] are the logits it routes over (top-k); stacked expert weights
    fc1/fc3 [E, f, d], fc2 [E, d, f] with biases [E, ·]. Experts and (unfused SwiGLU or plain) FFN neurons
    are coupled across the stacked tensors; the hidden axis passes from input to output."""

    EXPERT, NEURON, HIDDEN = range(3)
    # input index → its (expert, neuron, hidden) axes, None where the tensor lacks one
    AXES = {1: (1, None, None), 2: (0, 1, 2), 3: (0, 1, None), 4: (0, 2, 1), 5: (0, None, 1), 6: (0, 1, 2),
            7: (0, 1, None)}

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        return [Dim(node.inputs[2], 0), Dim(node.inputs[2], 1)] if ctx.const(node.inputs[2]) is not None else []

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        dim = Dim(port.value(node), axis)
        rank = len(ctx.shape(node.inputs[0]) or [])
        axes = self.AXES.get(port.index, ()) if not port.output else ()
        slot = axes.index(axis) if axis in axes else self.HIDDEN if port.index == 0 and axis == rank - 1 else None
        if slot is None or (slot == self.NEURON and attr_int(node, "swiglu_fusion", 0) != 0):
            ctx.freeze(dim, "MoE: an axis it does not keep, or fused SwiGLU weights")
            return
        peers = [Dim(node.inputs[i], axes[slot]) for i, axes in self.AXES.items()
                 if axes[slot] is not None and i < len(node.inputs) and node.inputs[i] is not None]
        if slot == self.HIDDEN:
            peers += [Dim(node.inputs[0], rank - 1), Dim(node.outputs[0], rank - 1)]
        for peer in peers:
            ctx.link(dim, peer)
        if slot == self.EXPERT:
            ctx.router(Dim(node.inputs[1], 1), attr_int(node, "k", 1))
