"""Model size and cost: parameters, multiply-accumulates (per unit of every symbolic dim), file size."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.analysis.blocks import removed_nodes
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.plan import PruningPlan
from graphprune.analysis.weights import stored_weight
from graphprune.canonicalize.constants import origin
from graphprune.io.save import model_files
from graphprune.ir.values import shape_of
from graphprune.ops.recurrent import GATES
from graphprune.verify.polynomial import Poly


@dataclass
class Cost:
    params: int
    macs: int
    bytes: int | None = None
    formula: Poly | None = None  # MACs in the symbolic sizes (None for projections)

    def row(self) -> dict:
        return {"params": self.params, "macs": self.macs, "bytes": self.bytes,
                "macs_formula": None if self.formula is None else str(self.formula)}


def _numel(shape: list | None) -> int:
    if shape is None:
        return 0
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape]))


def weight_elements(value: ir.Value) -> int:
    """Real values a weight initializer holds: its elements (packed sub-byte ones count each value); 0 for
    integer shape constants, quantization scales and zero points."""
    tensor = value.const_value
    weight = stored_weight(value) if tensor is not None else None
    if weight is None or not (tensor.dtype.is_floating_point() or weight.quantized):
        return 0
    return int(np.prod(tensor.shape.numpy())) * (weight.encoding.per_element if weight.quantized else 1)


def _distinct_initializers(model: ir.Model) -> list[ir.Value]:
    """Initializers of every graph (If/Loop/Scan bodies too), one per tensor (per-reader copies of a shared
    constant count once)."""
    values = reversed([v for graph in model.graphs() for v in graph.initializers.values()])
    return list({id(origin(v.const_value)): v for v in values if v.const_value is not None}.values())


def count_params(model: ir.Model) -> int:
    """Real values of the model's weights, float or quantized."""
    return sum(weight_elements(value) for value in _distinct_initializers(model))


def _numel_poly(shape: list | None) -> Poly:
    total = Poly.of(1)
    for size in shape or []:
        total = total * Poly.of(size)
    return total


def _conv(node: ir.Node, data: int, weight: int) -> Poly:
    w, y, x = (shape_of(node.inputs[weight]), shape_of(node.outputs[0]), shape_of(node.inputs[data]))
    if w is None or y is None or x is None:
        return Poly()
    spatial = x[2:] if node.op_type == "ConvTranspose" else y[2:]
    return _numel_poly(y[:1]) * _numel_poly(spatial) * _numel(w)


def _matmul(node: ir.Node, data: int, weight: int) -> Poly:
    a, y = shape_of(node.inputs[data]), shape_of(node.outputs[0])
    if a is None or y is None or not a:
        return Poly()
    trans_a = "Gemm" in node.op_type and node.attributes.get("transA") and node.attributes["transA"].as_int()
    return _numel_poly(y) * Poly.of(a[0] if trans_a else a[-1])


def _einsum(node: ir.Node, data: int, weight: int) -> Poly:
    """Π of the sizes of every index letter (and of the '...' axes): each combination is one multiply-add."""
    equation = node.attributes["equation"].as_string().replace(" ", "")
    terms = equation.split("->")[0].split(",")
    sizes: dict[str, int | str | None] = {}
    ellipsis: list = []
    for term, value in zip(terms, node.inputs, strict=False):
        shape = shape_of(value)
        if shape is None:
            return Poly()
        explicit = term.replace("...", "")
        if "..." in term:
            before = term.index("...")
            count = len(shape) - len(explicit)
            ellipsis = max(ellipsis, shape[before:before + count], key=len)
            shape = shape[:before] + shape[before + count:]
        for letter, size in zip(explicit, shape, strict=False):
            if sizes.get(letter) in (None, 1):
                sizes[letter] = size
    return _numel_poly(list(sizes.values()) + ellipsis)


def _attention(node: ir.Node, data: int, weight: int) -> Poly:
    """Fused attention: the packed QKV projection (com.microsoft Attention), then Q·Kᵀ and A·V, each
    batch · S_q · S_kv · hidden (K and V: the query itself when not given)."""
    query = shape_of(node.inputs[0])
    if query is None or len(query) != 3:
        return Poly()
    projection, hidden = Poly(), query[2]
    if node.op_type == "Attention":
        w = shape_of(node.inputs[1])
        if w is None or not isinstance(w[1], int):
            return Poly()
        projection, hidden = _numel_poly(query) * w[1], w[1] // 3
    key = shape_of(node.inputs[1]) if node.op_type != "Attention" and len(node.inputs) > 1 else None
    kv_length = key[1] if key is not None and len(key) == 3 else query[1]
    return projection + _numel_poly([query[0], query[1], kv_length, hidden]) * 2


def _recurrent(node: ir.Node, data: int, weight: int) -> Poly:
    """Every step, every direction: G gate blocks of H units read the input (W) and the hidden state (R)."""
    x, hidden = shape_of(node.inputs[data]), node.attributes.get("hidden_size")
    w = shape_of(node.inputs[weight])
    if x is None or len(x) != 3 or w is None or hidden is None:
        return Poly()
    units = GATES[node.op_type] * hidden.as_int()
    return _numel_poly([x[0], x[1], w[0]]) * units * (Poly.of(x[2]) + Poly.of(hidden.as_int()))


