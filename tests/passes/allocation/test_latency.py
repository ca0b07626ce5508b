"""Latency as the target: the per-layer table's structure (not its times), fast multiples known by
construction, snapping that keeps masked equivalence, the search on a known latency curve, and an end-to-end
--target-latency run whose result is timed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.cli.main import main
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes.allocation.latency import TOLERANCE, search
from graphprune.passes.allocation.latency_table import (
    MULTIPLES,
    LatencyTable,
    candidate_widths,
    load_or_measure,
    measure,
)
from graphprune.passes.allocation.strategies import to_target, uniform
from graphprune.passes.pipeline.prune import make_plan
from graphprune.verify.cost import projected_cost
from tests.graphs import GraphBuilder
from tests.harness import load, masked_check


def _conv_chain(width: int = 96, side: int = 16) -> onnx.ModelProto:
    """x [1, 8, side, side] → three 3×3 convs of `width` channels (with ReLU) → 1×1 conv to 4."""
    b = GraphBuilder()
    h = b.op("Relu", [b.conv("x", 8, width, k=3)])
    h = b.op("Relu", [b.conv(h, width, width, k=3)])
    h = b.op("Relu", [b.conv(h, width, width, k=3)])
    for node in b.nodes:
        node.name = node.output[0]
    return b.build({"x": [1, 8, side, side]}, [b.conv(h, width, 4)])


def test_table_has_every_layer_at_its_candidate_widths_and_round_trips(tmp_path):
    analysis = analyze(load(_conv_chain()))
    table = measure(analysis, "key", None, threads=1)
    assert len(table.layers) == 3  # the three prunable convs (the last one's outputs are the graph output)
    for widths in table.layers.values():
        assert set(widths) == set(candidate_widths(96)) and all(ms > 0 for ms in widths.values())
    assert set(table.group_multiples(analysis).values()) <= {1, *MULTIPLES}
    path = tmp_path / "table.json"
    table.save(path)
    assert LatencyTable.load(path) == table
    assert load_or_measure(path, analysis, "key", None) == table  # reused: same key
    other = load_or_measure(path, analysis, "other", None)  # re-measured for another key, and saved
    assert other.key == "other" and json.loads(path.read_text())["key"] == "other"


def test_candidate_widths_surround_each_fraction_with_multiples():
    widths = candidate_widths(100)
    assert widths[-1] == 100 and 1 <= widths[0]
    for multiple in MULTIPLES:
        assert {48 - 48 % multiple, 48 - 48 % multiple + 1} <= set(widths)  # around 0.5 × 100 → 50


def test_fast_multiple_is_the_finest_step():
    steps_of_16 = LatencyTable("k", {"conv": {w: float(-(-w // 16)) for w in range(1, 65)}})
    assert steps_of_16.fast_multiple("conv") == 16
    linear = LatencyTable("k", {"conv": {w: float(w) for w in range(1, 65)}})
    assert linear.fast_multiple("conv") == 1


def test_snapped_widths_keep_masked_equivalence():
    model = _conv_chain()
    analysis = analyze(load(model))
    multiples = {g.id: 16 for g in analysis.prunable()}

    def plan(a):
        return uniform(a, {g.id: np.arange(g.size, dtype=float) for g in a.prunable()}, 0.3, multiples)

    result = masked_check(model, plan)
    assert result["error"] <= 1e-5 < result["masking_effect"]
    for gid, units in result["plan"].removed.items():
        assert (analysis.group(gid).size - len(units)) % 16 == 0


class _Curve:
    """Latency known by construction: the plan's projected MACs fraction to the power 0.7."""

    def __init__(self, analysis):
        self.analysis, self.probes = analysis, []
        self.dense = projected_cost(analysis, make_plan(analysis, "l2", 0.0)).macs

    def ratio(self, plan) -> float:
        return (projected_cost(self.analysis, plan).macs / self.dense) ** 0.7


def test_search_finds_the_target_on_a_known_curve():
    analysis = analyze(load(_conv_chain()))
    scores = {g.id: np.arange(g.size, dtype=float) for g in analysis.prunable()}
    curve = _Curve(analysis)
    plan = search(lambda flops: to_target(analysis, scores, "flops", flops), curve, 0.6)
    assert abs(plan.meta["latency"]["measured"] - 0.6) <= TOLERANCE * 0.6
    assert plan.meta["latency"]["probes"] and plan.meta["latency"]["measured"] <= 0.6 * (1 + TOLERANCE)


def test_target_latency_from_the_command_line_is_measured(capsys, tmp_path):
    source, target = tmp_path / "chain.onnx", tmp_path / "small.onnx"
    onnx.save(_conv_chain(width=128, side=32), source)
    code = main(["prune", str(source), "-o", str(target), "--target-latency", "0.7", "--threads", "1", "--json",
                 "--latency-table", str(tmp_path / "table.json")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and target.exists() and (tmp_path / "table.json").exists()
    latency = report["latency"]
    assert latency["target"] == 0.7 and latency["measured"] <= 0.7 * (1 + TOLERANCE) and latency["probes"]


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_target_latency_out_of_range_is_refused(capsys, value):
    assert main(["prune", str(DEMO_MODEL), "-o", "x.onnx", "--target-latency", value]) == 2
    assert "--target-latency" in capsys.readouterr().err
