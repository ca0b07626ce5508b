"""Model size and cost: parameters, multiply-accumulates (per unit of every symbolic dim), file size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphprune.analysis import Analysis
from graphprune.plan import PruningPlan
from graphprune.values import shape_of
from graphprune.weights import stored_weight


@dataclass
class Cost:
    params: int
    macs: int
    bytes: int | None = None

    def row(self) -> dict:
        return {"params": self.params, "macs": self.macs, "bytes": self.bytes}


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


def count_params(model: ir.Model) -> int:
    """Real values of the model's weights, float or quantized."""
    return sum(weight_elements(value) for value in model.graph.initializers.values())


# op → (convolution or matrix product, data input, weight input) for counting MACs
_PRODUCTS = {
    "Conv": ("conv", 0, 1), "ConvTranspose": ("conv", 0, 1), "QLinearConv": ("conv", 0, 3),
    "ConvInteger": ("conv", 0, 1), "Gemm": ("matmul", 0, 1), "MatMul": ("matmul", 0, 1),
    "QGemm": ("matmul", 0, 3), "QLinearMatMul": ("matmul", 0, 3), "MatMulInteger": ("matmul", 0, 1),
    "MatMulIntegerToFloat": ("matmul", 0, 1), "DynamicQuantizeMatMul": ("matmul", 0, 1),
    "MatMulNBits": ("matmul", 0, 1),
}


def _node_macs(node: ir.Node) -> int:
    """Multiply-accumulates of one node; symbolic dims (batch, sequence) count as 1."""
    kind, data, weight = _PRODUCTS.get(node.op_type, (None, 0, 1))
    if kind == "conv":
        w, y = shape_of(node.inputs[weight]), shape_of(node.outputs[0])
        x = shape_of(node.inputs[data])
        if w is None or y is None or x is None:
            return 0
        spatial = _numel(x[2:]) if node.op_type == "ConvTranspose" else _numel(y[2:])
        batch = _numel(y[:1])
        return batch * spatial * _numel(w)
    if kind == "matmul":
        a, y = shape_of(node.inputs[data]), shape_of(node.outputs[0])
        if a is None or y is None or not a:
            return 0
        trans_a = "Gemm" in node.op_type and node.attributes.get("transA") and node.attributes["transA"].as_int()
        k = a[0] if trans_a else a[-1]
        return _numel(y) * (k if isinstance(k, int) else 1)
    return 0


def cost(model: ir.Model, path: str | os.PathLike | None = None) -> Cost:
    """Params and MACs of `model`; bytes on disk of `path` (and its external data) when given."""
    size = None
    if path is not None:
        path = Path(path)
        data = path.with_name(path.name + ".data")
        size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return Cost(count_params(model), sum(_node_macs(n) for n in model.graph), size)


def kept_fractions(analysis: Analysis, plan: PruningPlan) -> dict[tuple[int, int], float]:
    """(id(value), axis) → fraction of positions a plan keeps, for every tensor axis it shrinks."""
    removed: dict[tuple[int, int], set[int]] = {}
    sizes: dict[tuple[int, int], int] = {}
    for gid, units in plan.removed.items():
        for member in analysis.group(gid).members:
            key = (id(member.value), member.axis)
            removed.setdefault(key, set()).update(member.positions(units).tolist())
            sizes[key] = len(member.unit_of)
    return {key: 1.0 - len(positions) / sizes[key] for key, positions in removed.items()}


def _fraction(fractions: dict[tuple[int, int], float], value: ir.Value | None, rank: int) -> float:
    if value is None:
        return 1.0
    return float(np.prod([fractions.get((id(value), axis), 1.0) for axis in range(rank)]))


def projected_cost(analysis: Analysis, plan: PruningPlan) -> Cost:
    """Params and MACs `plan` would leave, computed without rewriting: weights shrink by the kept fraction of
    each pruned axis; a layer's MACs by its weight's (or, for attention products, its output's) fraction."""
    fractions = kept_fractions(analysis, plan)
    model = analysis.model
    params = 0.0
    for value in model.graph.initializers.values():
        elements = weight_elements(value)
        if elements:
            params += elements * _fraction(fractions, value, value.const_value.shape.rank())
    macs = 0.0
    for node in model.graph:
        base = _node_macs(node)
        if not base:
            continue
        index = _PRODUCTS[node.op_type][2]
        stored = stored_weight(node.inputs[index]) if len(node.inputs) > index and node.inputs[index] else None
        if stored is not None:
            macs += base * _fraction(fractions, stored.value, stored.value.const_value.shape.rank())
        else:
            out = node.outputs[0]
            macs += base * _fraction(fractions, out, len(out.shape) if out.shape is not None else 0)
    return Cost(int(round(params)), int(round(macs)))
