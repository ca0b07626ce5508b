"""One entry point for every reference model: build it and export it with either torch exporter, in any of the
forms people ship (`export_form`)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class ExportForm:
    """One way a model reaches a user: which torch exporter, which axes stay dynamic ("static": none, at batch
    1, as edge pipelines ship; "batch"; "batch+seq"), the opset, and what ran on the file afterwards (None,
    "simplified": onnxscript's constant-folding optimizer, "ort-basic": ONNX Runtime's basic offline
    optimisation)."""

    dynamo: bool
    axes: str = "batch+seq"
    opset: int = 18
    post: str | None = None

    @property
    def name(self) -> str:
        return "-".join([("dynamo" if self.dynamo else "legacy"), self.axes, f"op{self.opset}",
                         *([self.post] if self.post else [])])


def export_form(name: str, form: ExportForm, folder: str | Path) -> Path:
    """Reference model `name` exported in `form` into `folder`."""
    path = Path(folder) / f"{name}_{form.name}.onnx"
    if name in cnn.BUILDERS:
        module, inputs = cnn.build(name)
    elif name in MOES:
        module, inputs = moe.build(name.removeprefix("moe_"))
    else:
        module, inputs = transformers.build(name)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    names = transformers.INPUT_NAMES.get(name, ["x"])
    if form.axes == "static":
        example = tuple(t[:1] for t in inputs)
        export(module, example, path, form.dynamo, form.opset, names, static=True)
    else:
        tokens = form.axes == "batch+seq" and name not in cnn.BUILDERS and name not in ("vit", "vit_packed", "swin")
        axes = {0: "batch", 1: "seq"} if tokens else {0: "batch"}
        dynamic = transformers.DYNAMIC.get(name, [axes] * len(inputs)) if tokens else [{0: "batch"}] * len(inputs)
        if name == "torch_encoder_seq_first":
            dynamic = transformers.DYNAMIC[name]
        export(module, inputs, path, form.dynamo, form.opset, names, dynamic, dynamic[0])
    if form.post is not None:
        _post_process(path, form.post)
    return path


def _post_process(path: Path, post: str) -> None:
    """Rewrite `path` in place as `post` says (the file is ours: a fresh export)."""
    import onnx

    if post == "simplified":
        import onnxscript

        model = onnx.load(str(path))
        onnx.save(onnxscript.optimizer.optimize(model), str(path))
    elif post == "ort-basic":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        optimized = path.with_name(path.stem + "_ort.onnx")
        options.optimized_model_filepath = str(optimized)
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        onnx.save(onnx.load(str(optimized)), str(path))
        optimized.unlink()
    else:
        raise ValueError(f"unknown post-processing {post!r}")
