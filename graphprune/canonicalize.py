"""Canonicalisation at load: rewrite provably equivalent op sequences into forms the dimension rules model.

The dynamo exporter transposes K in scaled-dot-product attention as Reshape([B, H, S, D] → [B·H, S, D]) →
Transpose → Reshape(→ [B, H, D, S]): the merged B·H axis has a symbolic size, so no rule can map heads
through it. When shapes prove the sandwich restores the merged prefix, it is one Transpose.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from graphprune.values import shape_of


def _only_use(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or uses[0].node.op_type != op_type or value.is_graph_output():
        return None
    return uses[0].node


def _same(a: list | None, b: list | None) -> bool:
    """Equal dims, where symbolic ones must share a name (unknown never matches)."""
    if a is None or b is None or len(a) != len(b):
        return False
    return all(x is not None and x == y for x, y in zip(a, b, strict=True))


def _sandwich_perm(first: ir.Node) -> tuple[ir.Node, list[int]] | None:
    """(last Reshape, equivalent perm) when `first` opens a merge-transpose-split sandwich."""
    transpose = _only_use(first.outputs[0], "Transpose")
    last = _only_use(transpose.outputs[0], "Reshape") if transpose else None
    if last is None or "perm" not in transpose.attributes:
        return None
    perm = list(transpose.attributes["perm"].as_ints())
    xs, ms, zs = shape_of(first.inputs[0]), shape_of(first.outputs[0]), shape_of(last.outputs[0])
    if xs is None or ms is None or zs is None or perm[0] != 0:
        return None
    k = len(xs) - len(ms) + 1
    if k < 2 or not _same(xs[k:], ms[1:]) or not _same(zs[:k], xs[:k]):
        return None
    rest = [ms[p] for p in perm[1:]]
    if not _same(zs[k:], rest):
        return None
    return last, list(range(k)) + [k - 1 + p for p in perm[1:]]


def fold_transpose_sandwiches(model: ir.Model) -> int:
    """Replace every provable Reshape→Transpose→Reshape sandwich with one Transpose; returns the count."""
    folded = 0
    for node in list(model.graph):
        if node.op_type != "Reshape" or node.graph is not model.graph:
            continue
        match = _sandwich_perm(node)
        if match is None:
            continue
        last, perm = match
        transpose = ir.node("Transpose", [node.inputs[0]], {"perm": perm}, name=f"{last.name}_folded")
        out = transpose.outputs[0]
        out.name, out.shape, out.type = f"{last.outputs[0].name}_folded", last.outputs[0].shape, last.outputs[0].type
        model.graph.insert_before(last, transpose)
        last.outputs[0].replace_all_uses_with(out)
        folded += 1
    if folded:
        RemoveUnusedNodesPass()(model)
    return folded


def canonicalize(model: ir.Model) -> None:
    """Apply every canonicalisation in place."""
    fold_transpose_sandwiches(model)
