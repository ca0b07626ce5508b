"""Canonicalisation at load: rewrite provably equivalent op sequences into forms the dimension rules model.

- Static shape reads: exporters read sizes with Shape → Gather/Slice and compute reshape targets from them
  (`x.view(b, s, heads, -1)`, `kv_heads * n_rep`). Entries that are static in the inferred shape become
  constants, and small integer arithmetic over constants is folded, so the rules see constant targets.
- Pass-throughs: `Reshape(vector, [-1])` of a 1-D vector, and the legacy exporter's
  `Where(Equal(s, -1), 1, s)` over shape vectors whose entries are constants or sizes read with Shape.
- Constants (canonicalize/constants.py): shared constants copied per reader, layout ops on weights folded lazily.
- Reshape targets that copy the input's own sizes: `x.view(x.size(0), -1)`, `x.view(b, s, heads, -1)` with b, s
  read from x — the runtime entries read Shape(x)[i] at position i, which Reshape's 0 ("copy this size")
  states as a constant: the target becomes constant and the Reshape rule can prove how axes regroup.
- Tensordot on N-D inputs (Keras Dense via tf2onnx): `Reshape(x, [-1, d]) → MatMul(W) → Reshape(Concat(Shape(x)[:-1],
  [F]))` is `MatMul(x, W)`, whose batched form the rules model directly.
- Batched attention over merged axes (canonicalize/batch_merges.py): runtime Reshape targets with one unknown
  entry become constants (-1), and batch·heads merges around batched MatMuls are dropped (Keras MultiHeadAttention).
- Transpose sandwiches: the dynamo exporter transposes K in scaled-dot-product attention as
  Reshape([B, H, S, D] → [B·H, S, D]) → Transpose → Reshape(→ [B, H, D, S]); the merged B·H axis has a
  symbolic size, so no rule can map heads through it. When shapes prove the sandwich restores the merged
  prefix, it is one Transpose.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from graphprune.ir.edits import add_constant, insert_node
from graphprune.ir.values import const_of, covered_axes, picked_positions, shape_of

_FOLDABLE_ELEMENTS = 64  # shape arithmetic only: never fold weights


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _axes(node: ir.Node, values: list) -> list[int]:
    return list(_attr(node, "axes", None) or (values[1].tolist() if len(values) > 1 else []))


_FOLDERS: dict[str, Callable[[ir.Node, list[np.ndarray]], np.ndarray]] = {
    "Unsqueeze": lambda n, v: np.expand_dims(v[0], tuple(a + v[0].ndim + len(_axes(n, v)) if a < 0 else a
                                                         for a in _axes(n, v))),
    "Squeeze": lambda n, v: np.squeeze(v[0], tuple(_axes(n, v)) or None),
    "Concat": lambda n, v: np.concatenate(v, axis=_attr(n, "axis", 0)),
    "Gather": lambda n, v: np.take(v[0], v[1], axis=_attr(n, "axis", 0)),
    "Mul": lambda n, v: v[0] * v[1],
    "Add": lambda n, v: v[0] + v[1],
    "Sub": lambda n, v: v[0] - v[1],
    "Div": lambda n, v: v[0] // v[1] if np.issubdtype(v[0].dtype, np.integer) else v[0] / v[1],
    "Identity": lambda n, v: v[0],
    "Mod": lambda n, v: np.fmod(v[0], v[1]) if _attr(n, "fmod", 0) else np.mod(v[0], v[1]),
    "Reshape": lambda n, v: v[0].reshape([d if d != 0 else v[0].shape[i] for i, d in enumerate(v[1].tolist())]),
    "ConstantOfShape": lambda n, v: np.full(v[0].astype(np.int64), _fill_value(n)),
}


def _fill_value(node: ir.Node) -> np.ndarray:
    attr = node.attributes.get("value")
    return attr.value.numpy().reshape(()) if attr is not None else np.float32(0)


def _static_shape_entries(node: ir.Node) -> np.ndarray | None:
    """The value of a Shape node's output when every entry it covers is static."""
    shape = shape_of(node.inputs[0])
    if shape is None:
        return None
    entries = [shape[i] for i in covered_axes(node, len(shape))]
    return np.array(entries, dtype=np.int64) if all(isinstance(d, int) for d in entries) else None


