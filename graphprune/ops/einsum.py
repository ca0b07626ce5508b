"""Einsum: each axis is named by its subscript letter, so channel mapping is read off the equation."""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ops.moe import masked_zero
from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, register

_ELLIPSIS_LETTERS = [chr(0x3B1 + i) for i in range(24)]  # stand-ins for the axes '...' covers (α, β, …)


def subscripts(ctx: CoupleContext, node: ir.Node) -> tuple[list[str], str] | None:
    """(letters of each input, letters of the output) with '...' expanded right-aligned; None when an operand
    repeats a letter (a diagonal) or its rank is unknown."""
    equation = node.attributes["equation"].as_string().replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if "->" not in equation:
        letters = lhs.replace(",", "").replace("...", "")
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    ranks = [len(ctx.shape(v) or []) if v is not None else 0 for v in node.inputs]
    widths = [rank - (len(term) - 3) for term, rank in zip(terms, ranks, strict=True) if "..." in term]
    width = max(widths, default=0)
    expanded = []
    for term, rank in zip(terms, ranks, strict=True):
        if "..." in term:
            n = rank - (len(term) - 3)
            term = term.replace("...", "".join(_ELLIPSIS_LETTERS[width - n:width]))
        if len(term) != rank or len(set(term)) != len(term):
            return None
        expanded.append(term)
    out = rhs.replace("...", "".join(_ELLIPSIS_LETTERS[:width]))
    return expanded, out


@register("Einsum")
class Einsum(OpRule):
    """A letter kept in the output links every operand axis with that letter to it (size-1 broadcasts excepted).
    A letter contracted between an activation and a constant weight is a consumer contraction (a Linear, or
    stacked [E, d, f] expert weights); between two activations it freezes, unless it is an expert axis on which
    one operand is zero for unrouted experts (the gate-weighted sum over experts)."""

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        parsed = subscripts(ctx, node)
        if parsed is None:
            return []
        terms, out = parsed
        return [Dim(v, axis) for v, term in zip(node.inputs, terms, strict=True) if ctx.const(v) is not None
                for axis, letter in enumerate(term) if letter in out]

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        dim = Dim(port.value(node), axis)
        parsed = subscripts(ctx, node)
        if parsed is None:
            ctx.freeze(dim, "Einsum with a repeated subscript or an operand of unknown rank")
            return
        terms, out = parsed
        letter = (out if port.output else terms[port.index])[axis]
        holders = [Dim(v, term.index(letter)) for v, term in zip(node.inputs, terms, strict=True) if letter in term]
        if letter in out:
            out_dim = Dim(node.outputs[0], out.index(letter))
            out_size = (ctx.shape(out_dim.value) or [None] * len(out))[out_dim.axis]
            for holder in holders:
                if ctx.shape(holder.value)[holder.axis] != 1 or out_size == 1:
                    ctx.link(out_dim, holder)
            return
        if len(holders) != 2:
            ctx.freeze(dim, "Einsum sums over this axis")
            return
        a, b = holders
        if ctx.const(b.value) is not None or ctx.const(a.value) is not None:
            weight, reads = (b, a) if ctx.const(b.value) is not None else (a, b)
            ctx.link(reads, weight)
            ctx.consumer(weight, reads, node)
        elif masked_zero(ctx, a.value, a.axis) or masked_zero(ctx, b.value, b.axis):
            ctx.link(a, b)  # a sum over experts: the ones never routed to add zeros
        elif not ctx.defer(node, port, axis):
            ctx.freeze(dim, "Einsum contraction between two activations")
