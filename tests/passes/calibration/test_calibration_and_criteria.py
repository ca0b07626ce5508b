"""Calibration statistics, activation-aware criteria on cases whose answer is known by construction, and
bias compensation held to masked equivalence."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.cli.main import main
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes import CalibrationSpec, apply_plan, make_plan, run_calibration
from graphprune.passes.calibration.sources import ImageSpec, file_batches, image_batches, token_batches
from graphprune.passes.calibration.statistics import ChannelStats, calibrate
from graphprune.passes.importance.obs import inverse_hessian
from graphprune.passes.rewrite.compensation import bias_deltas, obs_weight_updates
from graphprune.verify.drift import max_relative_error
from tests.graphs import GraphBuilder
from tests.harness import load, masked_check, random_subset_plan

RNG = np.random.default_rng(0)


def test_streaming_moments_match_numpy():
    batches = [RNG.standard_normal((n, 5, 3)) * 3 + 1 for n in (4, 1, 7)]
    stats = ChannelStats()
    for batch in batches:
        stats.update(batch, axis=1)
    rows = np.concatenate([np.moveaxis(b, 1, -1).reshape(-1, 5) for b in batches])
    assert stats.count == len(rows)
    np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.variance, rows.var(0), rtol=1e-10)
    np.testing.assert_allclose(stats.mean_square, (rows**2).mean(0), rtol=1e-10)


def mlp(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray):
    """x[B, 4] → Relu(x @ w1 + b1) → @ w2: one neuron group of w1.shape[1] units."""
    b = GraphBuilder()
    hidden = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", b.const(w1)]), b.const(b1)])])
    return b.build({"x": ["batch", 4]}, {b.op("MatMul", [hidden, b.const(w2)]): ["batch", 3]})


def constructed_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit 2 is dead (always 0); unit 4 is constant (5.0); both have the largest outgoing weights."""
    w1 = RNG.standard_normal((4, 6)).astype(np.float32)
    b1 = np.zeros(6, np.float32)
    w1[:, 2], w1[:, 4], b1[2], b1[4] = 0, 0, -1, 5
    w2 = RNG.standard_normal((6, 3)).astype(np.float32)
    w2[2] *= 50
    w2[4] *= 50
    return w1, b1, w2


def constructed_mlp():
    return mlp(*constructed_arrays())


def data(n: int = 64) -> dict:
    return {"x": RNG.standard_normal((n, 4)).astype(np.float32)}


def test_calibration_observes_consumer_inputs_exactly():
    w1, b1, w2 = constructed_arrays()
    analysis = analyze(load(mlp(w1, b1, w2)))
    feeds = data()
    stats = calibrate(analysis, [feeds])
    hidden = np.maximum(feeds["x"] @ w1 + b1, 0)
    (observed,) = stats.stats.values()
    np.testing.assert_allclose(observed.mean, hidden.mean(0), atol=1e-6)
    np.testing.assert_allclose(observed.variance, hidden.var(0), atol=1e-5)


@pytest.mark.parametrize("criterion", ["wanda-sp", "flap"])
def test_activation_criteria_remove_the_dead_unit_first(criterion):
    analysis = analyze(load(constructed_mlp()))
    stats = calibrate(analysis, [data()])
    removed = make_plan(analysis, criterion, 1 / 6, calibration=stats).removed
    assert [u.tolist() for u in removed.values()] == [[2]]
    magnitude = make_plan(analysis, "l1", 1 / 6).removed
    assert 2 not in next(iter(magnitude.values())).tolist()  # what makes this a test of the data


def test_flap_compensation_makes_removing_a_constant_unit_exact():
    model = constructed_mlp()
    analysis = analyze(load(model))
    stats = calibrate(analysis, [data()])
    plan = make_plan(analysis, "flap", 2 / 6, calibration=stats)
    assert sorted(next(iter(plan.removed.values())).tolist()) == [2, 4]
    feeds = data(16)
    dense = runtime.run(runtime.session(load(model)), feeds)
    plain = apply_plan(analyze(load(model)), plan)
    compensated_analysis = analyze(load(model))
    compensated = apply_plan(compensated_analysis, plan, bias_deltas(compensated_analysis, plan, stats))
    error_plain = max_relative_error(dense, runtime.run(runtime.session(plain), feeds))
    error_compensated = max_relative_error(dense, runtime.run(runtime.session(compensated), feeds))
    assert error_compensated <= 1e-5 < 0.1 < error_plain


