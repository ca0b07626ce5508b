"""Token merging (ToMe, Bolya et al. 2023) compiled into the graph: the tokens are split alternately into A and B,
each A token finds its most similar B token (cosine of the hidden states), and the r best-matched A tokens are
averaged into their matches, weighted by the sizes the tokens carry. Later attention adds log(size) to its
logits (proportional attention), so a token standing for s identical ones is attended as they were.

Protected leading tokens (CLS) are never merged nor merged into; padding merges only with padding.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.passes.rewrite.token_graph import INT64_MAX, Reduction, TokenBuilder


def merged_count(count: int | str, keep: float, protect: int) -> int | str:
    """Tokens left of `count` after one merge: r = min(n − max(protect, floor(n·keep + 1/2)), ceil(n/2) −
    ceil(protect/2)) merged away (at most the unprotected A tokens); an expression for a symbolic count."""
    protected_a = (protect + 1) // 2
    if isinstance(count, int):
        wanted = count - max(protect, int(np.floor(count * keep + 0.5)))
        return count - max(0, min(wanted, (count + 1) // 2 - protected_a))
    n = f"({count})"
    return f"{n} - max(0, min({n} - max({protect}, floor({n}*{keep!r} + 1/2)), ceil({n}/2) - {protected_a}))"


def merge(b: TokenBuilder, hidden: ir.Value, keep: float, protect: int, mask: ir.Value | None,
          count: int | str, sizes: ir.Value | None) -> Reduction:
    """One ToMe step on `hidden` [batch, n, d] whose tokens carry `sizes` [batch, n] (None: one each)."""
    n = b.dim(hidden, 1)
    start, step = [b.const([0]), b.const([1])], b.const([2])  # A: even positions, B: odd
    if sizes is None:
        sizes = b.op("Expand", b.float_const([1.0]),
                     b.op("Concat", b.dim(hidden, 0), n, axis=0))
    a, bb = (b.op("Slice", hidden, first, b.const([INT64_MAX]), b.const([1]), step) for first in start)
    size_a, size_b = (b.op("Slice", sizes, first, b.const([INT64_MAX]), b.const([1]), step) for first in start)
    unit_a, unit_b = (b.op("LpNormalization", x, axis=-1, p=2) for x in (a, bb))
    scores = b.op("MatMul", unit_a, b.op("Transpose", unit_b, perm=[0, 2, 1]))  # [batch, na, nb]
    low = b.float_const(-np.inf)
    na, nb = b.dim(a, 1), b.dim(bb, 1)
    a_positions = b.op("Mul", b.positions(na), b.const(2))
    b_positions = b.op("Add", b.op("Mul", b.positions(nb), b.const(2)), b.const(1))
    if protect > 1:  # a protected B token receives no merge
        scores = b.op("Where", b.op("Less", b_positions, b.const(protect)), low, scores)
    if mask is not None:  # padding only with padding
        pad = b.op("Less", b.to_float(b.key_padding(mask)), b.float_const(-1.0))
        pad_a, pad_b = (b.op("Slice", pad, first, b.const([INT64_MAX]), b.const([1]), step) for first in start)
        same = b.op("Equal", b.op("Unsqueeze", pad_a, b.const([2])), b.op("Unsqueeze", pad_b, b.const([1])))
        scores = b.op("Where", same, scores, low)
    best = b.reduce_max(scores, [2])
    match = b.op("ArgMax", scores, axis=2, keepdims=0)  # [batch, na]: the B token each A token would join
    if protect:
        best = b.op("Where", b.op("Less", a_positions, b.const(protect)), low, best)
    kept = merged_count(count, keep, protect)
    if isinstance(count, int):
        r = b.const([count - kept])
    else:
        wanted = b.op("Sub", n, b.kept_count(n, keep, protect))
        r = b.op("Max", b.const([0]), b.op("Min", wanted, b.op("Sub", na, b.const([(protect + 1) // 2]))))
    _, order = b.topk(best, na, largest=1)
    source = b.op("Slice", order, b.const([0]), r, b.const([1]))
    rest = b.op("Slice", order, r, b.const([INT64_MAX]), b.const([1]))
    unmerged, _ = b.topk(rest, b.dim(rest, 1), largest=0)  # ascending positions in A
    target = b.op("GatherElements", match, source, axis=1)
    weighted_a = b.op("Mul", a, b.op("Unsqueeze", size_a, b.const([2])))
    weighted_b = b.op("Mul", bb, b.op("Unsqueeze", size_b, b.const([2])))
    moved = b.gather(weighted_a, 1, source, 3)
    summed_b = b.op("ScatterElements", weighted_b, b.op("Expand", b.op("Unsqueeze", target, b.const([2])),
                                                        b.op("Shape", moved)), moved, axis=1, reduction="add")
    sizes_b = b.op("ScatterElements", size_b, target, b.op("GatherElements", size_a, source, axis=1), axis=1,
                   reduction="add")
    tokens = b.op("Concat", b.gather(weighted_a, 1, unmerged, 3), summed_b, axis=1)
    token_sizes = b.op("Concat", b.op("GatherElements", size_a, unmerged, axis=1), sizes_b, axis=1)
    batch_b = b.op("Expand", b_positions, b.op("Concat", b.dim(hidden, 0), nb, axis=0))
    representative = b.op("Concat", b.op("Mul", unmerged, b.const(2)), batch_b, axis=1)
    index, order_back = b.topk(representative, b.dim(representative, 1), largest=0)
    new_sizes = b.op("GatherElements", token_sizes, order_back, axis=1)
    averaged = b.op("Div", b.gather(tokens, 1, order_back, 3), b.op("Unsqueeze", new_sizes, b.const([2])))
    return Reduction(index, averaged, kept, _stand_ins(b, n, index, source, target, hidden), new_sizes)


def _stand_ins(b: TokenBuilder, n: ir.Value, index: ir.Value, source: ir.Value, target: ir.Value,
               hidden: ir.Value) -> ir.Value:
    """For each of the n tokens, the position among the merged tokens of the one standing for it."""
    every = b.op("Expand", b.positions(n), b.op("Concat", b.dim(hidden, 0), n, axis=0))
    slot = b.op("Expand", b.positions(b.dim(index, 1)), b.op("Shape", index))
    position_of = b.op("ScatterElements", b.op("Mul", every, b.const(0)), index, slot, axis=1)
    joined = b.op("ScatterElements", every, b.op("Mul", source, b.const(2)),
                  b.op("Add", b.op("Mul", target, b.const(2)), b.const(1)), axis=1)
    return b.op("GatherElements", position_of, joined, axis=1)
