"""Rewrite: physically remove planned units — slice every member initializer, let each op rule fix its
shape-carrying attributes and constants, update tensor shapes, and drop what became dead. Run as passes:
`SlicePlan`, then onnx-ir's dead-node removal, then `ReshareConstants`."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult
from onnx_ir.passes.common import RemoveUnusedNodesPass

from graphprune import ops
from graphprune.analysis.blocks import bypass
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group
from graphprune.analysis.plan import PruningPlan
from graphprune.canonicalize.constants import origin, reshare_constants
from graphprune.errors import PlanError
from graphprune.ir.passes import PassManager
from graphprune.ir.values import const_of, shape_of
from graphprune.ops.layout import size_product
from graphprune.passes.rewrite.compensation import BiasDeltas, WeightUpdates, apply_bias_deltas, apply_weight_updates

_Key = tuple[int, int]  # (id(value), axis)


class _Rewriter:
    """Implements the rules' RewriteContext for one plan."""

    def __init__(self, analysis: Analysis, plan: PruningPlan, deltas: BiasDeltas | None = None,
                 weights: WeightUpdates | None = None) -> None:
        self.model = analysis.model
        self.deltas = deltas or {}
        self.weights = weights or {}
        self.values: dict[_Key, ir.Value] = {}
        self.removed: dict[_Key, set[int]] = {}
        self.sizes: dict[_Key, int] = {}
        self.periodic: set[_Key] = set()  # merged batch·channel axes (sizes[key] is the period)
        self.shapes: dict[int, list] = {}
        self._names = itertools.count()
        self._slices: dict[tuple, ir.LazyTensor] = {}  # copies of one shared tensor sliced alike share the slice
        self.experts = [(analysis.group(gid), units) for gid, units in plan.removed.items()
                        if analysis.group(gid).experts is not None]
        self.blocks = [(analysis.group(gid), units) for gid, units in plan.removed.items()
                       if analysis.group(gid).blocks is not None]
        for gid, units in plan.removed.items():
            for member in analysis.group(gid).members:
                positions = member.positions(units)
                if positions.size:
                    key = (id(member.value), member.axis)
                    self.values[key] = member.value
                    self.sizes[key] = len(member.unit_of)
                    if member.periodic:
                        self.periodic.add(key)
                    self.removed.setdefault(key, set()).update(positions.tolist())

    # RewriteContext ------------------------------------------------------------------------
    def kept(self, value: ir.Value | None, axis: int) -> np.ndarray | None:
        key = (id(value), axis)
        if value is None or key not in self.removed:
            return None
        return np.setdiff1d(np.arange(self.sizes[key]), sorted(self.removed[key]))

    def period(self, value: ir.Value | None, axis: int) -> int | None:
        key = (id(value), axis)
        return self.sizes[key] if key in self.periodic and key in self.removed else None

    def shape(self, value: ir.Value | None) -> list | None:
        if value is None:
            return None
        return self.shapes.setdefault(id(value), shape_of(value))

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        return const_of(value)

    def opset(self, domain: str = "") -> int:
        return self.model.opset_imports.get(domain, 1)

    def new_const(self, array: np.ndarray) -> ir.Value:
        name = f"graphprune_const_{next(self._names)}"
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.shape = ir.Shape(array.shape)
        value.dtype = value.const_value.dtype
        self.model.graph.register_initializer(value)
        return value

    def set_input_const(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, self.new_const(array))

    def add_node(self, op_type: str, inputs: list[ir.Value], attributes: dict, before: ir.Node) -> ir.Value:
        new = ir.node(op_type, inputs, attributes, name=f"graphprune_{op_type}_{next(self._names)}")
        new.outputs[0].name = f"{new.name}_output"
        before.graph.insert_before(before, new)
        return new.outputs[0]

    def set_attr(self, node: ir.Node, attr: ir.Attr) -> None:
        node.attributes[attr.name] = attr

    # the rewrite ---------------------------------------------------------------------------
    def run(self) -> None:
        for group, units in self.blocks:
            for unit in units.tolist():
                bypass(group.blocks[unit])
        for group, units in self.experts:
            self._remove_experts(group, units)
        apply_weight_updates(self.weights)  # on the full-size tensors, read with their original encodings
        apply_bias_deltas(self.model, self.deltas, self._prune_like_output)
        pruned_ids = {key[0] for key in self.removed}
        for node in list(ir.traversal.RecursiveGraphIterator(self.model.graph)):  # If/Loop/Scan bodies too
            touched = any(v is not None and id(v) in pruned_ids for v in (*node.inputs, *node.outputs))
            rule = ops.lookup(node)
            if touched and rule is not None:
                rule.rewrite(self, node)
        by_value: dict[int, list[int]] = {}
        for (vid, axis) in self.removed:
            by_value.setdefault(vid, []).append(axis)
        for vid, axes in by_value.items():
            self._shrink(self.values[(vid, axes[0])], axes)

    def _remove_experts(self, group: Group, units: np.ndarray) -> None:
        """Beyond slicing: removed experts' branches are cut at their accumulations (they become dead), kept
        experts' selector indices and the arange tables compared with routing indices are renumbered."""
        info = group.experts
        idle: dict[int, set[int]] = {}  # join node → inputs that now contribute nothing
        for unit in units.tolist():
            for join in info.joins.get(unit, []):
                idle.setdefault(id(join.node), set()).update(
                    i for i in range(len(join.node.inputs)) if i != join.accumulator)
        joins = {id(j.node) for js in info.joins.values() for j in js}
        zero: set[int] = set()  # values that are sums of removed contributions only
        for node in [n for n in self.model.graph if id(n) in joins]:  # in graph order: sums feed later sums
            gone = idle.get(id(node), set()) | {i for i, v in enumerate(node.inputs) if v is not None and id(v) in zero}
            if not gone:
                continue
            left = [v for i, v in enumerate(node.inputs) if i not in gone and v is not None]
            if len(left) > 1:
                raise PlanError(f"{node.name}: cannot bypass an accumulation with {len(left)} inputs left")
            if left:
                ir.convenience.replace_all_uses_with(node.outputs[0], left[0], replace_graph_outputs=True)
            else:  # `sum(gate_e * expert_e(x))` adds two experts first: both may be gone
                zero.add(id(node.outputs[0]))
        for unit, selectors in info.selectors.items():
            if unit in units:
                continue
            for sel in (s for s in selectors if not s.by_rule):
                kept = self.kept(sel.dim.value, sel.dim.axis)
                old = self.const(sel.node.inputs[sel.input_index])
                new = np.full(old.shape, np.searchsorted(kept, sel.index), dtype=old.dtype)
                self.set_input_const(sel.node, sel.input_index, new)
        for table in info.id_tables:
            kept = self.kept(table.dim.value, table.dim.axis)
            old = self.const(table.node.inputs[table.input_index])
            shape = [len(kept) if n != 1 else 1 for n in old.shape]
            self.set_input_const(table.node, table.input_index, np.arange(len(kept), dtype=old.dtype).reshape(shape))

    def _prune_like_output(self, node: ir.Node, bias: ir.Value) -> None:
        """A bias created by compensation loses the same positions as its node's output channels."""
        out = node.outputs[0]
        axis = 1 if node.op_type in ("Conv", "ConvTranspose") else len(out.shape) - 1 if out.shape else -1
        key = (id(out), axis)
        if key in self.removed:
            self.values[(id(bias), 0)] = bias
            self.removed[(id(bias), 0)] = self.removed[key]
            self.sizes[(id(bias), 0)] = self.sizes[key]

    def _shrink(self, value: ir.Value, axes: list[int]) -> None:
        """Slice an initializer along `axes` — lazily: the slice is taken when the tensor is written, one tensor
        at a time, so memory stays bounded on multi-GB models — or record an activation's new sizes."""
        kept = {axis: self.kept(value, axis) for axis in axes}
        if value.const_value is not None:
            source = origin(value.const_value)
            shape = list(source.shape.numpy())
            for axis, index in kept.items():
                shape[axis] = len(index)
            key = (id(source), tuple((axis, index.tobytes()) for axis, index in sorted(kept.items())))
            if key not in self._slices:
                self._slices[key] = ir.LazyTensor(functools.partial(_sliced, source, kept, value.name), source.dtype,
                                                  ir.Shape(shape), name=value.name)
            value.const_value = self._slices[key]
            value.shape = ir.Shape(shape)
        elif value.shape is not None:
            dims = list(value.shape.dims)
            for axis, index in kept.items():
                period = self.period(value, axis)
                dims[axis] = len(index) if period is None else _scaled_size(dims[axis], len(index), period)
            value.shape = ir.Shape(dims)