@pytest.mark.parametrize("compensation", ["bias", "obs"])
@pytest.mark.parametrize(("name", "dynamo"), [("resnet", True), ("resnet", False), ("llama", True), ("bert", True)],
                         ids=["resnet-dynamo", "resnet-legacy", "llama-dynamo", "bert-dynamo"])
def test_compensation_is_masked_equivalent(exported, name, dynamo, compensation):
    """Bias deltas land in existing biases or created ones (dynamo convs, bias-free LLaMA linears); OBS weight
    updates land in the consumer weights. Either way the pruned model equals the compensated masked one."""
    path = exported(name, dynamo)
    analysis = analyze(load(path))
    stats = run_calibration(analysis, CalibrationSpec(data_free=True, samples=8, batch_size=4), gram_limit=4096)
    for group in analysis.prunable():
        result = masked_check(path, random_subset_plan(group.id), calibration=stats, compensation=compensation)
        assert result["error"] <= 1e-4, (group.label, result)


def dependent_mlp() -> tuple:
    """Unit 5 is exactly twice unit 1 (Relu is positively homogeneous): removing it loses nothing if W2[1]
    absorbs 2·W2[5]. Unit 5's outgoing weights are small, so magnitude keeps other units' weight instead."""
    w1 = RNG.standard_normal((4, 6)).astype(np.float32)
    w1[:, 5] = 2 * w1[:, 1]
    w2 = RNG.standard_normal((6, 3)).astype(np.float32) + 3
    w2[5] *= 0.5
    return mlp(w1, np.zeros(6, np.float32), w2)


def test_obs_compensation_removes_a_dependent_unit_exactly(monkeypatch):
    monkeypatch.setattr("graphprune.passes.importance.obs.DAMPING", 1e-9)
    model = dependent_mlp()
    feeds = data(16)
    dense = runtime.run(runtime.session(load(model)), feeds)
    errors = {}
    for criterion in ("obs", "l1"):
        analysis = analyze(load(model))
        stats = calibrate(analysis, [data(256)], gram_limit=64)
        plan = make_plan(analysis, criterion, 1 / 6, calibration=stats)
        weights = obs_weight_updates(analysis, plan, stats) if criterion == "obs" else None
        pruned = apply_plan(analysis, plan, weights=weights)
        errors[criterion] = max_relative_error(dense, runtime.run(runtime.session(pruned), feeds))
        if criterion == "obs":
            assert next(iter(plan.removed.values())).tolist() in ([1], [5])
    assert errors["obs"] <= 1e-4 < errors["l1"], errors


def test_gram_matrices_accumulate_in_float32_to_float64_accuracy():
    batches = [RNG.standard_normal((n, 6, 5)).astype(np.float32) * 3 + 1 for n in (40, 7, 13)]
    stats = ChannelStats()
    for batch in batches:
        stats.update(batch, axis=1, matrix=lambda size: np.zeros((size, size), np.float32))
    rows = np.concatenate([np.moveaxis(b, 1, -1).reshape(-1, 6) for b in batches]).astype(np.float64)
    assert stats.gram.dtype == np.float32
    np.testing.assert_allclose(stats.gram, rows.T @ rows, rtol=1e-5)


def test_statistics_past_the_memory_budget_are_spilled_to_files_and_prune_the_same(monkeypatch):
    """With no room for Gram matrices in memory, each lives in a mapped temporary file (so does the inverse
    Hessian replacing it); the plan and the compensated weights are those of the in-memory run."""
    proto, batch = dependent_mlp(), data(256)
    runs = []
    for budget in (1 << 29, 0):
        monkeypatch.setattr("graphprune.passes.calibration.statistics.GRAM_MEMORY", budget)
        analysis = analyze(load(proto))
        stats = calibrate(analysis, [batch], gram_limit=64)
        grams = [s.gram for s in stats.stats.values() if s.gram is not None]
        assert grams and all(isinstance(g, np.memmap) == (budget == 0) for g in grams)
        plan = make_plan(analysis, "obs", 1 / 6, calibration=stats)
        member = next(m for g in analysis.prunable() for m in g.members if m.consumer)
        assert isinstance(inverse_hessian(stats, member), np.memmap) == (budget == 0)
        runs.append((plan.removed, obs_weight_updates(analysis, plan, stats)))
    (held, held_weights), (spilled, spilled_weights) = runs
    assert {k: v.tolist() for k, v in held.items()} == {k: v.tolist() for k, v in spilled.items()}
    for (value, array), other in zip(held_weights.items(), spilled_weights.values(), strict=True):
        np.testing.assert_array_equal(array, other, err_msg=value.name)


