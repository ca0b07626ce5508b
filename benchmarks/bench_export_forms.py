"""Export-form invariance, the full matrix: every reference model exported by both torch exporters, static at
batch 1, dynamic batch and dynamic batch + sequence, old and new opsets, after a constant-folding simplifier and
after ONNX Runtime's basic offline optimisation; for each form the prunable structure found (groups by kind and
size), whether it matches the reference form (legacy, dynamic batch + sequence, opset 17), the fraction of
weights prunable and the params ratio after pruning (CNNs --ratio 0.5; others --ratio 0 --head-ratio 0.5
--neuron-ratio 0.5).

    python benchmarks/bench_export_forms.py [--models resnet bert ...] [--json FILE]
Needs graphprune[torch]. The suite runs a reduced matrix (tests/models/test_export_forms.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from graphprune.analysis.coupling import analyze
from graphprune.cli.table import render
from graphprune.errors import GraphpruneError
from graphprune.io.load import load_model
from graphprune.models import cnn
from graphprune.models.reference import ExportForm, export_form
from graphprune.passes.pipeline.prune import prune_file

MODELS = ["resnet", "mobilenet_v2", "bert", "vit", "llama", "torch_encoder", "torch_cross_attention", "moe_dense",
          "moe_stacked", "moe_sliced"]
REFERENCE = ExportForm(False, "batch+seq", 17)
FORMS = [ExportForm(dynamo, axes, opset) for dynamo, opsets in ((False, (13, 17)), (True, (18, 20)))
         for axes in ("static", "batch", "batch+seq") for opset in opsets] + [
    ExportForm(False, "batch+seq", 17, "simplified"), ExportForm(False, "batch+seq", 17, "ort-basic"),
    ExportForm(True, "batch+seq", 18, "simplified"), ExportForm(True, "batch+seq", 18, "ort-basic")]


def structure(path: Path) -> tuple[Counter, float]:
    """Prunable groups counted by (kind, size), and the fraction of grouped weights they hold."""
    analysis = analyze(load_model(path))
    total = sum(g.params for g in analysis.groups) or 1
    return Counter((g.kind, g.size) for g in analysis.prunable()), sum(g.params for g in analysis.prunable()) / total


def params_ratio(name: str, path: Path, folder: Path) -> str:
    cut = {"ratio": 0.5} if name in cnn.BUILDERS else {"ratio": 0.0, "kind_ratios": {"head": 0.5, "neuron": 0.5}}
    try:
        result = prune_file(path, folder / f"{path.stem}_pruned.onnx", **cut)
    except GraphpruneError as exc:
        return f"refused: {str(exc)[:40]}"
    return f"{result.after.params / result.before.params:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            try:
                reference, _ = structure(export_form(name, REFERENCE, folder))
            except Exception as exc:  # noqa: BLE001 - the model's reference form does not export
                rows.append([name, REFERENCE.name, "export fails", "", "", f"{type(exc).__name__}"[:30], ""])
                continue
            for form in FORMS:
                start = time.perf_counter()
                try:
                    path = export_form(name, form, folder)
                except Exception as exc:  # noqa: BLE001 - an exporter failing on a form is a row, not a stop
                    rows.append([name, form.name, "export fails", "", "", f"{type(exc).__name__}"[:30], ""])
                    continue
                found, share = structure(path)
                same = "same" if found == reference else "DIFFERS"
                text = ", ".join(f"{n}×{k} {s}" for (k, s), n in sorted(found.items()))
                rows.append([name, form.name, same, f"{share:.3f}", params_ratio(name, path, folder), text[:60],
                             f"{time.perf_counter() - start:.1f}"])
                records.append({"model": name, "form": form.name, "same": found == reference, "prunable": share,
                                "groups": {f"{k} {s}": n for (k, s), n in found.items()},
                                "reference": {f"{k} {s}": n for (k, s), n in reference.items()}})
    print(render(["model", "form", "structure", "prunable", "params", "groups", "s"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
