"""Shared broadcasts: the dynamo exporter de-duplicates identical Expands, so one broadcast index tensor feeds
every layer (DeBERTa's relative-position gather indices, `[1, q, k] -> [batch*heads, q, k]`). A broadcast holds
the same values for every channel, so it carries none of its own, but one tensor read by several layers would
couple their heads; every reader beyond the first gets its own copy of the Expand, as the TorchScript
exporter writes it.
"""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ir.edits import insert_node


def unshare_broadcasts(model: ir.Model) -> int:
    """Give every main-graph reader of a shared Expand beyond the first its own copy; returns how many."""
    count = 0
    for node in [n for n in model.graph if n.op_type == "Expand"]:
        out = node.outputs[0]
        if out.is_graph_output():
            continue
        readers = [u for u in out.uses() if u.node.graph is model.graph]
        for number, use in enumerate(readers[1:], start=1):
            copy = insert_node(model, use.node, "Expand", list(node.inputs), f"{out.name}_copy{number}", out)
            use.node.replace_input_with(use.idx, copy)
            count += 1
    return count