@pytest.mark.parametrize("damping, kept_as", [(0.01, np.float32), (1e-9, np.float64)])
def test_inverse_hessians_are_computed_once_as_precise_as_their_conditioning_needs(monkeypatch, damping, kept_as):
    """Unit 5 of the dependent MLP is twice unit 1, so H is singular but for the damping: with 1 % it is well
    conditioned and H⁻¹ is kept in float32; with 1e-9 (κ ~ 1e9) it stays float64. Either way it is inverted
    once, replaces the Gram matrix, and is the damped inverse."""
    monkeypatch.setattr("graphprune.passes.importance.obs.DAMPING", damping)
    analysis = analyze(load(dependent_mlp()))
    stats = calibrate(analysis, [data(256)], gram_limit=64)
    member = next(m for g in analysis.prunable() for m in g.members if m.consumer)
    channel = stats.of(member.reads.value, member.reads.axis)
    h = 2 * channel.gram.astype(np.float64) / channel.count
    h += damping * np.mean(np.diag(h)) * np.eye(len(h))
    first = inverse_hessian(stats, member)
    assert inverse_hessian(stats, member) is first and channel.gram is None and first.dtype == kept_as
    np.testing.assert_allclose(first @ h, np.eye(len(h)), atol=1e-4)


def test_compensation_releases_the_inverse_hessians_it_used_last():
    analysis = analyze(load(dependent_mlp()))
    stats = calibrate(analysis, [data(256)], gram_limit=64)
    plan = make_plan(analysis, "obs", 1 / 6, calibration=stats)
    kept = obs_weight_updates(analysis, plan, stats)
    assert all(s.hessian_inverse is not None for s in stats.stats.values())
    released = obs_weight_updates(analysis, plan, stats, release=True)
    assert all(s.hessian_inverse is None and s.gram is None for s in stats.stats.values())
    assert all(np.array_equal(kept[v], released[v]) for v in kept)


def test_criteria_that_need_data_say_so(tmp_path, capsys):
    code = main(["prune", str(DEMO_MODEL), "-o", str(tmp_path / "o.onnx"), "--criterion", "wanda-sp"])
    err = capsys.readouterr().err
    assert code == 1 and "needs calibration data" in err and not (tmp_path / "o.onnx").exists()


def test_calibration_files_are_checked(tmp_path):
    np.savez(tmp_path / "wrong.npz", tokens=np.zeros((4, 3)), other=np.zeros(4))
    with pytest.raises(GraphpruneError, match="no arrays for model inputs"):
        list(file_batches(tmp_path / "wrong.npz", ["x"], 2))
    np.save(tmp_path / "one.npy", np.zeros((4, 3)))
    with pytest.raises(GraphpruneError, match="single-input"):
        list(file_batches(tmp_path / "one.npy", ["a", "b"], 2))
    assert [b["x"].shape[0] for b in file_batches(tmp_path / "one.npy", ["x"], 3)] == [3, 1]


def test_cli_flap_with_calibration_file(tmp_path, capsys):
    with np.load(DEMO_MODEL.parent / "digits_test.npz") as d:
        np.savez(tmp_path / "calib.npz", images=d["x"][:64])
    code = main(["prune", str(DEMO_MODEL), "-o", str(tmp_path / "o.onnx"), "--criterion", "flap",
                 "--calib", str(tmp_path / "calib.npz"), "--ratio", "0.25", "--save-plan", str(tmp_path / "p.json")])
    assert code == 0 and '"compensation": "bias"' in (tmp_path / "p.json").read_text()


def test_token_files_pad_and_mask(tmp_path, exported):
    (tmp_path / "ids.txt").write_text("5 6 7\n8 9\n\n10 11 12 13\n")
    batches = list(token_batches(tmp_path / "ids.txt", ["input_ids", "attention_mask"], batch_size=2))
    assert [b["input_ids"].shape for b in batches] == [(2, 3), (1, 4)]  # shortest first: least padding
    np.testing.assert_array_equal(batches[0]["input_ids"], [[8, 9, 0], [5, 6, 7]])
    np.testing.assert_array_equal(batches[0]["attention_mask"], [[1, 1, 0], [1, 1, 1]])
    code = main(["prune", str(exported("bert", True)), "-o", str(tmp_path / "o.onnx"), "--criterion", "flap",
                 "--calib", str(tmp_path / "ids.txt"), "--ratio", "0.25", "--batch-size", "2"])
    assert code == 0


