"""Dependency analysis: propagate channel identities through the graph and form coupled groups.

Every tensor axis that carries channels (a "dim") owns one union-find element per position. Op rules
link elements across tensors; a connected component is one prunable unit, and units touching the same
set of dims form a group. Anything a rule cannot prove safe freezes the dim, and with it every group
touching that dim, with a reason.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune import ops
from graphprune.analysis.blocks import block_group, find_blocks
from graphprune.analysis.experts import ExpertInfo, IdTable, Selector, branch_weights, find_join
from graphprune.analysis.groups import Group, Member
from graphprune.analysis.unionfind import UnionFind
from graphprune.analysis.weights import is_weight, stored_weight
from graphprune.ir.values import const_of, shape_of
from graphprune.ops.registry import Dim, Port, ShapeDims


@dataclass
class Analysis:
    """The analyzer's result: groups over a model (which the rewrite will mutate)."""

    model: ir.Model
    groups: list[Group]

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if not g.frozen and g.size > 1]

    def group(self, group_id: int) -> Group:
        return self.groups[group_id]


class _Propagator:
    """Implements the rules' CoupleContext while walking the graph."""

    def __init__(self, model: ir.Model, allow_approximate: bool = False, gqa_units: str = "kv-group") -> None:
        self.model = model
        self.allow_approximate = allow_approximate
        self.options = {"gqa_units": gqa_units}
        self.graph = model.graph
        self.graphs = {id(graph) for graph in model.graphs()}  # the main graph and every If/Loop/Scan body
        self.uf = UnionFind()
        self.dims: dict[Dim, tuple[int, int]] = {}
        self.periodic_dims: set[Dim] = set()  # merged batch·channel axes: channel = position mod size
        self.frozen: dict[Dim, list[str]] = {}
        self.consumers: dict[Dim, tuple[Dim, ir.Node]] = {}
        self.tags: dict[Dim, set[str]] = {}
        self.approx: dict[Dim, list[str]] = {}
        self.queue: deque[Dim] = deque()
        self.visited: set[tuple[int, Port, int]] = set()
        self.deferred: list[tuple[ir.Node, Port, Dim]] = []
        self.last_chance = False
        self.routers: dict[Dim, int] = {}  # expert axes routed over → top-k
        self.ids: dict[int, Dim] = {}  # id(value) of tensors holding expert indices → their expert axis
        self.id_queue: deque[tuple[ir.Value, Dim]] = deque()
        self.selectors: list[Selector] = []
        self.id_tables: list[IdTable] = []

    # CoupleContext -------------------------------------------------------------------------
    def shape(self, value: ir.Value | None) -> ShapeDims | None:
        return shape_of(value)

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        return const_of(value)

    def opset(self, domain: str = "") -> int:
        return self.model.opset_imports.get(domain, 1)

    def has_dim(self, dim: Dim) -> bool:
        return dim in self.dims

    def weight(self, value: ir.Value | None) -> bool:
        return is_weight(value)

    def option(self, name: str) -> str | None:
        return self.options.get(name)

    def periodic(self, dim: Dim, size: int) -> bool:
        if dim in self.dims:
            return dim in self.periodic_dims and self.dims[dim][1] == size
        if isinstance(self._static_size(dim), int) or not self._ensure(dim, size):
            return False
        self.periodic_dims.add(dim)
        return True

    def is_periodic(self, dim: Dim) -> bool:
        return dim in self.periodic_dims

    def partition(self, dim: Dim) -> np.ndarray | None:
        if dim not in self.dims:
            return None
        start, size = self.dims[dim]
        return self.uf.find(start + np.arange(size))

    def defer(self, node: ir.Node, port: Port, axis: int) -> bool:
        if self.last_chance:
            return False
        self.deferred.append((node, port, Dim(port.value(node), axis)))
        return True

    def link(self, a: Dim, b: Dim) -> None:
        size_a, size_b = self._size(a), self._size(b)
        if size_a is not None and size_b is not None and size_a != size_b:
            self._freeze_existing((a, b), f"coupled axes differ in size ({a}: {size_a}, {b}: {size_b})")
            return
        size = size_a if size_a is not None else size_b
        if size is None:
            self._freeze_existing((a, b), "channel count unknown on a coupled tensor")
            return
        new = [d for d in (a, b) if d not in self.dims]
        self._ensure(a, size)
        self._ensure(b, size)
        if (a in self.periodic_dims) != (b in self.periodic_dims) and not self._carry_period(a, b, new):
            return
        self.uf.union(self.dims[a][0] + np.arange(size), self.dims[b][0] + np.arange(size))

    def _carry_period(self, a: Dim, b: Dim, new: list[Dim]) -> bool:
        """A dim linked 1:1 to a periodic one is periodic too; a whole channel axis cannot be (frozen)."""
        other = b if a in self.periodic_dims else a
        if other in new and not isinstance(self._static_size(other), int):
            self.periodic_dims.add(other)
            return True
        self._freeze_existing((a, b), "a merged batch·channel axis (channel = position mod its size) is coupled "
                                      "with a whole channel axis")
        return False

    def link_pairs(self, a: Dim, a_index: np.ndarray, b: Dim, b_index: np.ndarray) -> None:
        if not (self._ensure(a) and self._ensure(b)):
            self._freeze_existing((a, b), "channel count unknown on a coupled tensor")
            return
        self.uf.union(self.dims[a][0] + np.asarray(a_index), self.dims[b][0] + np.asarray(b_index))

    def tag(self, dim: Dim, kind: str) -> None:
        if self._ensure(dim):
            self.tags.setdefault(dim, set()).add(kind)

    def consumer(self, weight: Dim, reads: Dim, node: ir.Node) -> None:
        if self._ensure(weight):
            self.consumers[weight] = (reads, node)

    def freeze(self, dim: Dim, reason: str) -> None:
        self._note(self.frozen, dim, reason)

    def approximate(self, dim: Dim, reason: str) -> None:
        self._note(self.approx, dim, reason)

    def expert(self, dim: Dim) -> bool:
        if dim not in self.dims or not self.routers:
            return False
        root = self.uf.find(np.array([self.dims[dim][0]]))[0]
        return any(root == self.uf.find(np.array([self.dims[r][0]]))[0] for r in self.routers)

    def router(self, dim: Dim, top_k: int) -> None:
        if self._ensure(dim):
            self.routers[dim] = min(top_k, self.routers.get(dim, top_k))

    def expert_ids(self, value: ir.Value, dim: Dim) -> None:
        if id(value) not in self.ids:
            self.ids[id(value)] = dim
            self.id_queue.append((value, dim))

    def selector(self, dim: Dim, index: int, node: ir.Node, input_index: int, by_rule: bool = False) -> None:
        self.selectors.append(Selector(dim, index, node, input_index, by_rule))

    def id_table(self, dim: Dim, node: ir.Node, input_index: int) -> None:
        self.id_tables.append(IdTable(dim, node, input_index))

    def _note(self, notes: dict[Dim, list[str]], dim: Dim, reason: str) -> None:
        if self._ensure(dim):
            reasons = notes.setdefault(dim, [])
            if reason not in reasons:
                reasons.append(reason)

    # walking -------------------------------------------------------------------------------
    def _size(self, dim: Dim) -> int | None:
        """Channel count of a dim: known already, or static in the tensor's shape."""
        return self.dims[dim][1] if dim in self.dims else self._static_size(dim)

    @staticmethod
    def _static_size(dim: Dim) -> int | None:
        shape = shape_of(dim.value)
        if shape is not None and 0 <= dim.axis < len(shape) and isinstance(shape[dim.axis], int):
            return shape[dim.axis]
        return None

    def _ensure(self, dim: Dim, size: int | None = None) -> bool:
        """Register `dim` (queued for propagation); `size` stands in where shape inference left it unknown."""
        if dim in self.dims:
            return True
        size = self._size(dim) if self._size(dim) is not None else size
        if size is None:
            return False
        self.dims[dim] = (self.uf.add(size), size)
        self.queue.append(dim)
        return True

    def _freeze_existing(self, dims: tuple[Dim, ...], reason: str) -> None:
        for dim in dims:
            if dim in self.dims:
                self.freeze(dim, reason)

    def run(self) -> None:
        for node in ir.traversal.RecursiveGraphIterator(self.graph):
            rule = ops.lookup(node)
            if rule is not None:
                for dim in rule.seeds(self, node):
                    self._ensure(dim)
        while self.queue or self.deferred or self.id_queue:
            while self.queue or self.id_queue:
                if self.queue:
                    self._process(self.queue.popleft())
                else:
                    self._process_ids(*self.id_queue.popleft())
            retry, self.deferred = self.deferred, []
            self.last_chance = True
            for node, port, dim in retry:
                self._couple(ops.lookup(node), node, port, dim)
            self.last_chance = False

    def _process(self, dim: Dim) -> None:
        value = dim.value
        if value.is_graph_input():
            self.freeze(dim, "graph input")
        if value.is_graph_output():
            self.freeze(dim, "graph output" if value.graph is self.graph else
                        "output of an If/Loop/Scan body (the results of control flow are not rewritten)")
        producer = value.producer()
        if producer is not None:
            self._visit(producer, Port(True, value.index()), dim)
        elif not value.is_graph_input() and value.const_value is None:
            self.freeze(dim, "tensor has no producer in this graph")
        for usage in value.uses():
            self._visit(usage.node, Port(False, usage.idx), dim)

    def _process_ids(self, value: ir.Value, dim: Dim) -> None:
        """Follow a tensor of expert indices to its readers, which must say what the indices select."""
        if value.is_graph_output():
            self.freeze(dim, "expert indices are a graph output")
        for usage in value.uses():
            rule = ops.lookup(usage.node)
            if id(usage.node.graph) not in self.graphs or rule is None:
                self.freeze(dim, f"expert indices reach unsupported op {usage.node.op_type}")
            else:
                rule.couple_ids(self, usage.node, usage.idx, dim)

    def _visit(self, node: ir.Node, port: Port, dim: Dim) -> None:
        key = (id(node), port, dim.axis)
        if key in self.visited:
            return
        self.visited.add(key)
        if id(node.graph) not in self.graphs:
            self.freeze(dim, f"used inside a function body ({node.op_type})")
            return
        rule = ops.lookup(node)
        if rule is None:
            self.freeze(dim, f"unsupported op {node.domain or 'ai.onnx'}::{node.op_type}")
            return
        self._couple(rule, node, port, dim)

    def _couple(self, rule: ops.OpRule, node: ir.Node, port: Port, dim: Dim) -> None:
        """Ask `rule` about `dim` at `port`; a rule that fails on a form it does not expect freezes what it was
        asked about, naming the op, the rule and the error — analysis never crashes on a model."""
        try:
            rule.couple(self, node, port, dim.axis)
        except Exception as exc:  # noqa: BLE001 - any failure of a rule is a form it does not model
            op = f"{node.domain or 'ai.onnx'}::{node.op_type}"
            self.freeze(dim, f"{op} ({node.name}): rule {type(rule).__name__} cannot model this form "
                             f"({type(exc).__name__}: {str(exc)[:120]})")

    # grouping ------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        dims = list(self.dims)
        roots = [self.uf.find(self.dims[d][0] + np.arange(self.dims[d][1])) for d in dims]
        touched: dict[int, list[int]] = {}
        for dim_id, dim_roots in enumerate(roots):
            for root in np.unique(dim_roots).tolist():
                touched.setdefault(root, []).append(dim_id)
        by_key: dict[tuple[int, ...], list[int]] = {}
        for root, dim_ids in touched.items():
            by_key.setdefault(tuple(dim_ids), []).append(root)
        groups = []
        for key, group_roots in sorted(by_key.items()):
            groups.append(self._make_group(len(groups), key, group_roots, dims, roots))
        return groups

    def _make_group(self, gid: int, key: tuple[int, ...], group_roots: list[int], dims: list[Dim],
                    roots: list[np.ndarray]) -> Group:
        uniq, first = np.unique(roots[key[0]], return_index=True)
        first_position = dict(zip(uniq.tolist(), first.tolist(), strict=True))
        order = sorted(group_roots, key=first_position.__getitem__)
        sorted_roots = np.array(sorted(order))
        unit_of_root = np.empty(len(order), dtype=np.int64)
        unit_of_root[np.searchsorted(sorted_roots, order)] = np.arange(len(order))
        members, params = [], np.zeros(len(order), dtype=np.int64)
        for dim_id in key:
            dim = dims[dim_id]
            r = roots[dim_id]
            slot = np.clip(np.searchsorted(sorted_roots, r), 0, len(sorted_roots) - 1)
            unit_of = np.where(sorted_roots[slot] == r, unit_of_root[slot], -1)
            is_param = dim.value.const_value is not None
            reads, node = self.consumers.get(dim, (None, None))
            members.append(Member(dim.value, dim.axis, unit_of, is_param, reads, node, dim in self.periodic_dims))
            if is_param:
                shape = dim.value.const_value.shape
                per_position = int(np.prod(shape)) // int(shape[dim.axis])
                params += np.bincount(unit_of[unit_of >= 0], minlength=len(order)) * per_position
        key_dims = [dims[i] for i in key]
        approx = _notes(self.approx, key_dims)
        frozen = _notes(self.frozen, key_dims)
        if approx and not self.allow_approximate:
            frozen.append("approximate (norm statistics change); allow with --prune-hidden")
        kind = self._kind(key_dims, members, approx)
        tags = set().union(*(self.tags.get(d, set()) for d in key_dims))
        experts = self._experts(key_dims, members, frozen) if kind == "expert" else None
        if experts is not None:
            self._branch_params(experts, params)
        return Group(gid, kind, len(order), members, params, frozen, approx, tags, experts)

    def _experts(self, key_dims: list[Dim], members: list[Member], frozen: list[str]) -> ExpertInfo:
        """The MoE layer's routers, per-expert branches and index constants; a branch that does not end in
        one idle-exact accumulation freezes the group (appended to `frozen`)."""
        routed = [d for d in key_dims if d in self.routers]
        info = ExpertInfo(min(self.routers[d] for d in routed), routed,
                          id_tables=[t for t in self.id_tables if t.dim in key_dims])
        unit_of = {d: m.unit_of for d, m in zip(key_dims, members, strict=True)}
        for sel in self.selectors:
            if sel.dim not in unit_of:
                continue
            if not 0 <= sel.index < len(unit_of[sel.dim]):
                frozen.append(f"{sel.node.name}: expert index {sel.index} out of range")
                continue
            join = find_join(sel.node)
            if isinstance(join, str):
                frozen.append(join)
                continue
            unit = int(unit_of[sel.dim][sel.index])
            info.selectors.setdefault(unit, []).append(sel)
            if all(j.node is not join.node for j in info.joins.get(unit, [])):
                info.joins.setdefault(unit, []).append(join)
        return info

    @staticmethod
    def _branch_params(info: ExpertInfo, params: np.ndarray) -> None:
        """Add to each expert's parameter count the weights only its branch uses (freed with it)."""
        for unit, weights in branch_weights(info).items():
            params[unit] += sum(int(np.prod(v.const_value.shape)) for v in weights)

    def _kind(self, key_dims: list[Dim], members: list[Member], approx: list[str]) -> str:
        if any(d in self.routers for d in key_dims):
            return "expert"
        if any("head" in self.tags.get(d, ()) for d in key_dims):
            return "head"
        if any("neuron" in self.tags.get(d, ()) for d in key_dims):
            return "neuron"  # recurrent hidden units (their weights are 3-D)
        if approx:
            return "hidden"
        if all(_weight_rank(m.value) <= 2 for m in members if m.is_param):
            return "neuron"
        return "channel"


