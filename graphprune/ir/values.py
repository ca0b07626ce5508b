"""Reading tensor values of the IR: static/symbolic shapes and constant contents."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir


def shape_of(value: ir.Value | None) -> list | None:
    """Static sizes as int, symbolic ones as their name (None when anonymous or declared negative — tf2onnx
    writes -1 for a size it does not know); None for unknown rank."""
    if value is None:
        return None
    if value.const_value is not None:
        return [int(d) for d in value.const_value.shape]
    if value.shape is None:
        return None
    return [(d if d >= 0 else None) if isinstance(d, int) else d.value for d in value.shape]


def const_of(value: ir.Value | None) -> np.ndarray | None:
    """The constant's contents (initializers, lifted Constant nodes); None for computed tensors."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def is_constant(value: ir.Value | None) -> bool:
    """Whether `value` is absent (an omitted optional input) or a constant (initializer, lifted Constant)."""
    return value is None or value.const_value is not None


def attr_int(node: ir.Node, name: str, default: int) -> int:
    """An integer attribute of `node`, or `default` where it is absent."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def int_list(node: ir.Node, attr: str, input_index: int,
             const: Callable[[ir.Value], np.ndarray | None] = const_of) -> list[int] | None:
    """An int list given as attribute (older opsets) or constant input (newer, read by `const`); None when
    absent or dynamic."""
    if attr in node.attributes:
        return list(node.attributes[attr].as_ints())
    if input_index < len(node.inputs) and node.inputs[input_index] is not None:
        array = const(node.inputs[input_index])
        return None if array is None else [int(v) for v in np.atleast_1d(array)]
    return None


def attr_float(node: ir.Node, name: str, default: float) -> float:
    """A float attribute of `node`, or `default` where it is absent."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def covered_axes(shape_node: ir.Node, rank: int) -> range:
    """The axes of its input whose sizes a Shape node returns (its start/end attributes, clamped)."""
    start, end = (max(0, min(rank, v + rank if v < 0 else v))
                  for v in (attr_int(shape_node, "start", 0), attr_int(shape_node, "end", rank)))
    return range(start, end)


def picked_positions(node: ir.Node, length: int) -> np.ndarray | None:
    """Positions a Gather (axis 0, constant indices) or Slice (constant bounds) takes from a vector of `length`
    entries, shaped like its output (a scalar Gather picks a 0-d position); None for anything else."""
    positions = np.arange(length)
    if node.op_type == "Gather" and const_of(node.inputs[1]) is not None and attr_int(node, "axis", 0) == 0:
        return np.take(positions, const_of(node.inputs[1]))
    if node.op_type == "Slice" and len(node.inputs) >= 3 and all(const_of(v) is not None for v in node.inputs[1:]):
        start, end = (int(const_of(v).reshape(-1)[0]) for v in node.inputs[1:3])
        step = int(const_of(node.inputs[4]).reshape(-1)[0]) if len(node.inputs) > 4 else 1
        return positions[start:end:step]
    return None