# op → (counter, data input, weight input): multiply-accumulates of the ops that do arithmetic at scale
_COUNTERS = {
    "Conv": (_conv, 0, 1), "ConvTranspose": (_conv, 0, 1), "QLinearConv": (_conv, 0, 3),
    "ConvInteger": (_conv, 0, 1), "Gemm": (_matmul, 0, 1), "MatMul": (_matmul, 0, 1),
    "QGemm": (_matmul, 0, 3), "QLinearMatMul": (_matmul, 0, 3), "MatMulInteger": (_matmul, 0, 1),
    "MatMulIntegerToFloat": (_matmul, 0, 1), "DynamicQuantizeMatMul": (_matmul, 0, 1),
    "MatMulNBits": (_matmul, 0, 1), "FusedMatMul": (_matmul, 0, 1), "Einsum": (_einsum, 0, 1),
    "Attention": (_attention, 0, 1), "MultiHeadAttention": (_attention, 0, -1),
    "GroupQueryAttention": (_attention, 0, -1),
    "LSTM": (_recurrent, 0, 1), "GRU": (_recurrent, 0, 1), "RNN": (_recurrent, 0, 1),
    "DynamicQuantizeLSTM": (_recurrent, 0, 1),
}


def node_macs(node: ir.Node) -> Poly:
    """Multiply-accumulates of one node, as a polynomial in the graph's symbolic sizes."""
    counter, data, weight = _COUNTERS.get(node.op_type, (None, 0, 1))
    return counter(node, data, weight) if counter is not None else Poly()


def macs(model: ir.Model) -> Poly:
    """Multiply-accumulates of the whole graph, as a polynomial in its symbolic sizes. Control-flow bodies count
    once each: every If branch (an upper bound: one runs), a Loop or Scan body for one iteration."""
    total = Poly()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        total = total + node_macs(node)
    return total


def cost(model: ir.Model, path: str | os.PathLike | None = None, dims: dict[str, int] | None = None) -> Cost:
    """Params and MACs of `model` (symbolic sizes from `dims`, else 1; the formula kept); bytes on disk of
    `path` (and its external data) when given."""
    size = None
    if path is not None:
        size = sum(file.stat().st_size for file in model_files(path))
    formula = macs(model)
    return Cost(count_params(model), formula.evaluate(dims), size, formula)


def kept_fractions(analysis: Analysis, plan: PruningPlan) -> dict[tuple[int, int], float]:
    """(id(value), axis) → fraction of positions a plan keeps, for every tensor axis it shrinks."""
    removed: dict[tuple[int, int], set[int]] = {}
    sizes: dict[tuple[int, int], int] = {}
    fractions: dict[tuple[int, int], float] = {}
    for gid, units in plan.removed.items():
        group = analysis.group(gid)
        for member in group.members:
            key = (id(member.value), member.axis)
            removed.setdefault(key, set()).update(member.positions(units).tolist())
            sizes[key] = len(member.unit_of)
        for unit in units.tolist() if group.blocks is not None else []:
            fractions.update({(id(weight), 0): 0.0 for weight in group.blocks[unit].weights})
    return {key: 1.0 - len(positions) / sizes[key] for key, positions in removed.items()} | fractions


def _fraction(fractions: dict[tuple[int, int], float], value: ir.Value | None, rank: int) -> float:
    if value is None:
        return 1.0
    return float(np.prod([fractions.get((id(value), axis), 1.0) for axis in range(rank)]))


def projected_cost(analysis: Analysis, plan: PruningPlan, dims: dict[str, int] | None = None) -> Cost:
    """Params and MACs `plan` would leave (symbolic sizes from `dims`, else 1), computed without rewriting:
    weights shrink by the kept fraction of each pruned axis; a layer's MACs by its weight's (or, for products
    of activations, its output's) fraction."""
    fractions = kept_fractions(analysis, plan)
    params = 0.0
    for value in _distinct_initializers(analysis.model):
        elements = weight_elements(value)
        if elements:
            params += elements * _fraction(fractions, value, value.const_value.shape.rank())
    total = sum(projected_node_macs(analysis, plan, dims, fractions).values())
    return Cost(int(round(params)), int(round(total)))


def projected_node_macs(analysis: Analysis, plan: PruningPlan, dims: dict[str, int] | None = None,
                        fractions: dict[tuple[int, int], float] | None = None) -> dict[int, float]:
    """id(node) → the MACs `plan` would leave that node (nodes with none left out), as `projected_cost` counts."""
    fractions = kept_fractions(analysis, plan) if fractions is None else fractions
    dead = set().union(*(removed_nodes(analysis.group(gid), units) for gid, units in plan.removed.items()
                         if analysis.group(gid).blocks is not None))
    counted = {}
    for node in ir.traversal.RecursiveGraphIterator(analysis.model.graph):  # counted as `macs` counts
        base = node_macs(node).evaluate(dims) if id(node) not in dead else 0
        if not base:
            continue
        index = _COUNTERS[node.op_type][2]
        stored = stored_weight(node.inputs[index]) if 0 <= index < len(node.inputs) and node.inputs[index] else None
        if stored is not None:
            counted[id(node)] = base * _fraction(fractions, stored.value, stored.value.const_value.shape.rank())
        else:
            out = node.outputs[0]
            counted[id(node)] = base * _fraction(fractions, out, len(out.shape) if out.shape is not None else 0)
    return counted
