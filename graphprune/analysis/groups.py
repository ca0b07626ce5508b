"""Groups: sets of coupled tensor slices that must be removed together, one unit (channel) at a time; a unit is
a channel, head, neuron, expert (`ExpertInfo`) or residual block (`Block`)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphprune.analysis.experts import ExpertInfo
from graphprune.ops.registry import Dim


@dataclass
class Block:
    """One residual block: the Add joining it, which of its inputs is the stream, the branch's nodes (graph
    order) and the weights only the branch reads."""

    add: ir.Node
    stream_index: int
    nodes: list[ir.Node]
    weights: list[ir.Value]

    @property
    def stream(self) -> ir.Value:
        return self.add.inputs[self.stream_index]

    @property
    def output(self) -> ir.Value:
        return self.add.outputs[0]

    @property
    def branch(self) -> ir.Value:
        return self.add.inputs[1 - self.stream_index]

    @property
    def params(self) -> int:
        return sum(int(np.prod(w.const_value.shape.numpy())) for w in self.weights)


@dataclass
class Member:
    """One tensor axis touched by a group; `unit_of[i]` is the unit owning position i, or -1 (another group)."""

    value: ir.Value
    axis: int
    unit_of: np.ndarray
    is_param: bool
    reads: Dim | None = None  # consumer weights: the activation axis they read (calibration observes it)
    node: ir.Node | None = None  # consumer weights: the node computing with them (bias compensation)
    periodic: bool = False  # a merged batch·channel axis: position p is channel p mod len(unit_of)

    @property
    def consumer(self) -> bool:
        """A weight slice reading the group's channels: zeroing it masks them for everything downstream."""
        return self.reads is not None

    @property
    def tensor(self) -> str:
        return self.value.name or "<unnamed>"

    def positions(self, units: np.ndarray) -> np.ndarray:
        """Positions along the axis owned by any of `units`."""
        return np.flatnonzero(np.isin(self.unit_of, units))


@dataclass
class Group:
    """A prunable structure family; `size` units, each removable independently of the others."""

    id: int
    kind: str
    size: int
    members: list[Member]
    params_per_unit: np.ndarray
    frozen_reasons: list[str] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)  # structural facts rules noted ("head", "query-slot")
    experts: ExpertInfo | None = None  # kind "expert": routing facts the rewrite needs
    blocks: list[Block] | None = None  # kind "block": the residual blocks its units remove

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def label(self) -> str:
        if self.blocks is not None:
            return f"{len(self.blocks)} residual blocks"
        anchor = self.members[0]
        return f"{anchor.tensor}[{anchor.axis}]"

    @property
    def layer(self) -> str:
        """Where the group lives, for people: the scope of the node computing with its first weight (the
        producer's where there is one) — torch's module path or the exporter's node name — else its label."""
        params = self.param_members()
        for member in sorted(params, key=lambda m: m.consumer) or self.members:
            uses = member.value.uses()
            node = member.node or (uses[0].node if uses else member.value.producer())
            if node is not None:
                return layer_name(node)
        return self.label

    @property
    def params(self) -> int:
        return int(self.params_per_unit.sum())

    def params_of(self, units: np.ndarray) -> int:
        return int(self.params_per_unit[units].sum())

    def param_members(self) -> list[Member]:
        return [m for m in self.members if m.is_param]

    def unit_widths(self) -> list[int]:
        """Distinct numbers of positions one unit owns across param members (heads: head_dim, q·head_dim)."""
        return sorted({int(np.sum(m.unit_of == 0)) for m in self.param_members()})

    def detail(self) -> str:
        """What one unit is, for people: heads and head_dim (and queries per KV head under GQA)."""
        if self.experts is not None:
            return f"MoE layer: {self.size} experts, top-{self.experts.top_k}"
        if self.blocks is not None:
            return f"depth: {self.size} residual blocks x + f(x), one unit removes one branch f"
        widths = self.unit_widths()
        if self.kind != "head" or not widths:
            return ""
        # per-head tables (Swin's relative position bias: one entry per head) do not tell the head size
        head_dim, widest = next((w for w in widths if w > 1), widths[0]), widths[-1]
        if "query-slot" in self.tags:
            return f"{self.size} query slots x {widest} channels (one query head of every KV group)"
        # the output projection reads a unit's query heads (a packed QKV weight is wider, but one head each)
        read = sorted({int(np.sum(m.unit_of == 0)) for m in self.param_members() if m.consumer})
        queries = (read[-1] if read else widest) // head_dim
        if queries <= 1:
            return f"{self.size} heads x head_dim {head_dim}"
        return f"{self.size} KV groups x {queries} query heads, head_dim {head_dim}"

    def summary(self) -> dict:
        """JSON-ready description."""
        return {
            "id": self.id,
            "kind": self.kind,
            "size": self.size,
            "params": self.params,
            "label": self.label,
            "layer": self.layer,
            "detail": self.detail(),
            "frozen": self.frozen,
            "reasons": self.frozen_reasons,
            "approximate": self.approximate,
            "members": [f"{m.tensor}[{m.axis}]" for m in self.members],
        } | ({"top_k": self.experts.top_k, "expert_branches": len(self.experts.joins)} if self.experts else {}) \
            | ({"blocks": [layer_name(b.add) for b in self.blocks]} if self.blocks is not None else {})


def layer_name(node: ir.Node) -> str:
    """A node's module scope: the torch dynamo exporter's recorded name scopes, else the node name without
    its last segment ("/layer1/0/conv2/Conv" → "/layer1/0/conv2"), else the node name or its op type."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = [name for name in ast.literal_eval(scopes) if name]
        except (ValueError, SyntaxError):
            names = []
        if len(names) > 1:
            return names[-2]
    name = node.name or ""
    if "/" in name.strip("/"):
        return name.rsplit("/", 1)[0]
    return name or node.op_type
