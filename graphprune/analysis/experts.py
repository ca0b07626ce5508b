"""Mixture-of-experts structure: which expert each per-expert branch belongs to and where its output merges.

An expert group's units are the positions of a router's expert axis (router rows, stacked-weight slices,
gate columns). Graphs that loop over experts also hold per-expert *branches*: each starts at a selector (a
constant expert index compared with, or gathered from, routing results) and ends in an accumulation
(`acc + contribution`, or a scatter of the contribution into `acc`). Removing an expert rewires its
accumulation to `acc` — exact, because an expert the router never picks contributes nothing — and the
branch, expert weights included, becomes dead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import onnx_ir as ir

from graphprune.ops.registry import Dim

# op → the input that carries the running sum (None: any input computed outside the branch)
ACCUMULATORS: dict[str, int | None] = {"Add": None, "Sum": None, "ScatterND": 0, "ScatterElements": 0}


@dataclass
class Selector:
    """`node` picks expert `index` of the expert axis `dim` with the constant at input `input_index`; the
rewrite renumbers that constant for surviving experts unless the node's own rule does (`by_rule`: Slice)."""

    dim: Dim
    index: int
    node: ir.Node
    input_index: int
    by_rule: bool = False


@dataclass
class IdTable:
    """Input `input_index` of `node` is arange(E) along the expert axis that `dim` (its output) carries."""

    dim: Dim
    node: ir.Node
    input_index: int


@dataclass
class Join:
    """Where an expert's branch merges: `node`'s output equals input `accumulator` when the branch is idle."""

    node: ir.Node
    accumulator: int


@dataclass
class ExpertInfo:
    """What the rewrite needs beyond slicing to remove experts of one MoE layer."""

    top_k: int
    routed: list[Dim]  # TopK inputs along the expert axis (router logits or their softmax or sigmoid)
    selectors: dict[int, list[Selector]] = field(default_factory=dict)  # unit → its selectors
    joins: dict[int, list[Join]] = field(default_factory=dict)  # unit → its branches' accumulations
    id_tables: list[IdTable] = field(default_factory=list)  # arange(E) constants compared with expert indices

    def logits(self) -> list[Dim]:
        """The router logits' expert axes: forcing an expert's entry to -inf is what removing it must equal."""
        dims = []
        for dim in self.routed:
            producer = dim.value.producer()
            scores = producer is not None and producer.op_type in ("Softmax", "Sigmoid")
            dims.append(Dim(producer.inputs[0], dim.axis) if scores else dim)
        return dims


def find_join(selector: ir.Node) -> Join | str:
    """The single accumulation where the branch starting at `selector` merges and which adds nothing while the
    expert is never routed to (so cutting it there is exact), or why there is none."""
    descendants = _descendants(selector)
    joins: dict[int, Join] = {}
    queue, seen = deque([selector]), {id(selector)}
    while queue:
        node = queue.popleft()
        for out in node.outputs:
            if out.is_graph_output():
                return f"the branch of expert selector {selector.name} reaches graph output {out.name}"
            for usage in out.uses():
                user = usage.node
                join = _as_join(user, descendants)
                if join is not None:
                    joins[id(user)] = join
                elif id(user) not in seen:
                    seen.add(id(user))
                    queue.append(user)
    if len(joins) != 1:
        return f"the branch of expert selector {selector.name} merges in {len(joins)} places, not one accumulation"
    join = next(iter(joins.values()))
    if not _contribution_idle(join, selector, descendants):
        return f"{join.node.name}: the contribution of selector {selector.name} is not provably zero when unrouted"
    return join


def _descendants(start: ir.Node) -> set[int]:
    found, queue = {id(start)}, deque([start])
    while queue:
        for out in queue.popleft().outputs:
            for usage in out.uses():
                if id(usage.node) not in found:
                    found.add(id(usage.node))
                    queue.append(usage.node)
    return found


def _as_join(node: ir.Node, branch: set[int]) -> Join | None:
    """`node` as an accumulation: exactly one full-shape input computed outside the branch (the running sum)."""
    if node.op_type not in ACCUMULATORS or node.domain not in ("", "ai.onnx"):
        return None
    outside = [i for i, v in enumerate(node.inputs)
               if v is not None and (v.producer() is None or id(v.producer()) not in branch)]
    fixed = ACCUMULATORS[node.op_type]
    if len(outside) != 1 or (fixed is not None and outside != [fixed]):
        return None
    acc = node.inputs[outside[0]]
    if acc.const_value is not None or acc.shape is None or node.outputs[0].shape is None:
        return None
    if list(acc.shape.dims) != list(node.outputs[0].shape.dims):
        return None
    return Join(node, outside[0])


