"""After the rewrite, make the graph fast: ONNX Runtime's transformer optimizer fuses attention, LayerNorm
and GELU into its contrib kernels. The fused model is kept only when it computes what the unfused pruned model
computes (same inputs, max relative error within FUSION_TOLERANCE); otherwise the unfused one stays."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from graphprune import progress
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.io.load import from_proto
from graphprune.io.save import as_file
from graphprune.io.scratch import scratch_folder
from graphprune.ir.model import uses_external_data
from graphprune.verify.drift import max_relative_error

log = logging.getLogger("graphprune")
FUSION_TOLERANCE = 1e-3  # fused kernels reorder float sums (and use erf/tanh forms of GELU)


def model_types() -> list[str]:
    """What ONNX Runtime's transformer optimizer knows how to fuse ("bert", "gpt2", "vit", …)."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    return sorted(MODEL_TYPES)


def fuse(model: ir.Model, model_type: str, feeds: dict[str, np.ndarray] | None = None,
         dims: dict[str, int] | None = None) -> tuple[ir.Model, dict]:
    """(fused model, what happened): the fused ops counted, and the error against `model` on `feeds` (or
    random inputs sized by `dims`). A fusion that changes the outputs is not taken (the report says so)."""
    if model_type not in model_types():
        raise GraphpruneError(f"--optimize: unknown model type {model_type!r}; choose from {', '.join(model_types())}")
    if uses_external_data(model):
        log.warning("--optimize: models with external data are not fused (ONNX Runtime's optimizer works in memory)")
        return model, {"fused": {}, "kept": False, "reason": "external data"}
    from onnxruntime.transformers.optimizer import optimize_model

    # from a file: given a ModelProto, the optimizer moves every initializer out of it, shape constants too
    with progress.step(f"fusing ({model_type})"), as_file(model) as path, scratch_folder():
        fused = from_proto(optimize_model(str(path), model_type=model_type, num_heads=0, hidden_size=0).model)
    counts = _contrib_ops(fused)
    reference = runtime.session(model)
    inputs = feeds if feeds is not None else runtime.random_feeds(reference, dims=dims)
    try:
        error = max_relative_error(runtime.run(reference, inputs), runtime.run(runtime.session(fused), inputs))
    except Exception as exc:  # noqa: BLE001 - ORT raises several types
        log.warning("--optimize: the fused model does not run (%s); keeping the unfused one", str(exc)[:200])
        return model, {"fused": counts, "kept": False, "reason": "does not run"}
    if error > FUSION_TOLERANCE:
        log.warning("--optimize: fusion changes the outputs (max relative error %.3g); keeping the unfused model",
                    error)
        return model, {"fused": counts, "kept": False, "error": error}
    return fused, {"fused": counts, "kept": True, "error": error}


def _contrib_ops(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
