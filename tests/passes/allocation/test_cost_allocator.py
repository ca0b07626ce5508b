"""One allocator, any cost, known by construction: measured error per unit of cost (parameters, or milliseconds
from a latency table) spent in one knapsack; a unit that saves no time never goes before one that does at
equal error; the quality floor stops where the held-out error crosses E."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.analysis.coupling import analyze
from graphprune.passes.allocation.latency_table import LatencyTable
from graphprune.passes.allocation.quality import held_out_error, within_error
from graphprune.passes.allocation.sensitivity import Sensitivity
from graphprune.passes.allocation.strategies import spend
from tests.harness import load

RNG = np.random.default_rng(0)


def two_branches() -> onnx.ModelProto:
    """y = Relu(x·A1)·A2 + Relu(x·B1)·B2, x [batch, 4]: two hidden groups of 2 units (A, B)."""
    inits, nodes = [], []
    for branch in "AB":
        for name, shape in ((f"{branch}1", (4, 2)), (f"{branch}2", (2, 3))):
            inits.append(numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name))
        nodes += [helper.make_node("MatMul", ["x", f"{branch}1"], [f"{branch}h"], name=f"{branch}_in"),
                  helper.make_node("Relu", [f"{branch}h"], [f"{branch}r"]),
                  helper.make_node("MatMul", [f"{branch}r", f"{branch}2"], [f"{branch}y"], name=f"{branch}_out")]
    nodes.append(helper.make_node("Add", ["Ay", "By"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def groups_by_branch(analysis) -> dict[str, int]:
    return {g.label[0]: g.id for g in analysis.prunable()}


def test_the_knapsack_picks_what_a_hand_computation_picks():
    """A: 1 ms a unit, errors 0.1 then 0.3 in all; B: 4 ms a unit, errors 0.2 then 0.4. Per millisecond B's
    units (0.05) beat A's (0.1, then 0.2): ranked B, B, A, A. With 5 ms to save: one B (4 ms), the second B
    does not fit (8), one A does (5): remove one unit of each."""
    analysis = analyze(load(two_branches()))
    ids = groups_by_branch(analysis)
    sensitivity = Sensitivity({ids["A"]: np.array([0, 1, 2]), ids["B"]: np.array([0, 1, 2])},
                              {ids["A"]: np.array([0, 0.1, 0.3]), ids["B"]: np.array([0, 0.2, 0.4])})
    scores = {gid: np.arange(2, dtype=float) for gid in ids.values()}
    costs = {ids["A"]: np.array([1.0, 1.0]), ids["B"]: np.array([4.0, 4.0])}
    ranking = sensitivity.ranking(analysis, scores, costs)
    assert [gid for _, gid, _ in ranking] == [ids["B"], ids["B"], ids["A"], ids["A"]]
    plan = spend(analysis, scores, ranking, 5.0)
    assert {gid: len(units) for gid, units in plan.removed.items()} == {ids["A"]: 1, ids["B"]: 1}
    # with 3.9 ms no unit of B fits; both of A's do, but a group always keeps one unit
    assert {gid: len(u) for gid, u in spend(analysis, scores, ranking, 3.9).removed.items()} == {ids["A"]: 1}


def test_a_unit_that_saves_no_time_never_goes_first_at_equal_error():
    analysis = analyze(load(two_branches()))
    ids = groups_by_branch(analysis)
    scores = {gid: np.arange(2, dtype=float) for gid in ids.values()}
    costs = {ids["A"]: np.zeros(2), ids["B"]: np.ones(2)}
    for errors in ([0, 0, 0], [0, 0.1, 0.2]):
        sensitivity = Sensitivity({gid: np.array([0, 1, 2]) for gid in ids.values()},
                                  {gid: np.array(errors, dtype=float) for gid in ids.values()})
        ranking = sensitivity.ranking(analysis, scores, costs)
        assert [gid for _, gid, _ in ranking[:2]] == [ids["B"], ids["B"]], (errors, ranking)


def test_units_cost_their_layers_slope_and_their_readers_share():
    """A's producer layer (A_in) takes 1.0 ms at 2 outputs and 0.6 at 1 (0.4 per unit); its reader (A_out)
    1.0 ms over 2 input channels (0.5 per unit). B's layers were not timed: its units cost nothing."""
    analysis = analyze(load(two_branches()))
    ids = groups_by_branch(analysis)
    table = LatencyTable("key", {"A_in": {1: 0.6, 2: 1.0}, "A_out": {3: 1.0, 2: 0.8}})
    costs = table.unit_ms(analysis)
    np.testing.assert_allclose(costs[ids["A"]], [0.9, 0.9])
    np.testing.assert_allclose(costs[ids["B"]], [0.0, 0.0])
    assert table.total_ms() == 2.0