def _fold_shape_read(node: ir.Node) -> np.ndarray | None:
    """Gather or Slice of a Shape vector that selects only static entries."""
    source = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    shape = shape_of(source.inputs[0]) if source is not None and source.op_type == "Shape" else None
    if shape is None:
        return None
    covered = covered_axes(source, len(shape))
    picked = picked_positions(node, len(covered))
    if picked is None:
        return None
    values = [shape[covered[i]] for i in np.atleast_1d(picked)]
    if not all(isinstance(v, int) for v in values):
        return None
    return np.array(values, dtype=np.int64).reshape(np.shape(picked))


def _folded_value(node: ir.Node, opset: int) -> np.ndarray | None:
    if len(node.outputs) != 1:
        return None
    if node.op_type == "Shape":
        return _static_shape_entries(node)
    if node.op_type in ("Gather", "Slice"):
        read = _fold_shape_read(node)
        if read is not None:
            return read
    values = [const_of(v) for v in node.inputs if v is not None]
    if not values or any(v is None or v.size > _FOLDABLE_ELEMENTS for v in values):
        return None
    if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLDED:
        return None
    folder = _FOLDERS.get(node.op_type)
    if folder is not None:
        return np.asarray(folder(node, values))
    if any(np.issubdtype(v.dtype, np.floating) for v in values) or node.op_type in _NEVER_FOLDED:
        return None  # shape arithmetic only: weights (and their quantized forms) stay as they are stored
    result = _evaluated(node, opset)
    return None if result is None or np.issubdtype(result.dtype, np.floating) else result


_NEVER_FOLDED = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "If", "Loop", "Scan", "SequenceConstruct", "SequenceInsert", "SequenceAt",
                 "SplitToSequence", "ConcatFromSequence", "Optional", "OptionalGetElement", "DequantizeLinear",
                 "QuantizeLinear", "DynamicQuantizeLinear"}


def _evaluated(node: ir.Node, opset: int) -> np.ndarray | None:
    """Any other standard op over small integer constants, computed by ONNX's reference implementation (the
    legacy exporter writes F.pad's pads as ConstantOfShape → Concat → Reshape → Slice → Transpose → Cast)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    inputs = [v.name if v is not None else "" for v in node.inputs]
    attrs = {name: attr.value for name, attr in node.attributes.items()
             if attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS, ir.AttributeType.TENSOR)}
    if len(attrs) != len(node.attributes):
        return None
    proto = onnx.helper.make_node(node.op_type, inputs, ["y"], **attrs)
    feeds = {v.name: const_of(v) for v in node.inputs if v is not None}
    graph = onnx.helper.make_graph([proto], "fold", [], [onnx.helper.make_empty_tensor_value_info("y")],
                                   [onnx.numpy_helper.from_array(a, n) for n, a in feeds.items()])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    (result,) = ReferenceEvaluator(model).run(None, {})
    return np.asarray(result)


def _fold_static_shape(model: ir.Model, node: ir.Node) -> bool:
    """Replace a static shape read or constant shape arithmetic by a constant."""
    try:
        value = _folded_value(node, model.opset_imports.get("", 1))
    except Exception:  # noqa: BLE001 - a form the folders do not handle stays as it is
        return False
    output = node.outputs[0] if node.outputs else None
    if value is None or output is None or output.is_graph_output() or not output.uses():
        return False
    dtype = output.dtype.numpy() if output.dtype is not None else value.dtype
    output.replace_all_uses_with(add_constant(model, f"{output.name}_folded", value.astype(dtype)))
    return True


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


def _is_size_read(value: ir.Value) -> bool:
    """A runtime entry of a shape vector that is a size read with Shape (so never -1)."""
    node = value.producer()
    while node is not None and node.op_type in ("Unsqueeze", "Squeeze", "Cast", "Gather", "Slice"):
        if node.op_type in ("Gather", "Slice") and node.inputs[0].producer() is not None \
                and node.inputs[0].producer().op_type == "Shape":
            return True
        node = node.inputs[0].producer()
    return node is not None and node.op_type == "Shape"


def _never_minus_one(vector: ir.Value) -> bool:
    """Every entry of a 1-D shape vector is a constant other than -1 or a size read with Shape."""
    array = const_of(vector)
    if array is not None:
        return bool(np.all(array != -1))
    node = vector.producer()
    if node is None:
        return False
    if node.op_type == "Reshape" and shape_of(vector) is not None and len(shape_of(vector)) == 1:
        return _never_minus_one(node.inputs[0])
    if node.op_type == "Concat":
        return all(_never_minus_one(piece) for piece in node.inputs)
    return _is_size_read(vector)


def _same_vector(node: ir.Node) -> ir.Value | None:
    """The input an op provably passes through unchanged: Reshape of a 1-D vector to [-1], or the
    exporters' `Where(Equal(s, -1), 1, s)` (replace -1 by 1) over a vector without -1 entries."""
    if node.op_type == "Reshape":
        target, shape = const_of(node.inputs[1]), shape_of(node.inputs[0])
        if target is not None and target.tolist() == [-1] and shape is not None and len(shape) == 1:
            return node.inputs[0]
    if node.op_type == "Where" and len(node.inputs) == 3:
        condition, vector = node.inputs[0].producer(), node.inputs[2]
        if condition is None or condition.op_type != "Equal" or vector not in condition.inputs:
            return None
        other = condition.inputs[1 - list(condition.inputs).index(vector)]
        minus_one = const_of(other)
        if minus_one is not None and np.all(minus_one == -1) and _never_minus_one(vector):
            return vector
    return None


