"""Token reduction through torch's own nn.MultiheadAttention (inside nn.TransformerEncoder): its output projection
runs on rows of tokens × batch (a Reshape merges the two, a Gemm or MatMul projects, a Reshape splits them
back). The kept tokens must compute exactly what torch computes on those tokens alone, in every export form."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.passes.rewrite.tokens import TokenSchedule
from tests.passes.rewrite.test_tokens import reduced

torch = pytest.importorskip("torch")
FORMS = [(d, axes, 18) for d in (False, True) for axes in ("static", "static-2", "batch")] + \
    [(True, "batch+seq", 18), (False, "batch", 14), (False, "static", 17)]  # opset 14: the legacy exporter's oldest


def _export(tmp_path, dynamo: bool, axes: str, opset: int = 18):
    from graphprune.models.export import export
    from models.transformers import TorchEncoder

    torch.manual_seed(0)
    module = TorchEncoder(batch_first=True).eval()
    example = torch.randn(1 if axes == "static" else 2, 6, 32)  # static-2: batch 2 baked in (rows 12 = 6 × 2)
    dynamic = [{0: "batch", 1: "seq"}] if axes == "batch+seq" else [{0: "batch"}]
    path = export(module, example, tmp_path / f"encoder-{dynamo}-{axes}-{opset}.onnx", dynamo, opset, ["x"], dynamic,
                  dynamic[0], static=axes.startswith("static"))
    return module, path


@pytest.mark.parametrize(("dynamo", "axes", "opset"), FORMS,
                         ids=[f"{'dynamo' if d else 'legacy'}-{a}-opset{o}" for d, a, o in FORMS])
def test_kept_tokens_compute_what_torch_computes_on_them(tmp_path, dynamo, axes, opset):
    """keep 1 changes nothing; keep 0.5 before block 1 with dropped tokens restored as they entered it: the rows
    equal to the head of layer 0's output are the dropped ones (half of them), and the others equal torch's layer
    1 run on the kept tokens alone — the merged rows were reduced and split back in the right order."""
    module, path = _export(tmp_path, dynamo, axes, opset)
    same, _ = reduced(path, TokenSchedule(1.0), tmp_path, "same.onnx")
    half, report = reduced(path, TokenSchedule(0.5, (1,), restore="dropped"), tmp_path, "half.onnx")
    assert [site["block"] for site in report.sites] == [1]
    batch = {"static": 1, "static-2": 2}.get(axes, 3)
    x = np.random.default_rng(1).standard_normal((batch, 6, 32)).astype(np.float32)
    dense = runtime.run(runtime.session(str(path)), {"x": x})[0]
    np.testing.assert_allclose(runtime.run(runtime.session(str(same)), {"x": x})[0], dense, atol=1e-5)
    pruned = runtime.run(runtime.session(str(half)), {"x": x})[0]
    with torch.no_grad():
        first = module.encoder.layers[0](torch.from_numpy(x))
        entering = module.head(first).numpy()
        for row in range(batch):
            dropped = np.all(np.isclose(pruned[row], entering[row], atol=1e-4), axis=-1)
            kept = np.flatnonzero(~dropped)
            assert len(kept) == 3, (row, dropped)
            alone = module.head(module.encoder.layers[1](first[row:row + 1, kept])).numpy()[0]
            np.testing.assert_allclose(pruned[row, kept], alone, atol=1e-4)
            assert np.abs(pruned[row, kept] - dense[row, kept]).max() > 1e-3  # dropping tokens moved the kept ones


def test_a_legacy_export_with_a_baked_sequence_length_is_refused(tmp_path):
    """torch's legacy exporter writes nn.MultiheadAttention's head split with the example's length (6) although
    the input's axis is dynamic (the file fails at any other length): refused with the reason, not reduced."""
    _, path = _export(tmp_path, False, "batch+seq")
    with pytest.raises(GraphpruneError, match=r"not \[batch, tokens, hidden\] with tokens the attention's keys \(6\)"):
        reduced(path, TokenSchedule(0.5), tmp_path)