def floor_model(weights: np.ndarray) -> onnx.ModelProto:
    """y = (x·I)·w, x [batch, 8]: removing hidden unit i removes w_i·x_i from y."""
    inits = [numpy_helper.from_array(np.eye(8, dtype=np.float32), "I"),
             numpy_helper.from_array(weights.reshape(8, 1).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "I"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_quality_floor_stops_where_the_held_out_error_crosses_it():
    """Units ranked smallest weight first: the error of removing the k smallest is known from the held-out
    batches themselves (numpy); the floor keeps exactly the largest k whose error is within E."""
    weights = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.3, 2.1])
    analysis = analyze(load(floor_model(weights)))
    (group,) = analysis.prunable()
    held = [{"x": RNG.standard_normal((64, 8)).astype(np.float32)} for _ in range(2)]
    x = np.concatenate([b["x"] for b in held]).astype(np.float64)
    y = x @ weights
    known = [float(np.sum((x[:, :k] @ weights[:k]) ** 2) / np.sum(y ** 2)) for k in range(8)]
    scores = {group.id: weights.copy()}
    sensitivity = Sensitivity({group.id: np.array([0, 2, 4, 7])}, {group.id: np.array([known[0], known[2],
                                                                                      known[4], known[7]])})
    ranking = sensitivity.ranking(analysis, scores)
    for floor in (0.005, 0.02, 0.1):
        plan = within_error(analysis, scores, ranking, held, floor)
        expected = max(k for k in range(8) if known[k] <= floor)
        assert len(plan.removed.get(group.id, [])) == expected, (floor, known)
        assert plan.meta["quality"]["held_out_error"] <= floor
        np.testing.assert_allclose(held_out_error(analysis, plan, held), known[expected], rtol=1e-4, atol=1e-9)


def test_a_latency_target_with_calibration_data_spends_error_per_millisecond(capsys, tmp_path):
    """The default method with data under --target-latency: measured sensitivity, units ranked by error per
    millisecond of the latency table, the budget searched by timing the rewritten model."""
    from graphprune.cli.main import main
    from tests.passes.allocation.test_latency import _conv_chain

    source = tmp_path / "chain.onnx"
    onnx.save(_conv_chain(width=128, side=32), source)
    code = main(["prune", str(source), "-o", str(tmp_path / "small.onnx"), "--target-latency", "0.7", "--threads",
                 "1", "--data-free", "--latency-table", str(tmp_path / "table.json")])
    out = capsys.readouterr().out
    assert code == 0 and "default with --data-free" in out and "kept layer ms→latency" in out, out
    assert LatencyTable.load(tmp_path / "table.json").total_ms() > 0


def test_the_quality_floor_from_the_command_line(capsys, tmp_path):
    """With calibration data it reports the held-out error reached; without, or beside a target, it is refused
    before any work."""
    from graphprune.cli.main import main
    from graphprune.models.demo import DEMO_MODEL, DEMO_TEST_SET
    from tests.cli.test_cli import assert_one_line_error

    code = main(["prune", str(DEMO_MODEL), "-o", str(tmp_path / "a.onnx"), "--max-error", "0.05", "--calib",
                 str(DEMO_TEST_SET)])
    out = capsys.readouterr().out
    assert code == 0 and "quality floor: held-out error" in out and "at most 0.05" in out, out
    code = main(["prune", str(DEMO_MODEL), "-o", str(tmp_path / "b.onnx"), "--max-error", "0.05"])
    assert_one_line_error(code, capsys.readouterr().err)
    assert main(["prune", str(DEMO_MODEL), "-o", str(tmp_path / "c.onnx"), "--max-error", "0.05",
                 "--target-flops", "0.5"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]