def _scaled_size(dim: object, kept: int, period: int) -> str | None:
    """The new symbolic size of a periodic axis ("4*batch" keeping 2 of period 4: "2*batch"), None if unreadable."""
    product = size_product(str(dim)) if isinstance(dim, ir.SymbolicDim) and dim.value else None
    if product is None or product[0] % period:
        return None
    factor = product[0] // period * kept
    return "*".join([str(factor)] * (factor != 1) + list(product[1]))


def _sliced(source: ir.TensorProtocol, kept: dict[int, np.ndarray], name: str) -> ir.Tensor:
    array = source.numpy()
    for axis, index in kept.items():
        array = np.take(array, index, axis=axis)
    return ir.tensor(np.ascontiguousarray(array), name=name)


class SlicePlan(InPlacePass):
    """Remove `plan`'s units from the analysed model: removed blocks bypassed, removed experts cut, compensation
    (bias `deltas`, compensated `weights`) applied to the full-size tensors, op rules' constants fixed, sliced."""

    def __init__(self, analysis: Analysis, plan: PruningPlan, deltas: BiasDeltas | None = None,
                 weights: WeightUpdates | None = None) -> None:
        super().__init__()
        self.analysis, self.plan, self.deltas, self.weights = analysis, plan, deltas, weights

    def call(self, model: ir.Model) -> PassResult:
        _Rewriter(self.analysis, self.plan, self.deltas, self.weights).run()
        return PassResult(model, modified=bool(self.plan.removed))


class ReshareConstants(InPlacePass):
    """Per-reader copies of a shared constant that the rewrite left alike become one tensor again."""

    def call(self, model: ir.Model) -> PassResult:
        return PassResult(model, modified=reshare_constants(model) > 0)


def apply_plan(analysis: Analysis, plan: PruningPlan, deltas: BiasDeltas | None = None,
               weights: WeightUpdates | None = None) -> ir.Model:
    """Remove the plan's units from `analysis.model` in place and return it; compensation (bias `deltas`,
    compensated `weights`) is applied to the full-size tensors first."""
    PassManager([SlicePlan(analysis, plan, deltas, weights), RemoveUnusedNodesPass(), ReshareConstants()])(
        analysis.model)
    return analysis.model
