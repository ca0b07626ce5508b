"""Token reduction compiled into exported transformers: exact at keep rate 1, padding dropped before any real
token (so real tokens compute exactly what they did), static and dynamic sequence exports from both torch
exporters, per-token outputs restored, unknown forms refused with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphprune.analysis.tokens import find_token_flow
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.io.save import StagedModel
from graphprune.passes.rewrite.tokens import TokenSchedule, insert_token_reduction
from tests.graphs import GraphBuilder
from tests.harness import load

pytest.importorskip("torch")
RNG = np.random.default_rng(0)


def reduced(path, schedule: TokenSchedule, tmp_path, name: str = "reduced.onnx"):
    """The model at `path` with `schedule`'s token reduction, saved, checked, with its report."""
    model = load(path)
    report = insert_token_reduction(model, schedule)
    out = tmp_path / name
    with StagedModel(model, out) as staged:
        staged.publish()
    onnx.checker.check_model(str(out), full_check=True)
    return out, report


def bert_feeds(batch: int, seq: int, real: list[int] | None = None) -> dict[str, np.ndarray]:
    mask = np.ones((batch, seq), np.int64)
    for row, length in enumerate(real or []):
        mask[row, length:] = 0
    return {"input_ids": RNG.integers(1, 100, (batch, seq)).astype(np.int64), "attention_mask": mask}


