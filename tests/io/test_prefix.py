"""Sessions that compute only early tensors run only the nodes those need (ONNX Runtime runs every node of a
graph whatever is fetched): same values as the whole graph exposing them, on a model the team did not write."""

from __future__ import annotations

import numpy as np

from graphprune.io.runtime import PREFIX_HANDED_BYTES, prefix_model, prefix_session
from graphprune.io.save import to_proto
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes.calibration.statistics import session_exposing
from tests.harness import load

OCR = DEMO_MODEL.parent / "ocr_recognizer.onnx"  # trained and exported by Paddle


def test_a_prefix_computes_what_the_whole_graph_computes_with_a_fraction_of_its_nodes():
    model = load(OCR)
    nodes = list(model.graph)
    names = [nodes[len(nodes) // 4].outputs[0].name, nodes[len(nodes) // 3].outputs[0].name]
    proto = to_proto(model)
    cut = prefix_model(proto, names)
    assert len(cut.graph.node) < len(nodes) / 2 and len(cut.graph.initializer) < len(proto.graph.initializer)
    handed = [t for t in cut.graph.initializer if len(t.raw_data) >= PREFIX_HANDED_BYTES]
    assert handed  # the session gets these as buffers, not serialised: its values below prove them right
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 128)).astype(np.float32)
    feeds = {model.graph.inputs[0].name: x}
    whole = session_exposing(model, names).run(names, feeds)
    for ours, theirs in zip(prefix_session(model, names).run(names, feeds), whole, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert np.abs(whole[1]).max() > 0  # a real tensor, not a constant
