"""Residual blocks, the units of depth pruning: an `Add(x, f(x))` whose branch f is computed from the stream x
(other inputs allowed: constants, masks), used by nothing else, and holds weights. Removing the block leaves
x: the Add becomes Identity(x) and the branch is dead. Found on the graph, not matched by name or pattern."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.analysis.groups import Block, Group
from graphprune.analysis.weights import stored_weight


def find_blocks(model: ir.Model) -> list[Block]:
    """Every residual block of the main graph, in graph order."""
    order = {id(node): index for index, node in enumerate(model.graph)}
    outputs = {id(v) for v in model.graph.outputs}
    blocks = []
    for node in model.graph:
        if node.op_type != "Add" or len(node.inputs) != 2 or any(v is None or v.const_value is not None
                                                                 for v in node.inputs):
            continue
        a, b = node.inputs
        if a is b or a.shape is None or a.shape != b.shape:
            continue
        for stream_index in (0, 1):
            block = _block(node, stream_index, order, outputs)
            if block is not None:
                blocks.append(block)
                break
    return blocks


def _block(add: ir.Node, stream_index: int, order: dict[int, int], outputs: set[int]) -> Block | None:
    """The block `add` closes with input `stream_index` as its stream, if the other input is such a branch."""
    stream, branch = add.inputs[stream_index], add.inputs[1 - stream_index]
    reached = _reached(stream, order[id(add)], order)
    nodes: dict[int, ir.Node] = {}
    pending = [branch]
    while pending:
        value = pending.pop()
        producer = value.producer()
        if value is stream or producer is None or id(producer) in nodes or id(value) not in reached:
            continue
        nodes[id(producer)] = producer
        pending.extend(v for v in producer.inputs if v is not None)
    shared = [node for node in nodes.values() if any(
        id(value) in outputs or any(id(u.node) not in nodes and not (u.node is add and value is branch)
                                    for u in value.uses()) for value in node.outputs)]
    for node in _with_ancestors(shared, nodes):  # also read elsewhere (shape arithmetic): stays, with its inputs
        del nodes[id(node)]
    if branch.producer() is None or id(branch.producer()) not in nodes:
        return None
    weights = {id(v): v for node in nodes.values() for v in _weights_of(node)}
    exclusive = [v for v in weights.values() if all(id(u.node) in nodes for u in v.uses())]
    if not exclusive:
        return None
    ordered = sorted(nodes.values(), key=lambda n: order[id(n)])
    return Block(add, stream_index, ordered, exclusive)


def _with_ancestors(start: list[ir.Node], within: dict[int, ir.Node]) -> list[ir.Node]:
    """`start` and every node of `within` that it reads from, transitively."""
    found, pending = {}, list(start)
    while pending:
        node = pending.pop()
        if id(node) in found:
            continue
        found[id(node)] = node
        pending.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None
                       and id(v.producer()) in within)
    return list(found.values())


def _reached(stream: ir.Value, before: int, order: dict[int, int]) -> set[int]:
    """ids of the values computed from `stream` by nodes ahead of position `before` in graph order."""
    reached, pending = {id(stream)}, [stream]
    while pending:
        for usage in pending.pop().uses():
            if order.get(id(usage.node), before) < before:
                for value in usage.node.outputs:
                    if id(value) not in reached:
                        reached.add(id(value))
                        pending.append(value)
    return reached


def _weights_of(node: ir.Node) -> list[ir.Value]:
    """The stored weights (initializers, or integers dequantized on the way) a node reads."""
    found = []
    for value in node.inputs:
        weight = stored_weight(value) if value is not None else None
        if weight is not None and weight.value.const_value is not None and weight.value.const_value.size > 1:
            found.append(weight.value)
    return found


def block_group(group_id: int, blocks: list[Block]) -> Group:
    """The depth group: one unit per residual block, each costing its branch's weights."""
    return Group(group_id, "block", len(blocks), [], np.array([b.params for b in blocks], dtype=np.int64),
                 blocks=blocks)


def bypass(block: Block) -> None:
    """Remove the block: its Add becomes Identity(stream), keeping the output's name; the branch is dead."""
    add = block.add
    if add.op_type == "Identity":
        return
    stream = block.stream
    add.replace_input_with(1 - block.stream_index, None)
    add.replace_input_with(block.stream_index, None)
    add.resize_inputs(1)
    add.replace_input_with(0, stream)
    add.op_type = "Identity"


def removed_nodes(group: Group, units: np.ndarray) -> set[int]:
    """ids of the branch nodes of the blocks `units` of a depth group."""
    return {id(node) for unit in units.tolist() for node in group.blocks[unit].nodes}
