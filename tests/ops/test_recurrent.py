"""LSTM, GRU and RNN hidden units prune exactly: gate blocks of W, R and B (and LSTM's peepholes) sliced
together, R's columns, the initial states, both directions, both layouts; `hidden_size` rewritten. Zero
initial states built by the legacy exporter are dropped (the default), so both torch exporters give the same
structure."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.io.load import from_proto
from graphprune.passes import apply_plan
from tests.graphs import GraphBuilder
from tests.harness import assert_all_groups_equivalent, frozen_reasons, load, random_subset_plan

SEQ_FIRST = {"x": ["seq", "batch", 6]}
BATCH_FIRST = {"x": ["batch", "seq", 6]}


def recurrent(op: str, directions: int = 2, layout: int = 0, states: bool = True, peepholes: bool = False,
              **attrs) -> onnx.ModelProto:
    gates, hidden = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 5
    b = GraphBuilder()
    x = b.op("Relu", [b.op("MatMul", ["x", b.weight(6, 8)])])
    inputs = [x, b.weight(directions, gates * hidden, 8), b.weight(directions, gates * hidden, hidden),
              b.weight(directions, 2 * gates * hidden), ""]
    if states:
        shape = (directions, 3, hidden) if layout == 0 else (3, directions, hidden)  # batch 3
        inputs += [b.weight(*shape)] + ([b.weight(*shape)] if op == "LSTM" else [])
    if peepholes:
        inputs += [""] * (7 - len(inputs)) + [b.weight(directions, 3 * hidden)]
    direction = "bidirectional" if directions == 2 else "forward"
    y, y_h = b.op(op, inputs, outputs=2, hidden_size=hidden, direction=direction, layout=layout, **attrs)
    merged = b.op("Transpose", [y], perm=[0, 2, 1, 3]) if layout == 0 else y
    features = b.op("Reshape", [merged, b.const(np.array([0, 0, directions * hidden]))])
    out = b.op("MatMul", [features, b.weight(directions * hidden, 4)])
    last = b.op("ReduceMean", [y_h, b.const(np.array([0]))], keepdims=0)
    return b.build(SEQ_FIRST if layout == 0 else BATCH_FIRST, [out, b.op("MatMul", [last, b.weight(hidden, 3)])],
                   opset=18)


@pytest.mark.parametrize("op, attrs", [("LSTM", {}), ("GRU", {"linear_before_reset": 0}),
                                       ("GRU", {"linear_before_reset": 1}), ("RNN", {})],
                         ids=["lstm", "gru", "gru-linear-before-reset", "rnn"])
def test_hidden_units_prune_exactly(op, attrs):
    model = recurrent(op, **attrs)
    hidden = [g for g in analyze(load(model)).prunable() if g.size == 5]
    assert len(hidden) == 1 and hidden[0].kind == "neuron"
    assert_all_groups_equivalent(model, least=2, dims={"seq": 4, "batch": 3})


def test_lstm_peepholes_one_direction_no_states():
    model = recurrent("LSTM", directions=1, states=False, peepholes=True)
    assert_all_groups_equivalent(model, least=2, dims={"seq": 4, "batch": 3})


def test_hidden_size_is_rewritten():
    model = recurrent("LSTM")
    analysis = analyze(load(model))
    group = next(g for g in analysis.prunable() if g.size == 5)
    pruned = apply_plan(analysis, random_subset_plan(group.id)(analysis))
    (lstm,) = [n for n in pruned.graph if n.op_type == "LSTM"]
    kept = lstm.inputs[2].const_value.shape[2]
    assert lstm.attributes["hidden_size"].as_int() == kept < 5
    assert lstm.inputs[1].const_value.shape[1] == 4 * kept and lstm.inputs[3].const_value.shape[1] == 8 * kept


def test_input_forget_and_batch_first_layout_freeze():
    assert any("input_forget" in r for r in frozen_reasons(recurrent("LSTM", input_forget=1)))
    assert any("layout 1" in r for r in frozen_reasons(recurrent("GRU", layout=1)))


def tagger(kind: str, path, dynamo: bool = False, features: int = 8, hidden: int = 12):
    """A torch tagger around a 2-layer bidirectional `kind` (`features` in, `hidden` units), exported."""
    torch = pytest.importorskip("torch")

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(6, features)
            self.rnn = getattr(torch.nn, kind)(features, hidden, num_layers=2, batch_first=True, bidirectional=True)
            self.out = torch.nn.Linear(2 * hidden, 5)

        def forward(self, x):
            return self.out(self.rnn(torch.relu(self.embed(x)))[0])

    torch.manual_seed(0)
    torch.onnx.export(Tagger().eval(), (torch.randn(2, 7, 6),), str(path), dynamo=dynamo, input_names=["x"],
                      dynamic_axes=None if dynamo else {"x": {0: "batch", 1: "seq"}})
    return path


@pytest.mark.parametrize(("features", "hidden"), [(8, 12), (16, 64)], ids=["small", "wide"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_exports_agree_and_prune_exactly(tmp_path, kind, features, hidden):
    """The dynamo exporter folds the gate-block reorder of small weights itself and writes it as Slices and a
    Concat of the weight for larger ones (EasyOCR's CRNN): folded at load, both exports give one structure."""
    structures = {}
    for dynamo in (False, True):
        model = onnx.load(str(tagger(kind, tmp_path / f"{kind}_{dynamo}.onnx", dynamo, features, hidden)))
        analysis = analyze(from_proto(model))
        structures[dynamo] = sorted((g.kind, g.size) for g in analysis.prunable())
        assert_all_groups_equivalent(model, least=3, dims={"batch": 2, "seq": 7})
    assert structures[False] == structures[True] == [("channel", features), ("neuron", hidden), ("neuron", hidden)]


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-direction", "per-gate-row"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy-dynamic-axes", "dynamo-static"])
def test_ort_dynamically_quantized_lstm_prunes_exactly(tmp_path, per_channel, dynamo):
    """ONNX Runtime's `quantize_dynamic` turns each LSTM into a DynamicQuantizeLSTM (W and R transposed, int8,
    scales per direction or per gate row) and the Linears into integer MatMuls: the same units as the float
    model, each masked-equivalent. The op quantizes its hidden state per step over all units, so the masked
    reference silences removed units (their cell-gate rows and initial states zeroed) — without that, the
    removed units' activity moves the shared range and the check fails (measured 1e-3 relative)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_path, path = tagger("LSTM", tmp_path / "lstm.onnx", dynamo), tmp_path / "lstm_q.onnx"
    quantize_dynamic(float_path, path, weight_type=QuantType.QInt8, per_channel=per_channel)
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node].count("DynamicQuantizeLSTM") == 2
    structure = sorted((g.kind, g.size) for g in analyze(from_proto(model)).prunable())
    assert structure == sorted((g.kind, g.size) for g in analyze(load(float_path)).prunable())
    assert_all_groups_equivalent(model, least=3, dims={"batch": 2, "seq": 7})
    analysis = analyze(from_proto(model))
    group = next(g for g in analysis.prunable() if g.kind == "neuron")
    pruned = apply_plan(analysis, random_subset_plan(group.id)(analysis))
    lstm = next(n for n in pruned.graph if n.op_type == "DynamicQuantizeLSTM" and n.inputs[2].const_value.shape[1] < 12)
    kept = lstm.attributes["hidden_size"].as_int()
    assert lstm.inputs[2].const_value.shape[1:] == (kept, 4 * kept) and lstm.inputs[3].const_value.shape[1] == 8 * kept
