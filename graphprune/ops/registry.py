"""The op dimension-rule registry: how a channel index on one tensor axis of a node maps to its other tensors.

A rule is asked about one (port, axis) of a node at a time, in either direction, and answers by linking
channel elements between tensor axes, tagging consumer weights, or freezing the axis with a reason.
Ops without a rule stop propagation and freeze every group that reaches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import onnx_ir as ir

from graphprune.ir import values
from graphprune.ir.values import attr_int  # noqa: F401 - op rules read attributes through the registry
from graphprune.ops.encodings import Encoding

MS = "com.microsoft"  # ONNX Runtime's contrib op domain


class Port(NamedTuple):
    """One input or output slot of a node."""

    output: bool
    index: int

    def value(self, node: ir.Node) -> ir.Value | None:
        values = node.outputs if self.output else node.inputs
        return values[self.index] if self.index < len(values) else None


@dataclass(frozen=True, eq=False)
class Dim:
    """A channel-carrying axis of one tensor; identity is by (value object, axis)."""

    value: ir.Value
    axis: int

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dim) and self.value is other.value and self.axis == other.axis

    def __hash__(self) -> int:
        return hash((id(self.value), self.axis))

    def __repr__(self) -> str:
        return f"{self.value.name}[axis {self.axis}]"


ShapeDims = list  # list[int | str | None]: static size, symbolic name, or unknown


class CoupleContext(Protocol):
    """What a rule may ask and declare while the analyzer propagates channels."""

    def shape(self, value: ir.Value | None) -> ShapeDims | None: ...
    def const(self, value: ir.Value | None) -> np.ndarray | None: ...
    def opset(self, domain: str = "") -> int: ...
    def has_dim(self, dim: Dim) -> bool: ...
    def option(self, name: str) -> str | None: ...
    # a merged batch·channel axis ([batch, heads] -> [batch*heads]): channel = position mod `size`
    def periodic(self, dim: Dim, size: int) -> bool: ...  # declare `dim` so; False where it cannot be
    def is_periodic(self, dim: Dim) -> bool: ...
    def partition(self, dim: Dim) -> np.ndarray | None: ...  # the unit of each position so far (None: no dim yet)
    def weight(self, value: ir.Value | None) -> bool: ...  # a constant, maybe stored quantized
    def defer(self, node: ir.Node, port: Port, axis: int) -> bool: ...  # True: will be asked again later
    def tag(self, dim: Dim, kind: str) -> None: ...
    def link(self, a: Dim, b: Dim) -> None: ...
    def link_pairs(self, a: Dim, a_index: np.ndarray, b: Dim, b_index: np.ndarray) -> None: ...
    def consumer(self, weight: Dim, reads: Dim, node: ir.Node) -> None: ...  # `weight` consumes `reads`
    def freeze(self, dim: Dim, reason: str) -> None: ...
    def approximate(self, dim: Dim, reason: str) -> None: ...
    # mixture of experts: the expert axis is the router's output axis (see graphprune.analysis.experts)
    def expert(self, dim: Dim) -> bool: ...  # True once `dim` is coupled to a router's expert axis
    def router(self, dim: Dim, top_k: int) -> None: ...  # `dim` is routed over: its units are experts
    def expert_ids(self, value: ir.Value, dim: Dim) -> None: ...  # `value` holds indices into `dim`
    def selector(self, dim: Dim, index: int, node: ir.Node, input_index: int,
                 by_rule: bool = False) -> None: ...  # picks one expert
    def id_table(self, dim: Dim, node: ir.Node, input_index: int) -> None: ...  # arange(E) input of node → dim


class RewriteContext(Protocol):
    """What a rule may ask and change once a plan decided which channels survive."""

    def kept(self, value: ir.Value | None, axis: int) -> np.ndarray | None: ...
    def period(self, value: ir.Value | None, axis: int) -> int | None: ...  # periodic axes: the original period
    def shape(self, value: ir.Value | None) -> ShapeDims | None: ...  # as before the rewrite
    def const(self, value: ir.Value | None) -> np.ndarray | None: ...
    def opset(self, domain: str = "") -> int: ...
    def set_input_const(self, node: ir.Node, index: int, array: np.ndarray) -> None: ...
    def set_attr(self, node: ir.Node, attr: ir.Attr) -> None: ...
    def new_const(self, array: np.ndarray) -> ir.Value: ...
    def add_node(self, op_type: str, inputs: list[ir.Value], attributes: dict, before: ir.Node) -> ir.Value: ...


class OpRule:
    """Dimension semantics of one op family: `couple` during analysis, `rewrite` after slicing."""

    carries_ids = False  # output 0.. hold data input 0's expert indices, rearranged (shape ops)
    dequantizes = False  # output 0 is input 0's real values (DequantizeLinear)
    reads_range = False  # output depends on input 0's range over all channels (DynamicQuantizeLinear)
    quantizes = False  # outputs 0, 1, 2: input 0 quantized with the scale and zero point it chose per call

    def seeds(self, ctx: CoupleContext, node: ir.Node) -> list[Dim]:
        """Axes this node creates channels on (weight-producing layers); propagation starts there."""
        return []

    def couple(self, ctx: CoupleContext, node: ir.Node, port: Port, axis: int) -> None:
        raise NotImplementedError

    def couple_ids(self, ctx: CoupleContext, node: ir.Node, input_index: int, dim: Dim) -> None:
        """Input `input_index` holds expert indices into `dim` (a router's expert axis): say where they go."""
        if self.carries_ids and input_index == 0:
            for _, out in present(node.outputs):
                ctx.expert_ids(out, dim)
            return
        op = f"{node.domain or 'ai.onnx'}::{node.op_type}"
        ctx.freeze(dim, f"expert indices reach {op} input {input_index}, which is not modelled for them")

    def rewrite(self, ctx: RewriteContext, node: ir.Node) -> None:
        """Fix attributes or shape constants that carry channel counts; most ops have none."""

    def encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        """How input `input_index` is stored when the node reads it quantized (None: as real values)."""
        return None

    def activation_encoding(self, node: ir.Node, input_index: int) -> Encoding | None:
        """How activation input `input_index` is quantized with constants (QLinear ops), for calibration."""
        return None

    def quantization_inputs(self, node: ir.Node) -> tuple[int, ...]:
        """Inputs that are scales or zero points: sliced with their channels, never scored as weights."""
        return ()

    def silenced(self, node: ir.Node, input_index: int, positions: np.ndarray) -> np.ndarray:
        """Of `positions` (removed units' entries in weight input `input_index`, not a consumer), those the
        masked reference zeroes too, so that removed units compute exact zeros inside the op (whose range
        it reads); most ops need none."""
        return positions[:0]

    def output_shapes(self, node: ir.Node) -> list[ir.Shape | None] | None:
        """Output shapes for ops neither ONNX nor ONNX Runtime shape inference knows (None: no opinion)."""
        return None


_RULES: dict[tuple[str, str], OpRule] = {}


def register(*op_types: str, domain: str = "") -> Callable[[type[OpRule]], type[OpRule]]:
    """Class decorator: one instance of the rule serves every listed op type."""

    def decorate(cls: type[OpRule]) -> type[OpRule]:
        rule = cls()
        for op_type in op_types:
            key = (domain, op_type)
            if key in _RULES:
                raise ValueError(f"duplicate dimension rule for {domain or 'ai.onnx'}::{op_type}")
            _RULES[key] = rule
        return cls

    return decorate


def lookup(node: ir.Node) -> OpRule | None:
    """The rule for a node, or None when its op is not modelled (it then freezes)."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return _RULES.get((domain, node.op_type))


def lookup_rule(domain: str, op_type: str) -> OpRule | None:
    """The rule registered for `domain::op_type` ("ai.onnx" or "" for the default domain)."""
    return _RULES.get(("" if domain in ("", "ai.onnx") else domain, op_type))


def registered_rules() -> dict[tuple[str, str], OpRule]:
    """(domain, op type) → the rule serving it ("" is the default ONNX domain)."""
    return dict(_RULES)


def registered_ops() -> list[str]:
    """Sorted `domain::op` names of every modelled op."""
    return sorted(f"{d or 'ai.onnx'}::{op}" for d, op in _RULES)


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def int_list(ctx: CoupleContext | RewriteContext, node: ir.Node, attr: str, input_index: int) -> list[int] | None:
    """An int list given as attribute (older opsets) or constant input (newer); None when absent or dynamic."""
    return values.int_list(node, attr, input_index, ctx.const)


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.as_ints())


def present(values: Sequence[ir.Value | None]) -> list[tuple[int, ir.Value]]:
    """(index, value) of the inputs or outputs that are not omitted."""
    return [(i, v) for i, v in enumerate(values) if v is not None]


def input_at(node: ir.Node, index: int) -> ir.Value | None:
    """Input `index` (negative: the op has no such input), or None where omitted."""
    return node.inputs[index] if 0 <= index < len(node.inputs) else None


def per_channel(ctx: CoupleContext, node: ir.Node, indices: tuple[int, ...]) -> list[ir.Value]:
    """The inputs among `indices` that hold one entry per channel (quantization scales and zero points given
    per channel rather than per tensor)."""
    values = [input_at(node, i) for i in indices]
    return [v for v in values if v is not None and len(ctx.shape(v) or []) == 1 and ctx.shape(v)[0] != 1]
