"""Sequential reconstruction: least squares recovers what is recoverable, leaves alone what did not change,
makes up for a drifted residual stream it can express, and the refit model is exactly the masked reference
its rewrite must reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune import verify
from graphprune.analysis.coupling import analyze
from graphprune.analysis.masking import mask_consumers
from graphprune.analysis.plan import PruningPlan
from graphprune.cli.main import main
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.io.save import to_proto
from graphprune.models.demo import DEMO_MODEL, accuracy, digits_test_set
from graphprune.passes import CalibrationSpec, apply_plan, make_plan, prune_file
from graphprune.passes.rewrite.reconstruction import (
    NormalEquations,
    PairStats,
    ResidualStats,
    mixing_matrix,
    reconstruct,
)
from graphprune.verify.drift import max_relative_error
from tests.graphs import GraphBuilder
from tests.harness import load

RNG = np.random.default_rng(0)


def three_layer_mlp(duplicate: bool) -> tuple:
    """x[B, 4] → Relu(x·w1 + b1) [6] → Relu(·w2 + b2) [5] → ·w3 [3]. With `duplicate`, hidden unit 5 of the
    first layer is exactly twice unit 0 (Relu is positively homogeneous), so it can go without any loss."""
    w1, b1 = RNG.standard_normal((4, 6)).astype(np.float32), RNG.standard_normal(6).astype(np.float32) * 0.1
    if duplicate:
        w1[:, 5], b1[5] = 2 * w1[:, 0], 2 * b1[0]
    b = GraphBuilder()
    weights = {"w1": b.const(w1), "w2": b.weight(6, 5), "w3": b.weight(5, 3)}
    first = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", weights["w1"]]), b.const(b1)])])
    second = b.op("Relu", [b.op("Add", [b.op("MatMul", [first, weights["w2"]]), b.weight(5)])])
    return b.build({"x": ["batch", 4]}, {b.op("MatMul", [second, weights["w3"]]): ["batch", 3]}), weights


def group_reading(analysis, weight_name: str):
    return next(g for g in analysis.prunable() if any(m.consumer and m.value.name == weight_name for m in g.members))


def batches(count: int = 4, size: int = 32) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((size, 4)).astype(np.float32)} for _ in range(count)]


def run(model, feeds):
    return runtime.run(runtime.session(model), feeds)


def test_least_squares_recovers_a_removable_neuron_exactly():
    proto, weights = three_layer_mlp(duplicate=True)
    feeds = batches(1)[0]
    dense = run(load(proto), feeds)
    for refit in (False, True):
        analysis = analyze(load(proto))
        plan = PruningPlan()
        plan.remove(group_reading(analysis, weights["w2"]), [5])
        if refit:
            reconstruct(analysis, plan, batches(), ridge=1e-9)
        else:
            mask_consumers(analysis, plan)
        error = max_relative_error(dense, run(apply_plan(analysis, plan), feeds))
        assert (error < 1e-5) if refit else (error > 1e-2), (refit, error)


def test_layers_that_lost_nothing_and_saw_no_change_keep_their_weights():
    x = RNG.standard_normal((200, 6))
    stats = PairStats()
    stats.update(x, x, axis=1)
    everything = np.arange(6)
    for intercept in (False, True):
        mixing = mixing_matrix(NormalEquations.of(stats, everything, intercept, ridge=0.3), stats)
        np.testing.assert_allclose(mixing[:6], np.eye(6), atol=1e-10)
    proto, weights = three_layer_mlp(duplicate=False)
    analysis = analyze(load(proto))
    before = {name: analysis.model.graph.initializers[name].const_value.numpy().copy() for name in weights.values()}
    plan = PruningPlan()
    plan.remove(group_reading(analysis, weights["w3"]), [1, 3])
    reconstruct(analysis, plan, batches())
    after = {name: analysis.model.graph.initializers[name].const_value.numpy() for name in weights.values()}
    for name in (weights["w1"], weights["w2"]):  # upstream of every change
        np.testing.assert_array_equal(after[name], before[name])
    assert not np.allclose(after[weights["w3"]], before[weights["w3"]])
    np.testing.assert_array_equal(after[weights["w3"]][[1, 3]], 0.0)


def test_refit_weights_spilled_to_files_are_the_ones_held_in_memory(monkeypatch):
    """Refit weights past io.SPILLED_BYTES live in mapped temporary files (refit weights add up to the model);
    they are the same numbers, and the next stages' sessions compute on them."""
    proto, weights = three_layer_mlp(duplicate=False)
    data = batches()
    refit = []
    for limit in (1 << 20, 0):
        monkeypatch.setattr("graphprune.io.scratch.SPILLED_BYTES", limit)
        analysis = analyze(load(proto))
        plan = PruningPlan()
        plan.remove(group_reading(analysis, weights["w2"]), [1, 4])
        reconstruct(analysis, plan, data)
        tensors = {name: analysis.model.graph.initializers[name].const_value.numpy() for name in weights.values()}
        assert isinstance(tensors[weights["w2"]], np.memmap) == (limit == 0)
        refit.append(tensors)
    for name in weights.values():
        np.testing.assert_array_equal(refit[0][name], refit[1][name], err_msg=name)


