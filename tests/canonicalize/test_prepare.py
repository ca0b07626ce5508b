"""`prepare` runs the canonicalisations to their fixed point: on a loaded model one more round changes nothing,
and every canonicalisation is registered once, in the one ordered list."""

from __future__ import annotations

import onnx
import pytest

from graphprune.canonicalize import CANONICALISATIONS
from graphprune.canonicalize.passes import Fold
from graphprune.io.load import load_model
from graphprune.models.demo import DATA, DEMO_MODEL


def folds(root) -> list[str]:
    """Names of the fold functions in a pass tree, in the order they run."""
    if isinstance(root, Fold):
        return [root.fold.__name__]
    children = [getattr(root, a) for a in ("first", "then", "passes") if hasattr(root, a)]
    flat = []
    for child in children:
        flat += [n for c in (child if isinstance(child, list) else [child]) for n in folds(c)]
    return flat


def test_every_canonicalisation_is_listed_once():
    names = folds(CANONICALISATIONS)
    assert len(names) == len(set(names)) == 15 and names[0] == "unshare_constants"
    assert names[-2:] == ["fold_inferred_targets", "fold_batch_merges"]  # once the rest has settled


@pytest.mark.parametrize("path", [DEMO_MODEL, DATA / "ocr_recognizer.onnx"], ids=["digits", "ocr"])
def test_a_loaded_model_is_at_the_fixed_point(path):
    model = load_model(path)
    nodes = [(n.op_type, n.name) for n in model.graph]
    assert not CANONICALISATIONS(model).modified
    assert [(n.op_type, n.name) for n in model.graph] == nodes


def declared_batch(value) -> onnx.ModelProto:
    model = onnx.load(str(DEMO_MODEL))
    for info in [*model.graph.input, *model.graph.output]:
        dim = info.type.tensor_type.shape.dim[0]
        dim.Clear()
        if value is not None:
            dim.dim_value = value
    return model


def test_a_declared_negative_size_is_an_unknown_one(tmp_path):
    """tf2onnx declares unknown sizes as -1: the same structure as an unnamed size, and counts never negative."""
    from graphprune.analysis.coupling import analyze
    from graphprune.io.load import from_proto
    from graphprune.verify.cost import cost

    negative, unnamed = from_proto(declared_batch(-1)), from_proto(declared_batch(None))
    assert cost(negative).macs == cost(unnamed).macs > 0
    summary = lambda m: [(g.kind, g.size, g.frozen) for g in analyze(m).groups]  # noqa: E731
    assert summary(negative) == summary(unnamed) and sum(not f for _, _, f in summary(negative)) == 3