def test_token_files_padded_to_a_length_or_packed_into_rows(tmp_path):
    """--calib-length N pads every line to N tokens (longer ones cut); with --calib-pack consecutive lines
    fill rows of exactly N (the rest of the stream left out), and --samples counts rows."""
    (tmp_path / "ids.txt").write_text("5 6 7\n8 9\n10 11 12 13 14 15\n")
    (padded,) = token_batches(tmp_path / "ids.txt", ["input_ids", "attention_mask"], 3, length=4)
    np.testing.assert_array_equal(padded["input_ids"], [[8, 9, 0, 0], [5, 6, 7, 0], [10, 11, 12, 13]])
    np.testing.assert_array_equal(padded["attention_mask"].sum(1), [2, 3, 4])
    packed = token_batches(tmp_path / "ids.txt", ["input_ids"], 3, samples=2, length=4, pack=True)
    assert packed.samples == 2
    np.testing.assert_array_equal(next(iter(packed))["input_ids"], [[5, 6, 7, 8], [9, 10, 11, 12]])


@pytest.mark.parametrize("args, message", [
    (["--calib-pack"], "--calib-pack fills rows of --calib-length tokens"),
    (["--calib-length", "8"], "--calib-length shapes text calibration"),
])
def test_text_shapes_refused_where_they_cannot_apply(tmp_path, capsys, args, message):
    with np.load(DEMO_MODEL.parent / "digits_test.npz") as d:
        np.savez(tmp_path / "calib.npz", images=d["x"][:8])
    code = main(["prune", str(DEMO_MODEL), "-o", str(tmp_path / "o.onnx"), "--criterion", "flap",
                 "--calib", str(tmp_path / "calib.npz"), *args])
    assert code != 0 and message in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()


def test_image_folders_match_the_same_pixels_as_arrays(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    with np.load(DEMO_MODEL.parent / "digits_test.npz") as d:
        pixels = np.round(d["x"][:12, 0] * 255).astype(np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(pixels):
        image_module.fromarray(image, mode="L").save(folder / f"{index:03d}.png")
    analysis = analyze(load(DEMO_MODEL))
    spec = ImageSpec(size=(8, 8), mean=(0.0,), std=(1.0,), grayscale=True)
    from_images = calibrate(analysis, image_batches(folder, "x", spec, 5))
    arrays = (pixels.astype(np.float32) / 255.0)[:, None]
    from_arrays = calibrate(analysis, [{"x": arrays[:5]}, {"x": arrays[5:10]}, {"x": arrays[10:]}])
    assert from_images.samples == from_arrays.samples == 12
    for key, stats in from_arrays.stats.items():
        np.testing.assert_allclose(from_images.stats[key].mean, stats.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(from_images.stats[key].variance, stats.variance, rtol=1e-5, atol=1e-7)


def test_greedy_obs_never_removes_both_halves_of_a_dependent_pair(monkeypatch):
    """Units 1 and 5 (= 2 x unit 1) each look free alone; once one is gone the other carries their signal."""
    monkeypatch.setattr("graphprune.passes.importance.obs.DAMPING", 1e-9)
    analysis = analyze(load(dependent_mlp()))
    stats = calibrate(analysis, [data(256)], gram_limit=64)
    removed = set(next(iter(make_plan(analysis, "obs", 2 / 6, calibration=stats).removed.values())).tolist())
    assert len(removed & {1, 5}) == 1, removed


@pytest.mark.parametrize("width", [1, 3])
def test_greedy_obs_costs_solved_as_one_batch_are_each_units_own(width):
    """The greedy step's costs of every remaining unit, one batched solve, equal ε_M = tr(W_Mᵀ (H⁻¹_MM)⁻¹ W_M)
    solved unit by unit; units owning unequal position counts (or none) are costed one at a time."""
    from graphprune.passes.importance.obs import _costs, block_cost

    rng = np.random.default_rng(3)
    w = rng.standard_normal((4 * width, 5))
    a = rng.standard_normal((4 * width, 4 * width))
    hinv = np.linalg.inv(a @ a.T + np.eye(4 * width))
    units = [np.arange(u * width, (u + 1) * width) for u in range(4)]
    expected = [block_cost(w, hinv, units[u]) for u in (0, 2, 3)]
    np.testing.assert_allclose(_costs(w, hinv, units, [0, 2, 3]), expected, rtol=1e-10)
    uneven = [units[0], units[1][:1], np.zeros(0, dtype=np.int64), units[3]]
    np.testing.assert_allclose(_costs(w, hinv, uneven, [0, 1, 2, 3]),
                               [block_cost(w, hinv, uneven[0]), block_cost(w, hinv, uneven[1]), 0.0,
                                block_cost(w, hinv, uneven[3])], rtol=1e-10)