def _weight_rank(value: ir.Value) -> int:
    """Rank of the weight an initializer stores (packed sub-byte storage adds an axis)."""
    weight = stored_weight(value)
    packed = weight.encoding.packed_axes if weight is not None and weight.quantized else 0
    return value.const_value.shape.rank() - packed


def _notes(notes: dict[Dim, list[str]], dims: list[Dim]) -> list[str]:
    """`dim: reason` lines for `dims`, deduplicated, in order."""
    lines: list[str] = []
    for dim in dims:
        for reason in notes.get(dim, []):
            text = f"{dim}: {reason}"
            if text not in lines:
                lines.append(text)
    return lines


GQA_UNITS = ("kv-group", "query-slot")


def analyze(model: ir.Model, allow_approximate: bool = False, gqa_units: str = "kv-group",
            depth: bool = False) -> Analysis:
    """Find every group of `model` and which of them are frozen, and why. Groups whose removal is only
    approximate (the hidden dimension under LayerNorm/RMSNorm) stay frozen unless `allow_approximate`.
    `gqa_units`: under grouped-query attention a head unit is a KV group (its KV head and every query head
    reading it) or, with "query-slot", the same query slot in every KV group (KV heads then stay whole).
    `depth` adds one group of kind "block" whose units are the model's residual blocks."""
    if gqa_units not in GQA_UNITS:
        raise ValueError(f"gqa_units must be one of {GQA_UNITS}, got {gqa_units!r}")
    propagator = _Propagator(model, allow_approximate, gqa_units)
    propagator.run()
    groups = propagator.groups()
    if depth:
        blocks = find_blocks(model)
        if blocks:
            groups.append(block_group(len(groups), blocks))
    return Analysis(model, groups)
