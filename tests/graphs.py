"""A tiny builder for hand-made ONNX graphs in tests (weights as initializers or as Constant nodes)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Accumulates nodes; `weight` adds a random float tensor, `const` an exact one."""

    def __init__(self, seed: int = 0, constant_nodes: bool = False) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.constant_nodes = constant_nodes
        self._ids = itertools.count()

    def name(self, prefix: str = "t") -> str:
        return f"{prefix}{next(self._ids)}"

    def const(self, array: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        if self.constant_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def weight(self, *shape: int, scale: float = 0.5, positive: bool = False) -> str:
        array = self.rng.standard_normal(shape).astype(np.float32) * scale
        return self.const(np.abs(array) + 0.5 if positive else array, "w")

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.name() for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def conv(self, x: str, c_in: int, c_out: int, k: int = 1, group: int = 1, bias: bool = True) -> str:
        inputs = [x, self.weight(c_out, c_in // group, k, k)] + ([self.weight(c_out)] if bias else [])
        return self.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        return self.op("BatchNormalization", [x, self.weight(c, positive=True), self.weight(c),
                                              self.weight(c), self.weight(c, positive=True)])

    def head(self, x: str, c: int, classes: int = 5) -> str:
        """GlobalAveragePool → Flatten → Gemm."""
        flat = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        return self.op("Gemm", [flat, self.weight(classes, c), self.weight(classes)], transB=1)

    def build(self, inputs: dict[str, list], outputs: list[str] | dict[str, list], opset: int = 17,
              value_info: dict[str, list] | None = None) -> onnx.ModelProto:
        """Outputs given as a list get no declared shape (shape inference fills them in on load)."""
        outputs = outputs if isinstance(outputs, dict) else dict.fromkeys(outputs)
        info = lambda items: [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in items]  # noqa: E731
        graph = helper.make_graph(self.nodes, "test", info(inputs.items()), info(outputs.items()), self.inits,
                                  value_info=info((value_info or {}).items()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def looped_moe(router: np.ndarray, bias: np.ndarray, experts: list[np.ndarray], top_k: int = 2,
               scores: str = "Softmax") -> onnx.ModelProto:
    """x[tokens, d] → router (MatMul + bias) → Softmax or Sigmoid scores → TopK → renormalise →
    Σ_e gate_e · relu(x @ W_e), a loop over experts with `indices == e` masks → output Linear."""
    b = GraphBuilder()
    d = router.shape[0]
    logits = b.op("Add", [b.op("MatMul", ["x", b.const(router)]), b.const(bias)])
    attrs = {"axis": -1} if scores == "Softmax" else {}
    values, chosen = b.op("TopK", [b.op(scores, [logits], **attrs), b.const(np.array([top_k]))], outputs=2, axis=-1)
    last = b.const(np.array([-1]))
    gates = b.op("Div", [values, b.op("ReduceSum", [values, last])])
    acc = b.op("Mul", ["x", b.const(np.zeros(1, np.float32))])
    for e, weight in enumerate(experts):
        hit = b.op("Cast", [b.op("Equal", [chosen, b.const(np.array(e))])], to=1)
        gate = b.op("ReduceSum", [b.op("Mul", [gates, hit]), last])
        acc = b.op("Add", [acc, b.op("Mul", [gate, b.op("Relu", [b.op("MatMul", ["x", b.const(weight)])])])])
    return b.build({"x": ["tokens", d]}, {b.op("MatMul", [acc, b.weight(d, 3)]): ["tokens", 3]})
