"""Large models for scale tests without large disks: a residual FFN stack (x + down(relu(up(x))) per layer, then a
head) whose float32 weights live in one external data file created sparse — it reads as zeros and takes no disk
blocks — so multi-GB (up to 7B-shaped) graphs can be loaded, analysed and pruned anywhere. Needs only onnx."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

DATA = "weights.bin"


def build_sparse_ffn(folder: str | Path, layers: int, hidden: int, ffn: int, classes: int = 8) -> Path:
    """Write `folder`/model.onnx and its sparse `folder`/weights.bin; returns the model path."""
    folder = Path(folder)
    nodes, weights, offset = [], [], 0

    def weight(name: str, shape: list[int]) -> str:
        nonlocal offset
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape,
                             data_location=TensorProto.EXTERNAL)
        size = 4 * shape[0] * shape[1]
        for key, value in (("location", DATA), ("offset", str(offset)), ("length", str(size))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        offset += size
        weights.append(tensor)
        return name

    x = "x"
    for i in range(layers):
        up = weight(f"layers.{i}.up", [hidden, ffn])
        nodes += [
            helper.make_node("MatMul", [x, up], [f"up{i}"], name=f"/layers.{i}/up"),
            helper.make_node("Relu", [f"up{i}"], [f"act{i}"], name=f"/layers.{i}/act"),
            helper.make_node("MatMul", [f"act{i}", weight(f"layers.{i}.down", [ffn, hidden])], [f"down{i}"],
                             name=f"/layers.{i}/down"),
            helper.make_node("Add", [x, f"down{i}"], [f"res{i}"], name=f"/layers.{i}/residual"),
        ]
        x = f"res{i}"
    nodes.append(helper.make_node("MatMul", [x, weight("head", [hidden, classes])], ["y"], name="/head"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", hidden])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])]
    graph = helper.make_graph(nodes, "sparse_ffn", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    with open(folder / DATA, "wb") as data:
        data.truncate(offset)
    return folder / "model.onnx"
