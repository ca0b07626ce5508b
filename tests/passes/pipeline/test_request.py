"""A run is one typed request: keywords and a PruneRequest are the same run, criteria declare what they need and
provide (the request asks them, not their names), and a request that cannot work is refused before any file
is read."""

from __future__ import annotations

import hashlib

import pytest

from graphprune.errors import GraphpruneError
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes import PruneRequest, prune_file
from graphprune.passes.calibration.spec import CalibrationSpec
from graphprune.passes.importance import criterion_class


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_request_and_its_keywords_are_the_same_run(tmp_path):
    given = prune_file(DEMO_MODEL, tmp_path / "a.onnx", PruneRequest(criterion="l1", ratio=0.5, round_to=2))
    spelled = prune_file(DEMO_MODEL, tmp_path / "b.onnx", criterion="l1", ratio=0.5, round_to=2)
    assert {k: v.tolist() for k, v in given.plan.removed.items()} == \
        {k: v.tolist() for k, v in spelled.plan.removed.items()}
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "b.onnx")
    fewer = prune_file(DEMO_MODEL, tmp_path / "c.onnx", PruneRequest(criterion="l1", ratio=0.5), ratio=0.25)
    assert fewer.after.params > given.after.params  # keywords override the request's fields


def test_criteria_declare_compensation_and_statistics():
    assert criterion_class("flap").compensation == "bias" and criterion_class("obs").compensation == "weights"
    assert criterion_class("l2").compensation is None and criterion_class("obs").gram_limit > 0
    assert criterion_class("wanda-sp").gram_limit == 0
    assert PruneRequest("flap").compensates and PruneRequest("obs").compensates
    assert not PruneRequest("l2").compensates and not PruneRequest("obs", sequential=True).compensates
    assert PruneRequest("l2", compensate=True).compensates
    with pytest.raises(GraphpruneError, match="unknown criterion 'l3'"):
        criterion_class("l3")


@pytest.mark.parametrize("fields, message", [
    ({"depth": True}, "depth pruning ranks residual blocks"),
    ({"criterion": "flap"}, "bias compensation needs calibration data"),
    ({"criterion": "l2", "sequential": True}, "--sequential needs calibration data"),
    ({"criterion": "obs", "sequential": True, "compensate": True,
      "calibration": CalibrationSpec(data_free=True)}, "--sequential refits layers itself"),
])
def test_requests_that_cannot_work_are_refused_before_reading(tmp_path, fields, message):
    missing = tmp_path / "no_such_model.onnx"  # never opened: the refusal comes first
    with pytest.raises(GraphpruneError, match=message):
        prune_file(missing, tmp_path / "out.onnx", **fields)
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_structure_is_refused_saying_so(tmp_path):
    from tests.graphs import GraphBuilder

    b = GraphBuilder()
    source = tmp_path / "relu.onnx"
    source.write_bytes(b.build({"x": ["batch", 4]}, [b.op("Relu", ["x"])]).SerializeToString())
    with pytest.raises(GraphpruneError, match="no structure graphprune can prune .*graphprune ops"):
        prune_file(source, tmp_path / "out.onnx", ratio=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.onnx"]