def _bypass_pass_through(model: ir.Model, node: ir.Node) -> bool:
    """Point the readers of an op that provably returns its input (see _same_vector) at that input."""
    same = _same_vector(node)
    if same is None or node.outputs[0].is_graph_output():
        return False
    node.outputs[0].replace_all_uses_with(same)
    return True


_Entry = tuple[str, int]  # ("const", value) or ("read", i): Shape(x)[i]


def _shape_entries(value: ir.Value, data: ir.Value) -> list[_Entry] | None:
    """A piece of a shape vector as entries: constants, or reads of Shape(data)[i]; None when it is anything
    else. Reads through Cast, Unsqueeze, Squeeze."""
    array = const_of(value)
    if array is not None:
        return [("const", int(v)) for v in np.atleast_1d(array)] if array.ndim <= 1 else None
    node = value.producer()
    while node is not None and node.op_type in ("Cast", "Unsqueeze", "Squeeze"):
        node = node.inputs[0].producer()
    rank = len(shape_of(data) or [])
    if node is not None and node.op_type == "Shape" and node.inputs[0] is data:
        return [("read", i) for i in covered_axes(node, rank)]
    source = node.inputs[0].producer() if node is not None and node.inputs and node.inputs[0] is not None else None
    while source is not None and source.op_type == "Cast":  # tf2onnx casts the shape vector to int32 and back
        source = source.inputs[0].producer()
    if source is None or source.op_type != "Shape" or source.inputs[0] is not data:
        return None
    covered = covered_axes(source, rank)
    picked = picked_positions(node, len(covered))
    return None if picked is None else [("read", covered[int(i)]) for i in np.atleast_1d(picked)]


def _copied_target(node: ir.Node) -> np.ndarray | None:
    """The constant equivalent of a Reshape target whose runtime entries each read the input's size at their
    own position (written as 0, "copy"); None unless every runtime entry does (and allowzero is off)."""
    target = node.inputs[1].producer() if len(node.inputs) > 1 and node.inputs[1] is not None else None
    while target is not None and target.op_type == "Cast":
        target = target.inputs[0].producer()
    if node.op_type != "Reshape" or target is None or target.op_type != "Concat" or _attr(node, "allowzero", 0):
        return None
    entries: list[_Entry] = []
    for piece in target.inputs:
        part = _shape_entries(piece, node.inputs[0])
        if part is None:
            return None
        entries += part
    if any(kind == "read" and index != position for position, (kind, index) in enumerate(entries)):
        return None
    return np.array([0 if kind == "read" else value for kind, value in entries], dtype=np.int64)


def _fold_copied_target(model: ir.Model, node: ir.Node) -> bool:
    """Replace a Reshape target whose runtime entries copy the input's own sizes by a constant."""
    target = _copied_target(node)
    if target is None:
        return False
    node.replace_input_with(1, add_constant(model, f"{node.outputs[0].name}_target", target))
    return True


def _fold_sandwich(model: ir.Model, node: ir.Node) -> bool:
    """Replace a provable Reshape→Transpose→Reshape sandwich starting at `node` with one Transpose."""
    match = _sandwich_perm(node) if node.op_type == "Reshape" else None
    if match is None:
        return False
    last, perm = match
    result = last.outputs[0]
    result.replace_all_uses_with(insert_node(model, last, "Transpose", [node.inputs[0]], f"{result.name}_folded",
                                             result, {"perm": perm}))
    return True


def _each_node(model: ir.Model, rewrite: Callable[[ir.Model, ir.Node], bool]) -> int:
    """Offer every main-graph node to `rewrite` once, in order; drop what became dead; count rewrites."""
    count = sum(1 for node in list(model.graph) if node.graph is model.graph and rewrite(model, node))
    if count:
        RemoveUnusedNodesPass()(model)
    return count


