"""The MACs counter against hand-computed counts: linear layers, attention products between activations,
Einsum (with '...'), ONNX Runtime's fused Attention, symbolic sizes kept as a formula."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.io.load import from_proto
from graphprune.verify.cost import cost, macs
from graphprune.verify.polynomial import Poly


def _model(nodes: list, inputs: dict[str, list], weights: dict[str, tuple | np.ndarray], ms: bool = False):
    """A graph over float inputs; weights given as shapes (zeros) or arrays (e.g. int64 shape vectors)."""
    inits = [numpy_helper.from_array(w if isinstance(w, np.ndarray) else np.zeros(w, np.float32), name)
             for name, w in weights.items()]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                           for n, s in inputs.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    return from_proto(helper.make_model(graph, opset_imports=opsets))


def test_linear_and_attention_products_in_symbolic_sizes():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"]),  # [B, S, 8] @ [8, 8]: 64·B·S
             helper.make_node("Reshape", ["q", "shape"], ["heads"]),  # [B, S, 2, 4]
             helper.make_node("Transpose", ["heads"], ["qt"], perm=[0, 2, 1, 3]),  # [B, 2, S, 4]
             helper.make_node("Transpose", ["heads"], ["kt"], perm=[0, 2, 3, 1]),  # [B, 2, 4, S]
             helper.make_node("MatMul", ["qt", "kt"], ["y"])]  # [B, 2, S, S]: 2·4·B·S²
    model = _model(nodes, {"x": ["B", "S", 8]}, {"w": (8, 8), "shape": np.array([0, 0, 2, 4])})
    formula = macs(model)
    assert formula.terms == {("B", "S"): 64, ("B", "S", "S"): 8}
    assert formula.evaluate({"B": 2, "S": 10}) == 64 * 20 + 8 * 2 * 100
    assert str(formula) == "64·B·S + 8·B·S^2"
    assert cost(model, dims={"B": 2, "S": 10}).macs == 64 * 20 + 8 * 2 * 100


def test_einsum_counts_every_index_once_including_ellipsis():
    plain = _model([helper.make_node("Einsum", ["x", "w"], ["y"], equation="bsd,df->bsf")],
                   {"x": ["b", 5, 6]}, {"w": (6, 7)})
    assert macs(plain).terms == {("b",): 5 * 6 * 7}
    ellipsis = _model([helper.make_node("Einsum", ["x", "w"], ["y"], equation="...d,df->...f")],
                      {"x": [3, 4, 6]}, {"w": (6, 2)})
    assert macs(ellipsis).evaluate() == 3 * 4 * 6 * 2


def test_fused_attention_counts_projection_and_both_products():
    node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=2)
    model = _model([node], {"x": ["B", "S", 16]}, {"w": (16, 48), "b": (48,)}, ms=True)
    assert macs(model).terms == {("B", "S"): 16 * 48, ("B", "S", "S"): 2 * 16}


def test_polynomial_arithmetic():
    p = Poly.of("s") * Poly.of("s") * 3 + Poly.of(4)
    assert p.evaluate({"s": 2}) == 16 and p.symbols() == {"s"} and str(p) == "4 + 3·s^2"
    assert not Poly.of(0)


def test_recurrent_layers_count_every_step_gate_and_direction(tmp_path):
    """seq·batch·dirs·G·H·(in + H) per layer; ONNX Runtime's dynamically quantized LSTM counts as its float twin."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tests.ops.test_recurrent import recurrent

    dims = {"seq": 4, "batch": 3}
    rest = 4 * 3 * 6 * 8 + 4 * 3 * 10 * 4 + 3 * 5 * 3  # the builder's three MatMuls
    for op, gates in (("LSTM", 4), ("GRU", 3), ("RNN", 1)):
        model = recurrent(op)
        assert macs(from_proto(model)).evaluate(dims) == 4 * 3 * 2 * gates * 5 * (8 + 5) + rest, op
    onnx.save(recurrent("LSTM"), tmp_path / "lstm.onnx")
    quantize_dynamic(tmp_path / "lstm.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8,
                     op_types_to_quantize=["LSTM"])
    quantized = from_proto(onnx.load(tmp_path / "q.onnx"))
    assert "DynamicQuantizeLSTM" in {n.op_type for n in quantized.graph}
    assert macs(quantized).evaluate(dims) == 4 * 3 * 2 * 4 * 5 * 13 + rest
