"""Quantized graphs from ONNX Runtime's own quantizer (static QDQ and QOperator per channel and per tensor,
dynamic int8, int4 MatMulNBits) on a residual CNN and a BERT: the groups of the float twin, masked
equivalence (zeroed = the zero point) for every group, with compensation too, and a pruned model that keeps
its format and loses about as many weights as its float twin."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.analysis.coupling import analyze
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.ops.encodings import NBits, pack, unpack
from graphprune.passes import prune_file
from graphprune.passes.calibration.statistics import calibrate
from graphprune.verify.cost import count_params
from tests.harness import assert_group_equivalent, load, masked_check, random_subset_plan

pytest.importorskip("torch")
from graphprune.models.quantize import FORMATS, quantize  # noqa: E402 - needs onnxruntime's quantizer only

STATIC = {"resnet": FORMATS[:5], "bert": FORMATS}  # int4 MatMulNBits quantizes MatMul only
CASES = [(name, form) for name, forms in STATIC.items() for form in forms]
DIMS = {"resnet": None, "bert": {"batch": 2, "seq": 8}}
QUANTIZED_OPS = ("DequantizeLinear", "QuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd",
                 "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "MatMulNBits")


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, form: str) -> Path:
        if (name, form) not in cache:
            cache[name, form] = quantize(exported(name, False), folder / f"{name}_{form}.onnx", form,
                                         dims=DIMS[name])
        return cache[name, form]

    return get


@pytest.mark.parametrize(("name", "form"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_every_group_of_the_float_twin_prunes_exactly(exported, quantized, name, form):
    path = quantized(name, form)
    analysis = analyze(load_model(path))
    float_groups = analyze(load_model(exported(name, False))).prunable()
    assert [g.kind for g in analysis.prunable()] == [g.kind for g in float_groups], form
    for group in analysis.prunable():
        assert_group_equivalent(path, group, tolerance=1e-6, dims=DIMS[name])


def _ort_optimized(path: Path) -> Path:
    """The model as ONNX Runtime's extended graph optimisation leaves it (dynamic int8 fused into
    DynamicQuantizeMatMul / MatMulIntegerToFloat), saved offline."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path.with_name(path.stem + "_ort.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Path(options.optimized_model_filepath)


@pytest.mark.parametrize("name", ["resnet", "bert"])
def test_ort_fused_dynamic_quantization_prunes_exactly(quantized, name):
    path = _ort_optimized(quantized(name, "dynamic"))
    fused = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert fused & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, fused
    analysis = analyze(load_model(path))
    assert analysis.prunable()
    for group in analysis.prunable():
        assert_group_equivalent(path, group, tolerance=1e-6, dims=DIMS[name])


@pytest.mark.parametrize(("name", "form"), [("resnet", "qoperator"), ("bert", "dynamic"), ("bert", "int4")])
def test_compensation_requantizes_like_the_masked_original(quantized, name, form):
    path = quantized(name, form)
    analysis = analyze(load_model(path))
    sess = runtime.session(load_model(path))
    batches = [runtime.random_feeds(sess, batch=2, seed=seed, dims=DIMS[name]) for seed in range(3)]
    calibration = calibrate(analysis, batches, gram_limit=4096)
    for group in analysis.prunable()[:2]:
        for kind in ("bias", "obs"):
            result = masked_check(path, random_subset_plan(group.id), calibration=calibration, compensation=kind,
                                  dims=DIMS[name])
            assert result["error"] <= 1e-6 < result["masking_effect"], (group.label, kind, result)


def _ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZED_OPS)


@pytest.mark.parametrize(("name", "form"), [("resnet", "qdq"), ("resnet", "qoperator-per-tensor"),
                                            ("bert", "qoperator"), ("bert", "int4")])
def test_half_ratio_keeps_the_format_and_matches_the_float_cut(exported, quantized, tmp_path, name, form):
    path, dense = quantized(name, form), exported(name, False)
    prune_file(path, tmp_path / "q.onnx", ratio=0.5)
    prune_file(dense, tmp_path / "f.onnx", ratio=0.5)
    assert _ops(tmp_path / "q.onnx") == _ops(path)
    before, after = count_params(load_model(path)), count_params(load_model(tmp_path / "q.onnx"))
    float_before, float_after = count_params(load_model(dense)), count_params(load_model(tmp_path / "f.onnx"))
    removed, float_removed = before - after, float_before - float_after
    assert abs(removed - float_removed) <= 0.1 * float_removed, (removed, float_removed)


def test_nbits_packing_round_trips_and_zeroes_blocks():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 16, size=(3, 5, 32))
    assert np.array_equal(unpack(pack(values, 4), 4, 32), values)
    zeros = rng.integers(0, 16, size=(3, 5))
    encoding = NBits(rng.random((3, 5)).astype(np.float32) + 0.1, zeros, 4, 32)
    stored = pack(values, 4)
    assert np.allclose(encoding.dense(encoding.encode(encoding.dense(stored), stored)), encoding.dense(stored))
    zeroed = encoding.dense(encoding.zeroed(stored, 1, np.array([1, 3])))
    assert np.all(zeroed[:, [1, 3]] == 0) and np.array_equal(zeroed[:, [0, 2, 4]], encoding.dense(stored)[:, [0, 2, 4]])


def _blocked_model(block: int) -> onnx.ModelProto:
    """x [B, 4] → MatMul(w0 [4, 8]) → MatMul(DequantizeLinear(int8 w1 [8, 6], scales blocked along its 8 input
    channels)) → Relu → MatMul(w2 [6, 4]) → y."""
    rng = np.random.default_rng(1)
    w0 = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w0")
    w1 = numpy_helper.from_array(rng.integers(-100, 100, (8, 6)).astype(np.int8), "w1")
    s1 = numpy_helper.from_array(rng.random((8 // block, 6)).astype(np.float32) * 0.01 + 0.001, "s1")
    w2 = numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"]),
             helper.make_node("DequantizeLinear", ["w1", "s1"], ["w1f"], axis=0, block_size=block),
             helper.make_node("MatMul", ["h0", "w1f"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "blocked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [w0, w1, s1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_blocked_dequantize_prunes_columns_exactly_and_input_channels_in_whole_blocks():
    model = _blocked_model(block=2)
    analysis = analyze(load(model))
    assert sorted(g.size for g in analysis.prunable()) == [4, 6]  # 8 input channels of w1 = 4 blocks of 2
    for group in analysis.prunable():
        assert_group_equivalent(model, group)