def run(path, feeds):
    return runtime.run(runtime.session(str(path)), feeds)[0]


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_keeping_every_token_computes_the_original(exported, tmp_path, dynamo):
    """keep 1 inserts the whole machinery (scores, TopK, gathers, restore) and must change nothing, at several
    batch sizes and sequence lengths, with padding."""
    bert = exported("bert", dynamo)
    out, report = reduced(bert, TokenSchedule(1.0, (1,)), tmp_path)
    assert report.restored == ["y"] and report.sites[0]["block"] == 1
    for batch, seq in [(1, 5), (3, 12), (2, 30)]:
        feeds = bert_feeds(batch, seq, [seq - 2])
        np.testing.assert_allclose(run(out, feeds), run(bert, feeds), atol=1e-5)
    vit = exported("vit", dynamo)
    out, report = reduced(vit, TokenSchedule(1.0), tmp_path, "vit.onnx")
    assert report.pooled == ["Gather takes token(s) [0]"] and not report.restored
    for batch in (1, 4):
        x = {"x": RNG.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
        np.testing.assert_allclose(run(out, x), run(vit, x), atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_padding_goes_first_and_real_tokens_compute_what_they_did(exported, tmp_path, dynamo):
    """Padded keys get no attention, so dropping only padding leaves every real token's output as it was; the
    keep rate here keeps exactly the real tokens of the longest row. Dropping one real token more moves them."""
    bert = exported("bert", dynamo)
    seq, real = 16, [8, 5, 8]
    feeds = bert_feeds(3, seq, real)
    dense = run(bert, feeds)
    out, report = reduced(bert, TokenSchedule(0.5, (1,)), tmp_path)  # keeps 8 of 16
    assert report.sites[0]["kept"] == "max(1, floor((seq)*0.5 + 1/2))"
    pruned = run(out, feeds)
    assert pruned.shape == dense.shape
    for row, length in enumerate(real):
        np.testing.assert_allclose(pruned[row, :length], dense[row, :length], atol=1e-4)
    fewer, _ = reduced(bert, TokenSchedule(0.4, (1,)), tmp_path, "fewer.onnx")  # keeps 6: drops 2 real tokens
    assert np.abs(run(fewer, feeds)[0, :8] - dense[0, :8]).max() > 1e-2


def test_static_exports_get_their_shape_constants_rewritten(tmp_path):
    """A static export (batch 1, fixed sequence) bakes the token count into Reshape constants and declared shapes;
    both follow the reduction (the full checker validates the shapes) and the kept count is a number."""
    from graphprune.models.reference import ExportForm, export_form

    for name, feeds in [("vit", {"x": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)}),
                        ("bert", None)]:
        path = export_form(name, ExportForm(True, "static"), tmp_path)
        out, report = reduced(path, TokenSchedule(0.5, (1,)), tmp_path, f"{name}.onnx")
        assert report.sites == [{"block": 1, "keep": 0.5, "before": 17, "kept": 9} if name == "vit" else
                                {"block": 1, "keep": 0.5, "before": 12, "kept": 6}]
        if feeds is None:
            feeds = bert_feeds(1, 12)
        dense, pruned = run(path, feeds), run(out, feeds)
        assert pruned.shape == dense.shape and not np.allclose(pruned, dense, atol=1e-3)


def test_restore_modes_fill_dropped_tokens_as_documented(exported, tmp_path):
    """"dropped": a dropped token's output is its value entering the block it was dropped before; "nearest": the
    output of a kept token. Kept tokens are the same in both."""
    bert = exported("bert", True)
    feeds = bert_feeds(2, 10)
    outs = {mode: run(reduced(bert, TokenSchedule(0.5, (1,), restore=mode), tmp_path, f"{mode}.onnx")[0], feeds)
            for mode in ("dropped", "nearest")}
    same = np.isclose(outs["dropped"], outs["nearest"], atol=1e-6).all(axis=2)
    assert same.sum(axis=1).tolist() == [5, 5]  # the 5 kept tokens of each row
    dropped_rows = outs["nearest"][~same]
    kept_rows = outs["nearest"][same]
    assert all(np.isclose(kept_rows, row, atol=1e-6).all(axis=1).any() for row in dropped_rows)


def token_mixer():
    """An attention block followed by an MLP-Mixer token-mixing layer (a weight over the token axis)."""
    import torch
    from torch import nn

    from graphprune.models.transformers import Attention

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Attention(16, 2), Attention(16, 2)
            self.mix = nn.Parameter(torch.randn(6, 6))

        def forward(self, x):
            x = x + self.a(x)
            x = x + self.b(x)
            return self.mix @ x  # [n, n] @ [b, n, d]: mixes tokens

    torch.manual_seed(0)
    return Mixer().eval(), (torch.randn(1, 6, 16),)


def test_a_weight_over_the_token_axis_is_refused_with_its_reason(tmp_path):
    from graphprune.models.export import export

    path = export(*token_mixer(), tmp_path / "mixer.onnx", True, static=True)
    flow = find_token_flow(load(path))
    assert flow.blocks == 2 and len(flow.sites) == 1
    assert "contracts over the token axis" in flow.sites[0].reason
    with pytest.raises(GraphpruneError, match="no block can reduce its tokens: block 1: .*token axis"):
        insert_token_reduction(load(path), TokenSchedule(0.5))
    with pytest.raises(GraphpruneError, match="--token-blocks 1: tokens cannot be reduced there"):
        insert_token_reduction(load(path), TokenSchedule(0.5, (1,)))


def test_models_without_attention_and_bad_schedules_are_refused(tmp_path):
    from graphprune.models.demo import DEMO_MODEL

    with pytest.raises(GraphpruneError, match="no attention block found"):
        insert_token_reduction(load(DEMO_MODEL), TokenSchedule(0.5))
    for schedule, message in [(TokenSchedule(0.0), "in \\(0, 1\\]"), (TokenSchedule(0.5, score="x"), "choose one"),
                              (TokenSchedule(0.5, restore="x"), "choose one")]:
        with pytest.raises(GraphpruneError, match=message):
            schedule.check()


def test_onnx_fused_attention_is_refused_naming_it():
    """The opset-23 `Attention` op keeps its probabilities inside, as ORT's fused ops do: named, with what to do."""
    from tests.ops.test_contrib import X, split_heads

    b = GraphBuilder()
    heads = [split_heads(b, b.op("MatMul", ["x", b.weight(16, 32)]), 4) for _ in range(3)]
    att = b.op("Reshape", [b.op("Transpose", [b.op("Attention", heads)], perm=[0, 2, 1, 3]),
                           b.const(np.array([0, 0, 32]))])
    model = b.build(X, {b.op("Add", ["x", b.op("MatMul", [att, b.weight(32, 16)])]): ["batch", "seq", 16]},
                    opset=23)
    model.ir_version = 10
    with pytest.raises(GraphpruneError, match="ONNX's fused Attention op \\(opset 23\\).*an opset below 23"):
        insert_token_reduction(load(model), TokenSchedule(0.5))


def stack_without_positions():
    """Three pre-LN blocks on the input tokens themselves, per-token output: two equal input tokens stay equal."""
    import torch
    from torch import nn

    from graphprune.models.transformers import ViTBlock

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(ViTBlock(16, 2, 32) for _ in range(3))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    torch.manual_seed(0)
    return Stack().eval(), (torch.randn(2, 8, 16),)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_merging_two_identical_tokens_with_proportional_attention_is_exact(tmp_path, dynamo):
    """Tokens 5 and 6 are equal: a merge of one pair (8 → 7 tokens) joins exactly them, and with log(size) on
    the later attention logits every output — theirs restored from the merged token — is what it was. Merging
    when no two tokens are equal moves the output."""
    from graphprune.models.export import export
    from graphprune.verify.polynomial import size_of

    seq = {0: "batch", 1: "seq"}
    path = export(*stack_without_positions(), tmp_path / f"s{dynamo}.onnx", dynamo, opset=18, dynamic=[seq],
                  output_dynamic=seq)
    x = RNG.standard_normal((3, 8, 16)).astype(np.float32)
    x[:, 6] = x[:, 5]
    single, report = reduced(path, TokenSchedule(0.9, (1,), method="merge"), tmp_path, "single.onnx")
    assert size_of(report.sites[0]["kept"], {"seq": 8}) == 7
    np.testing.assert_allclose(run(single, {"x": x}), run(path, {"x": x}), atol=1e-5)
    distinct = RNG.standard_normal((3, 8, 16)).astype(np.float32)
    assert np.abs(run(single, {"x": distinct}) - run(path, {"x": distinct})).max() > 1e-3
    twice, report = reduced(path, TokenSchedule(0.6, (1, 2), method="merge"), tmp_path, "twice.onnx")
    assert [size_of(site["kept"], {"seq": 8}) for site in report.sites] == [5, 3]
    assert run(twice, {"x": x}).shape == (3, 8, 16)


def test_old_opsets_take_the_attribute_forms_and_merging_needs_opset_16(tmp_path):
    """Opset 13/14 exports: ReduceMean/ReduceMax take axes as attributes, no CastLike; keep 1 stays exact.
    Merging scatters with a reduction (opset 16): refused on an opset-14 model, naming both."""
    from graphprune.models.reference import ExportForm, export_form

    bert = export_form("bert", ExportForm(False, "batch+seq", 14), tmp_path)
    vit = export_form("vit", ExportForm(False, "static", 13), tmp_path)
    for path, feeds in [(bert, bert_feeds(2, 9, [6])),
                        (vit, {"x": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)})]:
        same, _ = reduced(path, TokenSchedule(1.0), tmp_path, f"same-{path.name}")
        np.testing.assert_allclose(run(same, feeds), run(path, feeds), atol=1e-5)
        half, _ = reduced(path, TokenSchedule(0.5), tmp_path, f"half-{path.name}")
        assert np.abs(run(half, feeds) - run(path, feeds)).max() > 1e-3
    with pytest.raises(GraphpruneError, match="merge needs opset 16 or newer \\(the model has 14"):
        insert_token_reduction(load(bert), TokenSchedule(0.6, method="merge"))
