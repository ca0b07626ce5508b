"""--optimize: ONNX Runtime's transformer optimizer fuses the pruned BERT (attention with the pruned head
count, SkipLayerNorm, BiasGelu) and the fusion is kept only when it computes what the unfused model does."""

from __future__ import annotations

import onnx
import pytest

from graphprune.io import runtime
from graphprune.passes.pipeline.prune import prune_file
from graphprune.passes.pipeline.request import Output
from graphprune.passes.rewrite import optimize
from graphprune.verify.drift import max_relative_error

pytest.importorskip("torch")


def _contrib(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft"}


def test_pruned_bert_is_fused_and_matches_the_unfused(exported, tmp_path):
    source = exported("bert", False)
    plain, fused = tmp_path / "plain.onnx", tmp_path / "fused.onnx"
    cut = {"ratio": 0.0, "kind_ratios": {"head": 0.5, "neuron": 0.3}}
    prune_file(source, Output(plain, dims={"seq": 16}), **cut)
    result = prune_file(source, Output(fused, dims={"seq": 16}, optimize="bert"), **cut)
    assert result.fusion["kept"] and result.fusion["fused"].get("Attention") == 2
    assert {"Attention", "SkipLayerNormalization"} <= _contrib(fused) and not _contrib(plain)
    sess = runtime.session(str(plain))
    feeds = runtime.random_feeds(sess, batch=2, dims={"seq": 16})
    error = max_relative_error(runtime.run(sess, feeds), runtime.run(runtime.session(str(fused)), feeds))
    assert error <= optimize.FUSION_TOLERANCE


def test_a_fusion_that_changes_outputs_is_not_kept(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(optimize, "FUSION_TOLERANCE", -1.0)  # every fusion now "changes the outputs"
    target = tmp_path / "out.onnx"
    result = prune_file(exported("bert", False), Output(target, dims={"seq": 16}, optimize="bert"), ratio=0.0,
                        kind_ratios={"head": 0.5})
    assert not result.fusion["kept"] and result.fusion["fused"] and not _contrib(target)
