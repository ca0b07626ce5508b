"""Bad numbers are refused, not computed on (issue 28): non-finite calibration values, outputs that turn NaN,
keys that are no input, sizes nobody asked for, results that miss what was asked; large calibration files are
read only as far as they are used."""

from __future__ import annotations

import logging
import tracemalloc
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes import CalibrationSpec, prune_file
from graphprune.passes.calibration.sources import file_batches
from graphprune.verify.checks import VerificationError, verify_like
from graphprune.verify.drift import max_relative_error
from graphprune.verify.polynomial import Poly
from tests.cli.test_cli import assert_one_line_error, run_cli
from tests.cli.test_trust import snapshot

RNG = np.random.default_rng(0)


def digits(count: int) -> np.ndarray:
    return RNG.random((count, 1, 8, 8), dtype=np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("criterion", ["obs", "flap"])
def test_one_non_finite_calibration_value_is_refused_before_any_work(capsys, tmp_path, bad, criterion):
    images = digits(16)
    images[5, 0, 3, 3] = bad
    np.savez(tmp_path / "calib.npz", x=images)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "out.onnx", "--criterion", criterion,
                           "--calib", tmp_path / "calib.npz")
    assert_one_line_error(code, err)
    assert "'x' holds 1 NaN or Inf value(s) (the first in sample 5)" in err
    assert snapshot(tmp_path) == before


