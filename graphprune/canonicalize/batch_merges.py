"""Canonicalisations for attention written as batched matrix products over merged axes (tf2onnx's einsum
decomposition of Keras MultiHeadAttention, and any exporter that spells `bqhd,bkhd->bhqk` the same way):

- Reshape targets computed at run time with a single unknown entry: the target is built from Shape reads
  (`Concat(Gather(Shape(x), [0, 1]), [4, 8], [1])`, `Concat(ReduceProd(Shape(t)[0:2]), [6, 8])`,
  `Max(Shape(q)[0:2], Shape(k)[0:2])`); every entry but one is static, so that one is what Reshape's -1
  infers, and the target is a constant.
- Merge → batched MatMul → split: `Reshape([B, H, …] → [B·H, m, k])` on both operands (the second maybe
  transposed on its last two axes), a MatMul, and a constant Reshape of the [B·H, m, n] product. MatMul
  broadcasts leading axes, so the merge is unnecessary: the operands keep [B, H] and the product comes out as
  [B, H, m, n], which the final Reshape turns into the same tensor. Without the merge, heads are an axis of
  their own again, which the dimension rules can follow.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from graphprune.ir.edits import add_constant
from graphprune.ir.values import attr_int, const_of, covered_axes, picked_positions, shape_of

Size = tuple[int, tuple]  # a size as a monomial: constant factor × symbolic factors (dim names, sorted)
_VIEWS = ("Cast", "Identity", "Squeeze", "Unsqueeze")


def _dim(value: ir.Value, axis: int, dim) -> Size:
    """A tensor's size along `axis`: static, its symbolic name (equal names are equal sizes), or unique."""
    if isinstance(dim, int):
        return dim, ()
    name = getattr(dim, "value", None)
    return 1, (name if name else f"{id(value)}:{axis}",)


def _times(a: Size, b: Size) -> Size:
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def sizes(value: ir.Value, depth: int = 0) -> list[Size | None] | None:
    """The entries of a shape vector built from Shape reads and constants, as monomials (None: an entry that
    is no product of sizes; the whole None: not such a vector)."""
    array = const_of(value)
    if array is not None:
        return [(int(v), ()) for v in np.atleast_1d(array)] if array.ndim <= 1 and array.dtype.kind in "iu" else None
    node = value.producer()
    if node is None or depth > 64:
        return None
    if node.op_type == "Shape":
        shape = shape_of(node.inputs[0])
        if shape is None:
            return None
        dims = node.inputs[0].shape.dims
        return [_dim(node.inputs[0], axis, dims[axis]) for axis in covered_axes(node, len(shape))]
    inputs = [sizes(v, depth + 1) if v is not None else None for v in node.inputs]
    if node.op_type in _VIEWS:
        return inputs[0]
    if node.op_type == "Concat":
        return None if any(part is None for part in inputs) else [e for part in inputs for e in part]
    if node.op_type == "ReduceProd" and inputs[0] is not None and len(node.inputs) == 1:
        product: Size | None = (1, ())
        for entry in inputs[0]:
            product = None if product is None or entry is None else _times(product, entry)
        return [product]
    if node.op_type in ("Gather", "Slice") and inputs[0] is not None:
        picked = picked_positions(node, len(inputs[0]))
        return None if picked is None else [inputs[0][i] for i in np.atleast_1d(picked)]
    if node.op_type in ("Max", "Min", "Mul") and len(inputs) == 2 and None not in (inputs[0], inputs[1]):
        a, b = inputs
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            return None
        a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a)) if len(b) == 1 else (a, b)
        return [_combined(node.op_type, x, y) for x, y in zip(a, b, strict=True)]
    return None


def _combined(op: str, a: Size | None, b: Size | None) -> Size | None:
    if a is None or b is None:
        return None
    if op == "Mul":
        return _times(a, b)
    if a == b:
        return a
    if a[1] or b[1]:
        return None
    return (max if op == "Max" else min)(a, b)


def _constant(entry: Size | None) -> int | None:
    return entry[0] if entry is not None and not entry[1] else None


def _inferred_target(node: ir.Node) -> np.ndarray | None:
    """The constant form of a Reshape target whose entries are all static but at most one (that one is -1)."""
    if node.op_type != "Reshape" or len(node.inputs) < 2 or const_of(node.inputs[1]) is not None \
            or attr_int(node, "allowzero", 0):
        return None
    values = sizes(node.inputs[1])
    if values is None:
        return None
    known = [_constant(v) for v in values]
    unknown = sum(k is None for k in known)
    if unknown > 1 or unknown and -1 in known:
        return None
    return np.array([-1 if k is None else k for k in known], dtype=np.int64)