def fold_static_shapes(model: ir.Model) -> int:
    """Static shape reads and constant shape arithmetic become constants; returns how many nodes."""
    return _each_node(model, _fold_static_shape)


def fold_pass_throughs(model: ir.Model) -> int:
    """Ops that provably return their input are bypassed; returns how many."""
    return _each_node(model, _bypass_pass_through)


def _fold_tensordot(model: ir.Model, node: ir.Node) -> bool:
    """Replace flatten → MatMul(weight) → unflatten-by-the-input's-own-sizes with one batched MatMul."""
    matmul = node.inputs[0].producer() if node.op_type == "Reshape" else None
    flatten = matmul.inputs[0].producer() if matmul is not None and matmul.op_type == "MatMul" else None
    if flatten is None or flatten.op_type != "Reshape" or len(matmul.outputs[0].uses()) != 1 \
            or len(flatten.outputs[0].uses()) != 1 or const_of(matmul.inputs[1]) is None:
        return False
    x, weight = flatten.inputs[0], const_of(matmul.inputs[1])
    x_shape, flat_target = shape_of(x), const_of(flatten.inputs[1])
    if x_shape is None or len(x_shape) < 3 or weight.ndim != 2 or flat_target is None \
            or flat_target.tolist() != [-1, x_shape[-1]] or x_shape[-1] != weight.shape[0]:
        return False
    target = node.inputs[1].producer()
    while target is not None and target.op_type == "Cast":
        target = target.inputs[0].producer()
    if target is None or target.op_type != "Concat":
        return False
    entries = [e for piece in target.inputs for e in (_shape_entries(piece, x) or [("bad", 0)])]
    wanted = [("read", i) for i in range(len(x_shape) - 1)] + [("const", int(weight.shape[1]))]
    if entries != wanted:
        return False
    result = node.outputs[0]
    batched = insert_node(model, node, "MatMul", [x, matmul.inputs[1]], f"{result.name}_batched", result)
    result.replace_all_uses_with(batched, replace_graph_outputs=True)
    return True


def fold_tensordots(model: ir.Model) -> int:
    """Flatten → MatMul → unflatten by the input's sizes becomes a batched MatMul; returns how many."""
    return _each_node(model, _fold_tensordot)


def fold_copied_targets(model: ir.Model) -> int:
    """Reshape targets whose runtime entries copy the input's sizes become constants; returns how many."""
    return _each_node(model, _fold_copied_target)


def fold_transpose_sandwiches(model: ir.Model) -> int:
    """Provable Reshape→Transpose→Reshape sandwiches become one Transpose; returns how many."""
    return _each_node(model, _fold_sandwich)


_VALUE_PRESERVING = ("Slice", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Identity", "Cast", "Transpose", "Gather")
# (domain, op) → initial_h (initial_c): omitted means zeros
_RECURRENT_STATES = {("", "LSTM"): (5, 6), ("", "GRU"): (5,), ("", "RNN"): (5,),
                     ("com.microsoft", "DynamicQuantizeLSTM"): (5, 6)}


def _all_zeros(value: ir.Value | None) -> bool:
    """Whether every element of `value` is provably 0: a zero constant, or a zero ConstantOfShape fill seen
    through ops that only move or select elements."""
    for _ in range(16):
        if value is None:
            return False
        constant = const_of(value)
        if constant is not None:
            return constant.size > 0 and not np.any(constant)
        node = value.producer()
        if node is None:
            return False
        if node.op_type == "ConstantOfShape":
            return not np.any(_fill_value(node))
        if node.op_type not in _VALUE_PRESERVING or node.outputs[0] is not value:
            return False
        value = node.inputs[0]
    return False


def _drop_zero_states(model: ir.Model, node: ir.Node) -> bool:
    """A recurrent layer's initial state that is all zeros is the default: the input is omitted."""
    dropped = False
    domain = "" if node.domain == "ai.onnx" else node.domain
    for index in _RECURRENT_STATES.get((domain, node.op_type), ()):
        if index < len(node.inputs) and node.inputs[index] is not None and _all_zeros(node.inputs[index]):
            node.replace_input_with(index, None)
            dropped = True
    return dropped


def fold_zero_initial_states(model: ir.Model) -> int:
    """Zero initial states of LSTM/GRU/RNN and DynamicQuantizeLSTM (the legacy exporter builds them from
    ConstantOfShape) are dropped, so the hidden axis no longer runs into a shape computation; returns how many."""
    return _each_node(model, _drop_zero_states)