def test_verification_fails_on_outputs_that_turn_non_finite(tmp_path):
    """A NaN the original never outputs fails verification (it once read as drift 0: max(worst, nan) keeps
    worst); NaN the original outputs too is no failure, and drift is measured on the finite rest."""
    def model(scale: float, bias: float) -> onnx.ModelProto:
        nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                                  [helper.make_tensor_value_info("y", 1, [1, 4])],
                                  [numpy_helper.from_array(np.array([1, 1, 1, scale], np.float32), "s"),
                                   numpy_helper.from_array(np.array([0, 0, 0, bias], np.float32), "b")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    for name, (scale, bias) in {"dense": (1, 0), "nan": (np.nan, 0), "both": (1, np.nan), "near": (1.0, 0.5)}.items():
        onnx.save(model(scale, bias), tmp_path / f"{name}.onnx")
    with pytest.raises(VerificationError, match="outputs 1 NaN or Inf value"):
        verify_like(tmp_path / "dense.onnx", tmp_path / "nan.onnx")
    assert verify_like(tmp_path / "both.onnx", tmp_path / "both.onnx").drift == 0
    assert verify_like(tmp_path / "dense.onnx", tmp_path / "near.onnx").drift > 0
    assert max_relative_error([np.ones(3)], [np.array([1, np.nan, 1])]) == np.inf


def test_a_calibration_key_that_is_no_input_is_named_in_a_warning(tmp_path, caplog):
    np.savez(tmp_path / "calib.npz", x=digits(4), inptu=digits(4))
    with caplog.at_level(logging.WARNING, logger="graphprune"):
        batches = file_batches(tmp_path / "calib.npz", ["x"], 2)
    assert "ignoring 'inptu', which is no input of the model (its inputs: x)" in caplog.text
    assert batches.samples == 4


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
def test_only_the_samples_used_are_read_from_a_large_calibration_file(tmp_path, compressed):
    """10 000 samples (2.6 MB each way) of which 64 are used: reading them allocates about what 64 take."""
    images = digits(10_000)
    (np.savez_compressed if compressed else np.savez)(tmp_path / "calib.npz", x=images)
    tracemalloc.start()
    arrays = runtime.load_feeds(tmp_path / "calib.npz", samples=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(arrays["x"], images[:64])
    assert peak < 20 * images[:64].nbytes < images.nbytes / 2, peak
    assert len(runtime.load_feeds(tmp_path / "calib.npz")["x"]) == 10_000


def test_a_dim_no_input_has_is_refused_and_named(capsys, tmp_path):
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "o.onnx", "--dim", "bogus=5")
    assert_one_line_error(code, err)
    assert "--dim bogus: no input of the model has an axis of that name (its symbolic axes: batch)" in err
    assert list(tmp_path.iterdir()) == []


def test_a_latency_target_without_dims_warns_about_axes_timed_at_one(capsys, tmp_path):
    from onnx import shape_inference

    proto = onnx.load(DEMO_MODEL)
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    proto = shape_inference.infer_shapes(proto)
    onnx.save(proto, tmp_path / "m.onnx")
    _, _, err = run_cli(capsys, "prune", tmp_path / "m.onnx", "--dry-run", "--target-latency", "0.9",
                        "--criterion", "l1")
    assert "symbolic input axes height are timed at size 1" in err
    _, _, err = run_cli(capsys, "prune", tmp_path / "m.onnx", "--dry-run", "--target-latency", "0.9",
                        "--criterion", "l1", "--dim", "height=8")
    assert "timed at size 1" not in err


def test_computed_sizes_are_evaluated_at_the_given_dims():
    """ONNX Runtime's shape inference names the output size of a strided conv `floor(h/2 - 1/2) + 1`: MACs
    weigh it at the --dim sizes, not at 1 (Paddle's detector once counted as if its input were 1×1)."""
    size = "floor(p2o.DynamicDimension.1/2 - 1/2) + 1"
    formula = Poly.of(size) * Poly.of("batch") * 3
    assert formula.evaluate({"p2o.DynamicDimension.1": 640, "batch": 2}) == 3 * 320 * 2
    assert formula.evaluate() == 3
    assert formula.free_sizes() == {"batch", "p2o.DynamicDimension.1"}
    assert f"({size})" in str(formula)


def test_verification_says_at_which_sizes_it_ran(tmp_path):
    result = prune_file(DEMO_MODEL, tmp_path / "o.onnx", ratio=0.3)
    assert result.verification.inputs == "random inputs, batch 1, other symbolic axes 1"
    from graphprune.passes.pipeline.request import Output

    result = prune_file(DEMO_MODEL, Output(tmp_path / "p.onnx", dims={"batch": 3}), ratio=0.3)
    assert result.verification.inputs == "random inputs, batch=3, other symbolic axes 1"


def test_apply_checks_at_the_sizes_the_plan_was_made_at(tmp_path):
    from graphprune.passes import apply_file
    from graphprune.passes.pipeline.request import Output

    prune_file(DEMO_MODEL, Output(tmp_path / "p.onnx", tmp_path / "plan.json", dims={"batch": 3}), ratio=0.3)
    applied = apply_file(DEMO_MODEL, tmp_path / "plan.json", tmp_path / "a.onnx")
    assert "batch=3" in applied.verification.inputs


def test_results_that_miss_what_was_asked_are_flagged():
    from graphprune.cli.report import missed

    def result(measured: float, drift: float):
        meta = {"latency": {"target": 0.6, "measured": measured, "probes": []}}
        checks = SimpleNamespace(drift=drift, inputs="random inputs")
        return SimpleNamespace(plan=SimpleNamespace(meta=meta), verification=checks)

    assert missed(result(0.59, 0.01)) == []
    assert [w.split(",")[0] for w in missed(result(0.527, 0.01))] == ["the measured latency"]
    assert "misses the target 0.6 by more than 3%" in missed(result(0.527, 0.01))[0]
    assert missed(result(0.527, 0.01), replayed=True) == []
    assert "outputs drift 0.8" in missed(result(0.6, 0.8))[0]


def test_the_bench_ratio_lies_inside_its_rounds():
    """The reported ratio is the median of the rounds' ratios: never outside their range (a ratio of overall
    medians once printed 0.704 beside rounds from 0.713 to 0.777)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        first, second = list(rng.gamma(2, 1, 50)), list(rng.gamma(2, 1, 50) * rng.uniform(0.5, 1.5, 50))
        ratios = runtime.round_ratios(first, second, 5)
        assert min(ratios) <= float(np.median(ratios)) <= max(ratios) and len(ratios) == 5


def test_non_finite_refit_values_are_never_stored():
    import onnx_ir as ir

    from graphprune.analysis.weights import StoredWeight

    value = ir.Value(name="w", const_value=ir.tensor(np.ones((2, 2), np.float32)))
    with pytest.raises(GraphpruneError, match="weight 'w' gave 1 NaN or Inf"):
        StoredWeight(value, None).store(np.array([[1, np.nan], [1, 1]], np.float32))
    assert np.isfinite(value.const_value.numpy()).all()


def test_calibration_spec_reads_only_its_samples(tmp_path):
    np.savez(tmp_path / "calib.npz", x=digits(300))
    spec = CalibrationSpec(path=str(tmp_path / "calib.npz"), samples=10, batch_size=4)
    batches = file_batches(spec.path, ["x"], spec.batch_size, spec.samples)
    assert batches.samples == 10 and [len(b["x"]) for b in batches] == [4, 4, 2]


def test_analyze_says_which_groups_it_does_not_list(capsys, tmp_path):
    """`analyze` without --depth lists no block group, and says so: `prune`'s default method counts it."""
    from tests.analysis.test_blocks import residual_stack

    onnx.save(residual_stack(), tmp_path / "stack.onnx")
    _, out, _ = run_cli(capsys, "analyze", tmp_path / "stack.onnx")
    assert "not listed: 3 residual blocks" in out
    _, out, _ = run_cli(capsys, "analyze", tmp_path / "stack.onnx", "--depth")
    assert "not listed" not in out and "block" in out


def test_latency_probes_rewrite_copies_of_one_loaded_model(tmp_path):
    """Each probe analyses a copy of the model loaded once (no reload, no shape inference again): the copy's
    groups are the original's, and rewriting the copy leaves the original as it was."""
    from graphprune.analysis.coupling import analyze
    from graphprune.io.load import load_model
    from graphprune.ir.model import copy_model
    from graphprune.passes import apply_plan, make_plan

    model = load_model(DEMO_MODEL)
    nodes = [(n.op_type, [v.name for v in n.inputs]) for n in model.graph]
    copy = copy_model(model)
    assert [g.summary() for g in analyze(copy).groups] == [g.summary() for g in analyze(model).groups]
    analysis = analyze(copy)
    apply_plan(analysis, make_plan(analysis, "l1", 0.5))
    assert [(n.op_type, [v.name for v in n.inputs]) for n in model.graph] == nodes
    assert [g.summary() for g in analyze(model).groups] == [g.summary() for g in analyze(load_model(DEMO_MODEL)).groups]


def test_the_paddle_detectors_macs_follow_the_given_sizes():
    """The real PP-OCRv4 detector (rapidocr-onnxruntime's wheel): its layers' sizes are computed expressions
    of the input's height and width; MACs at 640 × 640 are those sizes evaluated there, not at 1 × 1."""
    from graphprune.io.load import load_model
    from graphprune.models import ocr
    from graphprune.verify.cost import cost

    try:
        detector = ocr.packaged_recognizer().with_name("ch_PP-OCRv4_det_infer.onnx")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    model = load_model(detector)
    small = cost(model).macs
    large = cost(model, dims={"p2o.DynamicDimension.1": 640, "p2o.DynamicDimension.2": 640}).macs
    assert large > 1000 * small and 1e9 < large < 1e10, (small, large)
