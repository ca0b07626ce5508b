"""One entry point for every reference model: build it and export it with either torch exporter."""

from __future__ import annotations

from pathlib import Path

from graphprune.models import cnn, moe, transformers
from graphprune.models.export import export

MOES = [f"moe_{form}" for form in moe.FORMS]


def export_reference(name: str, dynamo: bool, folder: str | Path) -> Path:
    """Export reference model `name` into `folder`; token models get dynamic batch and sequence axes, the
    text detector dynamic batch, height and width."""
    path = Path(folder) / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx"
    if name == "text_detector":
        image = {0: "batch", 2: "height", 3: "width"}
        return export(*cnn.build(name), path, dynamo, dynamic=[image], output_dynamic=image)
    if name in cnn.BUILDERS:
        return export(*cnn.build(name), path, dynamo)
    if name in MOES:
        tokens = {0: "batch", 1: "seq"}
        return export(*moe.build(name.removeprefix("moe_")), path, dynamo, dynamic=[tokens], output_dynamic=tokens)
    module, inputs = transformers.build(name)
    if name in ("vit", "vit_packed", "swin"):
        return export(module, inputs, path, dynamo, input_names=transformers.INPUT_NAMES[name])
    tokens = {0: "batch", 1: "seq"}
    dynamic = transformers.DYNAMIC.get(name, [tokens] * len(inputs))
    return export(module, inputs, path, dynamo, input_names=transformers.INPUT_NAMES[name], dynamic=dynamic,
                  output_dynamic=dynamic[0])