def test_wide_moments_are_summed_in_float32_and_refit_to_the_float64_weights(monkeypatch):
    """Moment matrices past EXACT_BYTES are float32 (half a stage's memory); the refit weights they give are
    the float64 ones to float32 accuracy, and still a refit (not the dense weights)."""
    proto, weights = three_layer_mlp(duplicate=False)
    data = batches()
    refit = []
    for limit in (1 << 24, 0):
        monkeypatch.setattr("graphprune.passes.rewrite.reconstruction.EXACT_BYTES", limit)
        stats = PairStats()
        stats.update(RNG.standard_normal((50, 4)), RNG.standard_normal((50, 4)), axis=1)
        assert stats.gram.dtype == stats.cross.dtype == (np.float64 if limit else np.float32)
        analysis = analyze(load(proto))
        dense = {name: analysis.model.graph.initializers[name].const_value.numpy().copy() for name in weights.values()}
        plan = PruningPlan()
        plan.remove(group_reading(analysis, weights["w2"]), [1, 4])
        reconstruct(analysis, plan, data)
        refit.append({name: analysis.model.graph.initializers[name].const_value.numpy() for name in weights.values()})
    assert not np.allclose(refit[1][weights["w3"]], dense[weights["w3"]], atol=1e-3)
    for name in weights.values():
        np.testing.assert_allclose(refit[1][name], refit[0][name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_residual_drift_a_layer_can_express_is_made_up():
    """The stream it adds into drifted by exactly x̂·D + d: the correction solved for is (D, d)."""
    x = RNG.standard_normal((300, 5))
    drift_map, offset = RNG.standard_normal((5, 3)), RNG.standard_normal(3)
    stats, drift = PairStats(), ResidualStats()
    stats.update(x, x, axis=1)
    assert drift.update(x, 1, x @ drift_map + offset, out_axis=1)
    equations = NormalEquations.of(stats, np.arange(5), intercept=True, ridge=1e-12)
    correction = equations.solve(drift.cross, drift.total)
    np.testing.assert_allclose(correction, np.vstack([drift_map, offset]), atol=1e-8)


@pytest.mark.parametrize("name", ["resnet", "bert"])
def test_reconstructed_model_is_what_its_rewrite_computes(exported, name):
    """Refit in place, the model is the plan's masked reference (compensated); the rewrite reproduces it."""
    source = exported(name, False)
    analysis = analyze(load(source))
    plan = make_plan(analysis, "l2", 0.3)
    dense = load(source)
    feeds = runtime.random_feeds(runtime.session(dense), batch=2, seed=1)
    calibration = [runtime.random_feeds(runtime.session(dense), batch=8, seed=s) for s in range(3)]
    report = reconstruct(analysis, plan, calibration)
    assert report.refit > 0 and report.stages > 1
    reference = run(analysis.model, feeds)
    pruned = apply_plan(analysis, plan)
    verify.check(pruned)
    assert max_relative_error(reference, run(pruned, feeds)) < 1e-4
    assert max_relative_error(reference, run(dense, feeds)) > 1e-3


def test_sequential_rescues_magnitude_pruning_of_the_digits_cnn(tmp_path):
    """At half the channels, l2 one-shot loses most of the accuracy; refit stage by stage keeps nearly all."""
    x, y = digits_test_set()
    np.savez(tmp_path / "calib.npz", x=x[:120])
    spec = CalibrationSpec(str(tmp_path / "calib.npz"), samples=120, batch_size=40)
    kept = {}
    for sequential in (False, True):
        target = tmp_path / f"{sequential}.onnx"
        result = prune_file(DEMO_MODEL, target, criterion="l2", ratio=0.5, sequential=sequential, calibration=spec)
        kept[sequential] = accuracy(target, x[120:], y[120:])
    assert kept[False] < 0.6 and kept[True] > 0.95, kept
    assert result.plan.meta["compensation"] == "refit" and result.plan.meta["reconstruction"]["layers refit"] > 0
    assert result.plan.meta["reconstruction"]["groups re-picked"] == 0  # l2 reads weights only: nothing to re-score


@pytest.mark.parametrize("criterion", ["flap", "obs"])  # obs re-scores each stage from its own Gram matrices
def test_a_sequential_plan_replays_to_the_same_model(tmp_path, capsys, criterion):
    x, _ = digits_test_set()
    np.savez(tmp_path / "calib.npz", x=x[:64])
    common = ["--calib", str(tmp_path / "calib.npz"), "-q"]
    assert main(["prune", str(DEMO_MODEL), "-o", str(tmp_path / "a.onnx"), "--criterion", criterion, "--sequential",
                 "--ratio", "0.4", "--save-plan", str(tmp_path / "plan.json"), *common]) == 0
    assert "reconstruction: 4 stages, 4 layers refit" in capsys.readouterr().out
    assert main(["apply", str(DEMO_MODEL), str(tmp_path / "plan.json"), "-o", str(tmp_path / "b.onnx"),
                 *common]) == 0
    feeds = {"x": x[64:96]}
    np.testing.assert_allclose(run(tmp_path / "a.onnx", feeds)[0], run(tmp_path / "b.onnx", feeds)[0], atol=1e-5)


@pytest.mark.parametrize("arguments, message", [
    (["--sequential"], "--sequential needs calibration data"),
    (["--sequential", "--data-free", "--compensate"], "does not combine with --compensate"),
])
def test_sequential_refuses_what_it_cannot_do(tmp_path, arguments, message):
    with pytest.raises(GraphpruneError, match=message):
        main(["prune", str(DEMO_MODEL), "-o", str(tmp_path / "o.onnx"), "--debug", *arguments])
    assert not (tmp_path / "o.onnx").exists()


def test_held_dense_activations_refit_as_recomputed_ones(tmp_path, monkeypatch, caplog):
    """The dense values every stage reads are computed once and held; past the memory budget they are computed
    again for each stage — the refit weights are the same either way."""
    from graphprune.passes.rewrite import reconstruction

    x, _ = digits_test_set()
    np.savez(tmp_path / "calib.npz", x=x[:96])
    calibration = CalibrationSpec(tmp_path / "calib.npz", batch_size=32)
    weights = []
    for budget in (reconstruction.CACHE_BYTES, 0):
        monkeypatch.setattr(reconstruction, "CACHE_BYTES", budget)
        with caplog.at_level("INFO", logger="graphprune"):
            prune_file(DEMO_MODEL, tmp_path / f"{budget}.onnx", criterion="obs", ratio=0.4,
                       calibration=calibration, sequential=True)
        weights.append([v.const_value.numpy() for v in load(tmp_path / f"{budget}.onnx").graph.initializers.values()])
        assert ("computing them per stage" in caplog.text) == (budget == 0)  # the path each run took
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


@pytest.mark.parametrize("name", ["resnet", "bert"])
def test_stages_run_from_carried_activations_as_from_the_inputs(exported, name, monkeypatch, caplog):
    """Each stage runs from the pruned tensors the stages before it carried (what a refit changed dropped:
    ResNet's shortcut stage reads its block's next conv output), and refits what running every stage from the
    graph inputs refits."""
    from graphprune.passes.rewrite import reconstruction

    source = exported(name, False)
    dense = load(source)
    calibration = [runtime.random_feeds(runtime.session(dense), batch=8, seed=s) for s in range(3)]
    weights, sizes = [], []

    def counted(model, names, *rest, **options):  # the nodes of every stage's session
        sizes.append(len(runtime.prefix_model(to_proto(model), names, *rest, **options).graph.node))
        return runtime.prefix_session(model, names, *rest, **options)
    monkeypatch.setattr(reconstruction, "prefix_session", counted)
    for budget in (reconstruction.CARRY_BYTES, -1):
        monkeypatch.setattr(reconstruction, "CARRY_BYTES", budget)
        analysis = analyze(load(source))
        with caplog.at_level("INFO", logger="graphprune"):
            report = reconstruct(analysis, make_plan(analysis, "l2", 0.3), calibration)
        assert report.stages > 2 and ("running each stage from the inputs" in caplog.text) == (budget < 0)
        weights.append({n: v.const_value.numpy() for n, v in analysis.model.graph.initializers.items()})
        sizes.append(None)
    carried, from_inputs = weights
    for name_, array in from_inputs.items():
        np.testing.assert_allclose(carried[name_], array, rtol=1e-4, atol=1e-5 * np.abs(array).max())
    assert any(not np.array_equal(carried[n], dense.graph.initializers[n].const_value.numpy()) for n in carried)
    split = sizes.index(None)
    assert sum(sizes[:split]) < sum(sizes[split + 1:-1]) / 2  # the carried stages ran under half the nodes
