"""Benchmark pruning of the real all-MiniLM-L6-v2: embedding cosine similarity to the dense model on real
sentences, params, MACs and ONNX Runtime latency ratios, per criterion and head/neuron ratios, one run.

    python benchmarks/bench_minilm.py [--exporter legacy|dynamo] [--batch 32]
Needs graphprune[hf].
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from graphprune.cli.table import render
from graphprune.io import runtime
from graphprune.models.minilm import SENTENCES, export_minilm, mean_cosine, tokenize
from graphprune.passes import prune_file

SETTINGS = [(0.25, 0.3), (0.25, 0.5), (0.5, 0.5)]


def latency(path: Path, feeds: dict, runs: int) -> float:
    sess = runtime.session(path, timing=True)
    return runtime.latency_ms(sess, {i.name: feeds[i.name] for i in sess.get_inputs()}, warmup=5, runs=runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    parser.add_argument("--criteria", nargs="+", default=["l1", "l2", "random"])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    feeds = tokenize(SENTENCES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense = export_minilm(Path(tmp) / "minilm.onnx", dynamo=args.exporter == "dynamo")
        dense_ms = latency(dense, feeds, args.runs)
        for head_ratio, neuron_ratio in SETTINGS:
            for criterion in args.criteria:
                target = Path(tmp) / f"pruned_{criterion}.onnx"
                start = time.perf_counter()
                result = prune_file(dense, target, criterion=criterion, ratio=0.0,
                                    kind_ratios={"head": head_ratio, "neuron": neuron_ratio})
                seconds = time.perf_counter() - start
                rows.append([f"{head_ratio:.2f}", f"{neuron_ratio:.2f}", criterion,
                             f"{mean_cosine(dense, target):.4f}",
                             f"{result.after.params / result.before.params:.3f}",
                             f"{result.after.macs / result.before.macs:.3f}",
                             f"{latency(target, feeds, args.runs) / dense_ms:.3f}", f"{seconds:.2f}"])
    print(f"all-MiniLM-L6-v2 ({args.exporter} exporter), {len(SENTENCES)} real sentences, "
          f"dense latency {dense_ms:.2f} ms (ORT CPU, batch {len(SENTENCES)}); no fine-tuning")
    print(render(["heads", "neurons", "criterion", "cosine", "params", "MACs", "latency", "prune s"], rows))


if __name__ == "__main__":
    main()
