"""Benchmark the reference CNNs: compile time (load + analyze + score + rewrite) and ONNX Runtime latency of
dense vs pruned, next to the MACs and params ratios — all measured in one run on this machine.

    python benchmarks/bench_cnns.py [--ratio 0.5] [--round-to 8] [--batch 8] [--exporter legacy|dynamo]
Needs graphprune[torch].
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from graphprune.analysis.coupling import analyze
from graphprune.cli.table import render
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.io.save import save_model
from graphprune.models.cnn import BUILDERS, build
from graphprune.models.export import export
from graphprune.passes import apply_plan, make_plan
from graphprune.verify.cost import cost


def bench_one(name: str, folder: Path, args: argparse.Namespace) -> list:
    dense_path = export(*build(name), folder / f"{name}.onnx", dynamo=args.exporter == "dynamo")
    start = time.perf_counter()
    model = load_model(dense_path)
    loaded = time.perf_counter()
    analysis = analyze(model)
    analyzed = time.perf_counter()
    before = cost(model)
    plan = make_plan(analysis, "l2", args.ratio, args.round_to)
    pruned = apply_plan(analysis, plan)
    compiled = time.perf_counter()
    pruned_path = folder / f"{name}_pruned.onnx"
    save_model(pruned, pruned_path)
    after = cost(pruned)
    dense_sess, pruned_sess = (runtime.session(p, timing=True) for p in (dense_path, pruned_path))
    batch = 1 if name == "resnet50" else args.batch
    feeds = runtime.random_feeds(dense_sess, batch=batch)
    runs = 10 if name == "resnet50" else args.runs
    dense_ms = runtime.latency_ms(dense_sess, feeds, runs=runs)
    pruned_ms = runtime.latency_ms(pruned_sess, feeds, runs=runs)
    return [name, len(model.graph), f"{(loaded - start) * 1e3:.0f}", f"{(analyzed - loaded) * 1e3:.0f}",
            f"{(compiled - analyzed) * 1e3:.0f}", f"{after.params / before.params:.3f}",
            f"{after.macs / before.macs:.3f}", f"{dense_ms:.3f}", f"{pruned_ms:.3f}", f"{pruned_ms / dense_ms:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    parser.add_argument("models", nargs="*", default=list(BUILDERS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_one(name, Path(tmp), args) for name in args.models]
    print(f"ratio {args.ratio}, round-to {args.round_to}, l2, {args.exporter} exporter, batch {args.batch} "
          f"(resnet50: batch 1, 224x224), ORT CPU median latency")
    print(render(["model", "nodes", "load ms", "analyze ms", "score+rewrite ms", "params", "MACs",
                  "dense ms", "pruned ms", "latency"], rows))


if __name__ == "__main__":
    main()