def fold_inferred_targets(model: ir.Model) -> int:
    """Replace runtime Reshape targets with a single unknown entry by constants; returns how many."""
    count = 0
    for node in list(model.graph):
        target = _inferred_target(node)
        if target is not None:
            node.replace_input_with(1, add_constant(model, f"{node.outputs[0].name}_target", target))
            shape = shape_of(node.outputs[0])
            if shape is None or len(shape) != len(target) or any(t > 0 and d != t for t, d in zip(target, shape,
                                                                                                 strict=True)):
                node.outputs[0].shape = None  # stand-ins for sizes the constant states: re-inferred from it
            count += 1
    if count:
        RemoveUnusedNodesPass()(model)
    return count


def _only_use(value: ir.Value) -> ir.Node | None:
    uses = value.uses()
    return uses[0].node if len(uses) == 1 and not value.is_graph_output() else None


def _merge(reshape: ir.Node | None) -> tuple[int, np.ndarray] | None:
    """(L, rest) when a Reshape merges its input's first L axes into its first output axis and lays out the
    others as the constant entries `rest` (at most one -1): its target's first entry is the product of
    those sizes, read with Shape or static."""
    if reshape is None or reshape.op_type != "Reshape" or attr_int(reshape, "allowzero", 0):
        return None
    target, data = sizes(reshape.inputs[1]), reshape.inputs[0]
    if target is None or data.shape is None or len(target) < 2 or target[0] is None:
        return None
    rest = [_constant(v) for v in target[1:]]
    if any(r is None or r == 0 for r in rest) or rest.count(-1) > 1:
        return None
    merged: Size = (1, ())
    for axis, dim in enumerate(data.shape.dims[:-1]):
        merged = _times(merged, _dim(data, axis, dim))
        if axis >= 1 and merged == target[0]:
            return axis + 1, np.array(rest, dtype=np.int64)
    return None


def _operand(value: ir.Value, matmul: ir.Node) -> tuple[ir.Node, ir.Node | None] | None:
    """(merging Reshape, Transpose keeping the merged axis first or None) producing a MatMul operand, each
    read only by the next."""
    node, transpose, reader = value.producer(), None, matmul
    if node is not None and node.op_type == "Transpose":
        perm = list(node.attributes["perm"].as_ints()) if "perm" in node.attributes else []
        if not perm or perm[0] != 0 or _only_use(value) is not matmul:
            return None
        transpose, reader, node = node, node, node.inputs[0].producer()
    if node is None or _only_use(node.outputs[0]) is not reader or _merge(node) is None:
        return None
    return node, transpose


def _same_sizes(a: list[Size], b: list[Size]) -> bool:
    """Whether two operands' leading sizes are equal wherever their merged MatMul runs: the same, or the same
    but for one symbolic size each at one position with every other size static (the merged products must
    match — neither can broadcast, being a multiple of at least 2 — so those two are equal too)."""
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if not differ:
        return True
    rest = [x for i, x in enumerate(a) if i != differ[0]]
    x, y = a[differ[0]], b[differ[0]]
    return len(differ) == 1 and all(not r[1] for r in rest) and x[0] == y[0] and len(x[1]) == len(y[1]) == 1 \
        and x[0] * int(np.prod([r[0] for r in rest])) >= 2


def _unmerge(model: ir.Model, matmul: ir.Node) -> bool:
    """Rewrite one merge → MatMul → split (see the module docstring) in place."""
    if matmul.op_type != "MatMul" or len(matmul.inputs) != 2:
        return False
    operands = [_operand(v, matmul) for v in matmul.inputs]
    split = _only_use(matmul.outputs[0])
    target = const_of(split.inputs[1]) if split is not None and split.op_type == "Reshape" else None
    if None in operands or target is None or np.any(target == 0) or attr_int(split, "allowzero", 0):
        return False
    merges = [_merge(reshape) for reshape, _ in operands]
    lead = merges[0][0]
    leading = [[_dim(r.inputs[0], a, d) for a, d in enumerate(r.inputs[0].shape.dims[:lead])] for r, _ in operands]
    if merges[1][0] != lead or not _same_sizes(*leading):
        return False
    for (reshape, transpose), (_, rest) in zip(operands, merges, strict=True):
        kept = np.concatenate([np.zeros(lead, np.int64), rest])
        reshape.replace_input_with(1, add_constant(model, f"{reshape.outputs[0].name}_unmerged", kept))
        reshape.outputs[0].shape = None
        if transpose is not None:
            perm = list(transpose.attributes["perm"].as_ints())
            transpose.attributes["perm"] = ir.AttrInt64s("perm", list(range(lead)) + [p + lead - 1 for p in perm[1:]])
            transpose.outputs[0].shape = None
    matmul.outputs[0].shape = None
    return True


def fold_batch_merges(model: ir.Model) -> int:
    """Drop the batch·heads merges around batched MatMuls (see the module docstring); returns how many."""
    count = sum(1 for node in list(model.graph) if _unmerge(model, node))
    if count:
        RemoveUnusedNodesPass()(model)
    return count
