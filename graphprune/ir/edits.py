"""Small graph edits the load-time canonicalisations share: a new constant, a new node in place."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def free_name(model: ir.Model, name: str) -> str:
    """`name`, or `name` with a numeric suffix when an initializer already has it (folds may meet one node
    twice across canonicalisation rounds)."""
    candidate, index = name, 1
    while candidate in model.graph.initializers:
        candidate, index = f"{name}_{index}", index + 1
    return candidate


def add_constant(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer holding `array`, named `name` (or a free variant of it)."""
    name = free_name(model, name)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape, value.dtype = ir.Shape(array.shape), value.const_value.dtype
    model.graph.register_initializer(value)
    return value


def insert_node(model: ir.Model, before: ir.Node, op_type: str, inputs: list[ir.Value], name: str,
                like: ir.Value, attributes: dict | None = None, shape: list | None = None) -> ir.Value:
    """A node inserted before `before`, its output named `name` and typed like `like` (shaped like it too,
    unless `shape` is given); returns the output."""
    node = ir.node(op_type, inputs, attributes or {}, name=name)
    out = node.outputs[0]
    out.name, out.type = name, like.type
    out.shape = ir.Shape(shape) if shape is not None else like.shape
    model.graph.insert_before(before, node)
    return out
