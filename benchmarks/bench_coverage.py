"""Benchmark coverage of exporters' idioms: for models written the ways real code writes them, the fraction of
weights in prunable groups and the params/MACs ratios after pruning (CNNs: --ratio 0.5; transformers and MoE:
--ratio 0 with --head-ratio 0.5 and --neuron-ratio 0.5; MoE also --expert-ratio 0.5).

    python benchmarks/bench_coverage.py [--keras FILE.onnx ...] [--tflite FILE.onnx ...]
Needs graphprune[torch]; Keras models are exported, and TFLite models (the mediapipe wheel's detectors and
landmark models: tests/data/make_mediapipe.py) converted, beforehand in a TensorFlow environment.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from graphprune.analysis.coupling import analyze
from graphprune.cli.table import render
from graphprune.errors import GraphpruneError
from graphprune.io.load import load_model
from graphprune.models.reference import export_reference
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.pipeline.prune import prune_file

MODELS = ["torch_encoder", "torch_encoder_seq_first", "torch_cross_attention", "moe_sliced", "moe_stacked",
          "resnet", "bert"]


def coverage(path: Path, folder: Path, transformer: bool, moe: bool) -> list:
    analysis = analyze(load_model(path))
    total = sum(g.params for g in analysis.groups) or 1
    prunable = sum(g.params for g in analysis.prunable())
    kinds = {"head": 0.5, "neuron": 0.5} if transformer else None
    allocation = Allocation("uniform", 0.0 if transformer else 0.5, kinds, expert_ratio=0.5 if moe else 0.0)
    try:
        result = prune_file(path, folder / f"{path.stem}_pruned.onnx", ratio=allocation.ratio, kind_ratios=kinds,
                            allocation=allocation)
        ratios = [f"{result.after.params / result.before.params:.3f}", f"{result.after.macs / result.before.macs:.3f}"]
    except GraphpruneError as exc:
        ratios = ["-", str(exc)[:50]]
    return [path.stem, f"{prunable / total:.3f}", *ratios]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras", nargs="*", default=[], help="tf2onnx exports of Keras models to include")
    parser.add_argument("--tflite", nargs="*", default=[], help="tf2onnx conversions of TFLite CNNs to include")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in MODELS:
            for dynamo in (False, True):
                path = export_reference(name, dynamo, folder)
                rows.append(coverage(path, folder, name not in ("resnet",), name.startswith("moe")))
        for keras in args.keras:
            rows.append(coverage(Path(keras), folder, True, False))
        for tflite in args.tflite:
            rows.append(coverage(Path(tflite), folder, False, False))
    print(render(["model", "weights in prunable groups", "params after", "MACs after"], rows))


if __name__ == "__main__":
    main()
