"""Export-form invariance as a property: the same module exported by either torch exporter, static at batch 1 or
with dynamic axes, at an old or a new opset, after a constant-folding simplifier or ONNX Runtime's basic offline
optimisation, gives the same prunable structure (groups by kind and size: heads, neurons, channels, experts) —
and every form prunes exactly. A reduced matrix; `benchmarks/bench_export_forms.py` runs the full one."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.io.load import load_model

pytest.importorskip("torch")
from graphprune.models.reference import ExportForm, export_form  # noqa: E402
from tests.harness import assert_group_equivalent, masked_check  # noqa: E402
from tests.models.test_moe import REMOVED, remove_experts  # noqa: E402

REFERENCE = ExportForm(False, "batch+seq", 17)
FORMS = [ExportForm(False, "static", 17), ExportForm(True, "batch+seq", 18), ExportForm(True, "static", 18),
         ExportForm(False, "batch", 13), ExportForm(False, "batch+seq", 17, "ort-basic"),
         ExportForm(False, "batch+seq", 17, "simplified"), ExportForm(True, "batch+seq", 18, "ort-basic")]
UNSUPPORTED = {("torch_encoder", 13)}  # torch's legacy exporter has no scaled_dot_product_attention below 14


def structure(path) -> Counter:
    return Counter((g.kind, g.size) for g in analyze(load_model(path)).prunable())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("forms")


@pytest.mark.parametrize("name", ["resnet", "bert", "torch_encoder"])
@pytest.mark.parametrize("form", FORMS, ids=[f.name for f in FORMS])
def test_every_form_has_the_same_prunable_structure(folder, name, form):
    if (name, form.opset) in UNSUPPORTED:
        pytest.skip("the exporter cannot write this model at this opset")
    reference = folder / f"{name}_{REFERENCE.name}.onnx"
    if not reference.exists():
        export_form(name, REFERENCE, folder)
    path = export_form(name, form, folder)
    found = structure(path)
    assert found == structure(reference) and found, (form.name, found)
    if form.axes == "static" or form.post is not None:  # the forms our builders never wrote: prune them too
        analysis = analyze(load_model(path))
        largest = max(analysis.prunable(), key=lambda g: g.params)
        dims = {"batch": 1} if form.axes == "static" else {"batch": 2, "seq": 6}
        assert_group_equivalent(onnx.load(str(path)), largest, dims=dims)


@pytest.mark.parametrize("name", ["moe_stacked", "moe_sliced"])
@pytest.mark.parametrize("form", [ExportForm(False, "static", 17), ExportForm(True, "static", 18)],
                         ids=["legacy-static", "dynamo-static"])
def test_static_moe_keeps_its_experts(folder, name, form):
    """A static export folds `zeros_like(probs)`, the base the top-k gate is scattered into, to a constant: its
    zeros still mark unrouted experts (once each expert became a one-expert layer, or the combine froze on
    `ReduceSum reduces over this axis`). The experts prune exactly."""
    reference = structure(export_form(name, REFERENCE, folder))
    path = export_form(name, form, folder)
    assert structure(path) == reference and reference[("expert", 8)] == 2
    result = masked_check(path, remove_experts(REMOVED), dims={"batch": 1})
    assert result["error"] <= 1e-5 < 1e-2 < result["masking_effect"], result
    # per removed expert: gate, up, down and a router row; and up to 6 entries (one per token) of the folded zeros
    experts = 2 * len(REMOVED) * (3 * 32 * 48 + 32)
    assert experts <= result["params"][0] - result["params"][1] <= experts + 2 * len(REMOVED) * 6


@pytest.mark.parametrize("form", [ExportForm(False, "batch+seq", 17, "ort-basic"),
                                  ExportForm(False, "batch+seq", 17, "simplified"),
                                  ExportForm(True, "batch+seq", 18, "ort-basic")],
                         ids=["legacy-ort-basic", "legacy-simplified", "dynamo-ort-basic"])
def test_token_reduction_is_the_same_after_a_simplifier_or_ort_optimisation(folder, tmp_path, form):
    """The token axis, the attention that scores the tokens and the restore point are found the same in the graph
    ORT's offline optimisation or a simplifier rewrote: the reduced model computes what the reduced reference
    computes (the same tokens chosen), and dropping half of them moves the output."""
    import numpy as np

    from graphprune.io import runtime
    from graphprune.passes.rewrite.tokens import TokenSchedule
    from tests.passes.rewrite.test_tokens import bert_feeds, reduced

    reference = folder / f"bert_{REFERENCE.name}.onnx"
    if not reference.exists():
        export_form("bert", REFERENCE, folder)
    feeds = bert_feeds(3, 16, [16, 11, 7])
    outputs = {}
    for name, path in (("reference", reference), ("form", export_form("bert", form, folder))):
        half, report = reduced(path, TokenSchedule(0.5), tmp_path, f"{name}.onnx")
        assert [site["block"] for site in report.sites] == [1]
        outputs[name] = runtime.run(runtime.session(str(half)), feeds)[0]
    np.testing.assert_allclose(outputs["form"], outputs["reference"], atol=1e-4)
    dense = runtime.run(runtime.session(str(reference)), feeds)[0]
    assert np.abs(outputs["reference"] - dense).max() > 1e-2


def test_attention_fused_by_ort_is_refused_for_tokens_naming_the_fused_op(folder, tmp_path):
    """ORT's transformer optimizer fuses each attention into one com.microsoft Attention, whose probabilities the
    token scores need and never leave it: refused, naming the op and what to do, before anything is written."""
    from onnxruntime.transformers.optimizer import optimize_model

    from graphprune.errors import GraphpruneError
    from graphprune.passes.rewrite.tokens import TokenSchedule, insert_token_reduction
    from tests.harness import load

    reference = folder / f"bert_{REFERENCE.name}.onnx"
    if not reference.exists():
        export_form("bert", REFERENCE, folder)
    fused = tmp_path / "fused.onnx"
    optimize_model(str(reference), model_type="bert", num_heads=4, hidden_size=32).save_model_to_file(str(fused))
    assert "Attention" in {n.op_type for n in onnx.load(str(fused)).graph.node}
    with pytest.raises(GraphpruneError, match=r"fused \(Attention, ONNX Runtime's transformer optimizer\).*before"):
        insert_token_reduction(load(fused), TokenSchedule(0.5))
