"""Recurrent layers (LSTM, GRU, RNN, ONNX Runtime's DynamicQuantizeLSTM): their hidden units are structured
units. Unit u owns row u of every gate block of W and R (and of both bias halves, the peepholes), column u of R
(what the units read of its state), entry u of the initial states and of Y, Y_h, Y_c — in both directions,
which share the hidden axis. The input axis is consumed by W's columns. Pruning rewrites `hidden_size`.
Layout 1 (batch first) freezes: ONNX Runtime does not run it, so no rewrite of it could be verified."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ir.values import const_of
from graphprune.ops.encodings import Affine, Encoding
from graphprune.ops.registry import MS, CoupleContext, Dim, OpRule, Port, RewriteContext, attr_int, input_at, register

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}  # gate blocks per hidden unit
_STATES = (5, 6)  # initial_h, initial_c (GRU and RNN have no input 6)


@register("LSTM", "GRU", "RNN")
class Recurrent(OpRule):
    """X [seq, batch, in], W [dirs, G·H, in], R [dirs, G·H, H], B [dirs, 2·G·H], P [dirs, 3·H]; Y [seq, dirs,
    batch, H], Y_h, Y_c [dirs, batch, H]: the input and hidden axes are the last ones."""

    input_axis = 2  # W's axis reading X's features
    column_axis = 2  # R's axis reading the hidden state

    def stacked(self, ctx: CoupleContext, node: ir.Node) -> dict[int, tuple[int, int]]:
        """Input index → (axis, gate blocks) of the inputs holding hidden units stacked in gate blocks."""
        gates = GATES[node.op_type]
        return {1: (1, gates), 2: (1, gates), 3: (1, 2 * gates), 7: (1, 3)}  # P: input, output, forget peepholes

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        return [Dim(node.inputs[2], self.column_axis)] if ctx.weight(node.inputs[2]) else []

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        dim = Dim(port.value(node), axis)
        reason = self._unsupported(ctx, node)
        if reason:
            ctx.freeze(dim, reason)
            return
        last = len(ctx.shape(port.value(node)) or []) - 1
        index = None if port.output else port.index
        stacked = self.stacked(ctx, node)
        if (index, axis) in ((0, 2), (1, self.input_axis)):
            ctx.link(Dim(node.inputs[0], 2), Dim(node.inputs[1], self.input_axis))
            ctx.consumer(Dim(node.inputs[1], self.input_axis), Dim(node.inputs[0], 2), node)
        elif (index in stacked and axis == stacked[index][0]) or (index, axis) == (2, self.column_axis) or \
                ((index is None or index in _STATES) and axis == last):
            self._couple_hidden(ctx, node, stacked)
        else:
            ctx.freeze(dim, f"{node.op_type} axis {axis} of port {port} is neither its input nor its hidden axis")

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        kept = ctx.kept(node.inputs[2], self.column_axis)
        if kept is not None:
            ctx.set_attr(node, ir.AttrInt64("hidden_size", len(kept)))

    def _unsupported(self, ctx: CoupleContext, node: ir.Node) -> str | None:
        w, r = node.inputs[1], node.inputs[2]
        if not (ctx.weight(w) and ctx.weight(r)):
            return f"{node.op_type} with non-constant weights"
        hidden = attr_int(node, "hidden_size", 0)
        r_shape = ctx.shape(r) or [None] * 3
        if len(ctx.shape(node.inputs[0]) or []) != 3 or r_shape[self.column_axis] != hidden or hidden <= 0:
            return f"{node.op_type} of unknown input rank or hidden size"
        if attr_int(node, "layout", 0):
            return f"{node.op_type} with layout 1 (batch first): ONNX Runtime cannot run it to verify a rewrite"
        if "LSTM" in node.op_type and attr_int(node, "input_forget", 0):
            return "LSTM with input_forget couples the input and forget gates"
        return None

    def _couple_hidden(self, ctx: CoupleContext, node: ir.Node, stacked: dict[int, tuple[int, int]]) -> None:
        """Link every axis indexed by hidden unit to R's columns (one element per unit), gate blocks unit by
        unit."""
        units = np.arange(attr_int(node, "hidden_size", 0))
        anchor = Dim(node.inputs[2], self.column_axis)
        for index, (axis, count) in stacked.items():
            value = input_at(node, index)
            if value is not None:
                ctx.link_pairs(anchor, np.tile(units, count), Dim(value, axis), np.arange(count * len(units)))
        for value in [*(input_at(node, i) for i in _STATES), *node.outputs]:
            if value is not None and ctx.shape(value) is not None:
                ctx.link(anchor, Dim(value, len(ctx.shape(value)) - 1))
        state = next((v for v in node.outputs if v is not None and ctx.shape(v) is not None), None)
        if state is not None:  # what R's columns read: the hidden state, as the outputs give it
            ctx.consumer(anchor, Dim(state, len(ctx.shape(state)) - 1), node)
        ctx.tag(anchor, "neuron")


@register("DynamicQuantizeLSTM", domain=MS)
class DynamicQuantizeLSTM(Recurrent):
    """ONNX Runtime's dynamically quantized LSTM (`quantize_dynamic`): W [dirs, in, 4·H] and R [dirs, H, 4·H]
    are stored transposed as integers, with a scale and zero point per direction ([dirs]) or per gate row
    ([dirs, 4·H], sliced with the rows): inputs 8-11 are W's and R's scale and zero point."""

    reads_range = True  # X is quantized per call over all its channels (as is the hidden state: `silenced`)
    input_axis = 1
    column_axis = 1
    _PARAMS = {1: (8, 9), 2: (10, 11)}  # weight input → its scale and zero point

    def stacked(self, ctx: CoupleContext, node: ir.Node) -> dict[int, tuple[int, int]]:
        blocks = {1: (2, 4), 2: (2, 4), 3: (1, 8), 7: (1, 3)}
        for index in (i for pair in self._PARAMS.values() for i in pair):
            if len(ctx.shape(input_at(node, index)) or []) == 2:  # per gate row
                blocks[index] = (1, 4)
        return blocks

    def encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        if input_index not in self._PARAMS or node.inputs[input_index].const_value is None:
            return None
        scale_at, zero_at = self._PARAMS[input_index]
        scale, zero = const_of(input_at(node, scale_at)), const_of(input_at(node, zero_at))
        if scale is None or zero is None:
            return None
        view = (scale.shape[0], 1, -1)  # [dirs] or [dirs, 4·H] against [dirs, rows, 4·H]
        return Affine(scale.astype(np.float32).reshape(view), zero.astype(np.int64).reshape(view))

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        return (8, 9, 10, 11)

    def silenced(self, node: ir.Node, input_index: int, positions: np.ndarray) -> np.ndarray:
        """The hidden state is quantized per step over all units: a removed unit must hold 0 there, as it does
        once its cell-gate rows (block c of gates i, o, f, c in W, R and both halves of B) and its initial
        states are 0 (then c stays 0, and h = o·tanh(c) with it)."""
        if input_index in _STATES:
            return positions
        if input_index in (1, 2, 3):
            return positions[positions // attr_int(node, "hidden_size", 1) % 4 == 3]
        return positions[:0]

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None] | None:
        """Y [seq, dirs, batch, H], Y_h and Y_c [dirs, batch, H] (ONNX shape inference does not know the op)."""
        x, w = node.inputs[0].shape, node.inputs[1].shape
        if x is None or w is None or len(x) != 3:
            return None
        dirs, hidden = w[0], attr_int(node, "hidden_size", 0)
        return [ir.Shape([x[0], dirs, x[1], hidden]), ir.Shape([dirs, x[1], hidden]),
                ir.Shape([dirs, x[1], hidden])][:len(node.outputs)]
