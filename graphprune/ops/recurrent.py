"""Recurrent layers (LSTM, GRU, RNN): their hidden units are structured units. Unit u owns row u of every gate
block of W and R (and of both bias halves, the peepholes), column u of R (what the units read of its state),
entry u of the initial states and of Y, Y_h, Y_c — in both directions, which share the hidden axis. The input
axis is consumed by W's columns. Pruning rewrites `hidden_size`. Layout 1 (batch first) freezes: ONNX Runtime
does not run it, so no rewrite of it could be verified."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, RewriteContext, attr_int, input_at, register

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_STACKED = (1, 2, 3, 7)  # W, R, B, P: hidden units stacked in blocks along axis 1
_STATES = (5, 6)  # initial_h, initial_c (GRU and RNN have no input 6)


@register("LSTM", "GRU", "RNN")
class Recurrent(OpRule):
    """X [seq, batch, in], W [dirs, G·H, in], R [dirs, G·H, H], B [dirs, 2·G·H], P [dirs, 3·H]; Y [seq, dirs,
    batch, H], Y_h, Y_c [dirs, batch, H]: the input and hidden axes are the last ones."""

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        return [Dim(node.inputs[2], 2)] if ctx.weight(node.inputs[2]) else []

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        dim = Dim(port.value(node), axis)
        reason = _unsupported(ctx, node)
        if reason:
            ctx.freeze(dim, reason)
            return
        last = len(ctx.shape(port.value(node)) or []) - 1
        index = None if port.output else port.index
        if index in (0, 1) and axis == 2:
            ctx.link(Dim(node.inputs[0], 2), Dim(node.inputs[1], 2))
            ctx.consumer(Dim(node.inputs[1], 2), Dim(node.inputs[0], 2), node)
        elif (index in _STACKED and axis == 1) or (index == 2 and axis == 2) or \
                ((index is None or index in _STATES) and axis == last):
            _couple_hidden(ctx, node)
        else:
            ctx.freeze(dim, f"{node.op_type} axis {axis} of port {port} is neither its input nor its hidden axis")

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        kept = ctx.kept(node.inputs[2], 2)
        if kept is not None:
            ctx.set_attr(node, ir.AttrInt64("hidden_size", len(kept)))


def _unsupported(ctx: CoupleContext, node: ir.Node) -> str | None:
    w, r = node.inputs[1], node.inputs[2]
    if not (ctx.weight(w) and ctx.weight(r)):
        return f"{node.op_type} with non-constant weights"
    hidden = attr_int(node, "hidden_size", 0)
    if len(ctx.shape(node.inputs[0]) or []) != 3 or (ctx.shape(r) or [None] * 3)[2] != hidden or hidden <= 0:
        return f"{node.op_type} of unknown input rank or hidden size"
    if attr_int(node, "layout", 0):
        return f"{node.op_type} with layout 1 (batch first): ONNX Runtime cannot run it to verify a rewrite"
    if node.op_type == "LSTM" and attr_int(node, "input_forget", 0):
        return "LSTM with input_forget couples the input and forget gates"
    return None


def _couple_hidden(ctx: CoupleContext, node: ir.Node) -> None:
    """Link every axis indexed by hidden unit to R's columns (one element per unit), gate blocks unit by unit."""
    hidden, gates = attr_int(node, "hidden_size", 0), _GATES[node.op_type]
    units = np.arange(hidden)
    anchor = Dim(node.inputs[2], 2)
    blocks = dict(zip(_STACKED, (gates, gates, 2 * gates, 3), strict=True))  # P: input, output, forget peepholes
    for index, count in blocks.items():
        value = input_at(node, index)
        if value is not None:
            ctx.link_pairs(anchor, np.tile(units, count), Dim(value, 1), np.arange(count * hidden))
    for value in [*(input_at(node, i) for i in _STATES), *node.outputs]:
        if value is not None and ctx.shape(value) is not None:
            ctx.link(anchor, Dim(value, len(ctx.shape(value)) - 1))
    state = next((v for v in node.outputs if v is not None and ctx.shape(v) is not None), None)
    if state is not None:  # what R's columns read: the hidden state, as the outputs give it
        ctx.consumer(anchor, Dim(state, len(ctx.shape(state)) - 1), node)
    ctx.tag(anchor, "neuron")
