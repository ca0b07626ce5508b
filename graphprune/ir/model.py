"""Facts about an in-memory model every stage may ask: how big it is, and the metadata keys loading leaves
on it (which files it reads, which annotations its file declared, which tensors are mapped)."""

from __future__ import annotations

import onnx_ir as ir

PROTOBUF_LIMIT = 2**31 - 1


SOURCE_FILES = "graphprune.source_files"  # model.meta: every file the loaded model reads


DECLARED = "graphprune.declared"  # model.meta: names of intermediate values whose type the file declared


MAPPED = "graphprune.mapped"  # model.meta: the external tensors loaded from the file (memory-mapped when read)


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def uses_external_data(model: ir.Model) -> bool:
    """True when any initializer lives outside the model file, or the model is too big for one protobuf."""
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            return True
        if tensor is not None:
            total += tensor.nbytes
    return total > PROTOBUF_LIMIT // 2


def copy_model(model: ir.Model) -> ir.Model:
    """A copy to rewrite while `model` stays as it is: new graph, nodes and values, the same (immutable) tensors
    and the same metadata (what a fresh load of the file would give, without reading or inferring again)."""
    copy = model.clone()
    copy.meta.update(model.meta)
    return copy
