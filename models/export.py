"""Export torch modules to ONNX with either exporter, with dynamic batch (and sequence) axes or static ones.

Needs graphprune[torch].
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

Axes = dict[int, str]


def export(module: torch.nn.Module, example: torch.Tensor | tuple, path: str | Path, dynamo: bool, opset: int = 18,
           input_names: list[str] | None = None, dynamic: list[Axes] | None = None,
           output_dynamic: Axes | None = None, static: bool = False) -> Path:
    """Write `module` to `path` with inputs `input_names` (default "x") and output "y"; `dynamic` names the
    dynamic axes of each input (default: axis 0 "batch"); `static`: none (every size fixed by `example`). The
    dynamo exporter may add `path`.data."""
    path = Path(path)
    example = example if isinstance(example, tuple) else (example,)
    input_names = input_names or ["x"]
    dynamic = dynamic or [{0: "batch"} for _ in example]
    output_dynamic = output_dynamic or {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {name: torch.export.Dim(name, min=2, max=64 if name == "seq" else 1024)
                    for axes in dynamic for name in axes.values()}
            shapes = None if static else tuple({axis: dims[name] for axis, name in axes.items()} for axes in dynamic)
            torch.onnx.export(module, example, str(path), dynamo=True, input_names=input_names, output_names=["y"],
                              dynamic_shapes=shapes, opset_version=opset, verbose=False)
        else:
            axes = {name: spec for name, spec in zip(input_names, dynamic, strict=True)} | {"y": output_dynamic}
            torch.onnx.export(module, example, str(path), dynamo=False, input_names=input_names, output_names=["y"],
                              dynamic_axes=None if static else axes, opset_version=opset)
    return path
