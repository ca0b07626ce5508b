"""Export torch modules to ONNX with either exporter, batch axis dynamic (needs graphprune[torch])."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch


def export(module: torch.nn.Module, example: torch.Tensor, path: str | Path, dynamo: bool, opset: int = 18) -> Path:
    """Write `module` to `path` (input "x", output "y"); the dynamo exporter may add `path`.data."""
    path = Path(path)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes=({0: batch},), opset_version=opset, verbose=False)
        else:
            torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=opset)
    return path
