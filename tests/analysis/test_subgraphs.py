"""Weights inside control flow: the channels of layers in an If's branches (Silero VAD picks its 16 kHz or 8 kHz
network with one) are groups like any other, prune exactly whichever branch runs, and freeze where they reach
a branch's results; a run that needs calibration freezes them with the reason (ORT cannot return a body's
intermediate values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.analysis.coupling import analyze
from graphprune.errors import GraphpruneError
from graphprune.io.load import load_model
from graphprune.passes import CalibrationSpec, prune_file
from graphprune.verify.cost import count_params
from tests.harness import masked_check, random_subset_plan

RNG = np.random.default_rng(0)


def branch(name: str, widths: tuple[int, int]) -> onnx.GraphProto:
    """x[1, 3, 8, 8] → Conv(widths[0]) → Relu → Conv(widths[1]) → Relu → Conv(4): the branch's result."""
    nodes, inits, current, channels = [], [], "x", 3
    for index, width in enumerate((*widths, 4)):
        weight = numpy_helper.from_array(RNG.standard_normal((width, channels, 3, 3)).astype(np.float32) * 0.3,
                                         f"{name}_w{index}")
        bias = numpy_helper.from_array(RNG.standard_normal(width).astype(np.float32) * 0.1, f"{name}_b{index}")
        nodes.append(helper.make_node("Constant", [], [weight.name], value=weight))
        inits.append(bias)
        out = f"{name}_c{index}"
        nodes.append(helper.make_node("Conv", [current, weight.name, bias.name], [out], pads=[1, 1, 1, 1]))
        if index < 2:
            nodes.append(helper.make_node("Relu", [out], [f"{out}_r"]))
            out = f"{out}_r"
        current, channels = out, width
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)],
                             inits)


def if_model() -> onnx.ModelProto:
    cond = helper.make_node("If", ["pick"], ["y"], then_branch=branch("then", (8, 6)),
                            else_branch=branch("else", (5, 7)))
    graph = helper.make_graph([cond], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                                            helper.make_tensor_value_info("pick", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "if.onnx"
    onnx.save(if_model(), path)
    return path


def feeds(pick: bool) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32), "pick": np.array(pick)}


def test_branch_layers_are_groups_and_their_results_freeze(model_path):
    groups = analyze(load_model(model_path)).groups
    sizes = sorted((g.size, g.frozen) for g in groups)
    assert sizes == [(4, True), (4, True), (5, False), (6, False), (7, False), (8, False)], sizes
    assert all("output of an If/Loop/Scan body" in g.frozen_reasons[0] for g in groups if g.frozen)


@pytest.mark.parametrize("pick", [True, False], ids=["then", "else"])
def test_branch_groups_prune_exactly_whichever_branch_runs(model_path, pick):
    analysis = analyze(load_model(model_path))
    for group in analysis.prunable():
        result = masked_check(model_path, random_subset_plan(group.id, 0), feeds=feeds(pick))
        runs = group.label.startswith("then") == pick
        assert result["error"] <= 1e-5, (group.label, result)
        assert (result["masking_effect"] > 1e-3) == runs, (group.label, result)  # only the branch that runs moves
        assert result["params"][1] < result["params"][0]


def test_params_count_every_branch(model_path):
    weights = (8 * 27 + 8) + (6 * 72 + 6) + (4 * 54 + 4) + (5 * 27 + 5) + (7 * 45 + 7) + (4 * 63 + 4)
    assert count_params(load_model(model_path)) == weights


def test_pruning_branch_layers_without_data_works_and_with_data_says_why_not(model_path, tmp_path):
    result = prune_file(model_path, tmp_path / "p.onnx", ratio=0.5, criterion="l2")
    assert result.after.params < result.before.params and "onnx.checker" in result.verification.passed
    with pytest.raises(GraphpruneError, match="inside an If/Loop/Scan body, where calibration cannot observe"):
        prune_file(model_path, tmp_path / "q.onnx", ratio=0.5, calibration=CalibrationSpec(data_free=True))