# Whole-tensor states of a branch value while its expert is never routed to.
ZERO, EMPTY = "zero", "empty"
_KEEP_ZERO = {"Cast", "Identity", "Neg", "Relu", "Abs", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
              "Expand", "Slice", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"}
_ZERO_IF_ANY = {"Mul", "And", "MatMul"}


def _idle_state(value: ir.Value, selector: ir.Node, branch: set[int], memo: dict[int, str | None]) -> str | None:
    """What `value` is when the expert of `selector` is never routed to (its selector output is all zero/false):
    ZERO (all zeros), EMPTY (no elements, e.g. after NonZero), or None (not known to vanish). Only values
    computed in the branch (descendants of the selector) can vanish; `memo` keeps the walk linear."""
    node = value.producer()
    if node is None or id(node) not in branch:
        return None
    if node is selector:
        return ZERO
    if id(value) not in memo:
        states = [None if v is None else _idle_state(v, selector, branch, memo) for v in node.inputs]
        memo[id(value)] = _node_idle_state(node, states)
    return memo[id(value)]


def _node_idle_state(node: ir.Node, states: list[str | None]) -> str | None:
    """A node's output state from its inputs' states."""
    op = node.op_type
    if op == "NonZero":
        return EMPTY if states[0] in (ZERO, EMPTY) else None
    if op == "Concat":
        return EMPTY if states and all(s == EMPTY for s in states) else None
    if EMPTY in states and op not in ("Shape", "Size", "ConstantOfShape"):
        return EMPTY
    if op in _KEEP_ZERO:
        return states[0] if states[0] == ZERO else None
    if op in _ZERO_IF_ANY or (op == "Gemm" and len(node.inputs) < 3):
        return ZERO if ZERO in states[:2] else None
    if op == "Div":
        return states[0]
    return None


def _contribution_idle(join: Join, selector: ir.Node, branch: set[int]) -> bool:
    """Whether the join adds nothing when the selector's expert is idle, so bypassing it is exact."""
    node, memo = join.node, {}
    states = {i: _idle_state(v, selector, branch, memo) for i, v in enumerate(node.inputs)
              if v is not None and i != join.accumulator}
    if node.op_type in ("Add", "Sum"):
        return all(s in (ZERO, EMPTY) for s in states.values())
    reduction = node.attributes.get("reduction")
    adds = reduction is not None and reduction.as_string() == "add"
    return EMPTY in states.values() or (adds and states.get(2) == ZERO)


def branch_weights(info: ExpertInfo) -> dict[int, list[ir.Value]]:
    """Per expert with a branch: the floating-point weights only its branch uses (what cutting its joins frees),
    in graph order, so that every expert's weights line up."""
    branches = {unit: _branch_nodes(info, unit) for unit in info.joins}
    first = next((node for nodes in branches.values() for node in nodes.values()), None)
    order = {id(node): i for i, node in enumerate(first.graph)} if first is not None else {}
    weights = {}
    for unit, branch in branches.items():
        nodes = sorted(branch.values(), key=lambda n: order[id(n)])
        exclusive = {id(v): v for node in nodes for v in node.inputs if v is not None and v.const_value is not None
                     and v.const_value.dtype.is_floating_point() and len(v.const_value.shape) >= 1
                     and all(id(use.node) in branch for use in v.uses())}
        weights[unit] = list(exclusive.values())
    return weights


def _branch_nodes(info: ExpertInfo, unit: int) -> dict[int, ir.Node]:
    """Nodes whose outputs only feed the branch of `unit` up to its joins: dead once the joins are cut."""
    branch: dict[int, ir.Node] = {}
    frontier = [join.node.inputs[i] for join in info.joins.get(unit, [])
                for i in range(len(join.node.inputs)) if i != join.accumulator]
    ends = {id(join.node) for join in info.joins.get(unit, [])}
    while frontier:
        value = frontier.pop()
        node = value.producer() if value is not None else None
        if node is None or id(node) in branch:
            continue
        if all(id(use.node) in branch or id(use.node) in ends for out in node.outputs for use in out.uses()):
            branch[id(node)] = node
            frontier.extend(node.inputs)
    return branch
