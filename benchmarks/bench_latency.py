"""Benchmark latency targets: for reference CNNs and the real MiniLM, prune to R × the dense ONNX Runtime
latency (CPU, batch 1, --threads) with fast widths (graphprune's default) and without (MACs-driven widths),
and report, in one run: the latency each reached (re-timed on the written file, A/B interleaved), the MACs
ratio, and quality at that latency (CNNs: cosine of the logits to the dense model's on random images; MiniLM:
mean embedding cosine on held-out sentences).

    python benchmarks/bench_latency.py [--targets 0.7 0.5] [--models resnet50 mobilenet_v2 mobilenet_v3] [--minilm]
Needs graphprune[torch].
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from graphprune.cli.table import render
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.models.reference import export_reference
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.pipeline.prune import prune_file
from graphprune.passes.pipeline.request import Output


def _timed_ratio(dense: Path, pruned: Path, dims: dict | None, threads: int) -> float:
    sessions = [runtime.session(str(p), threads=threads, timing=True) for p in (dense, pruned)]
    feeds = runtime.random_feeds(sessions[0], dims=dims)
    times = runtime.interleaved_ms(sessions, [feeds, feeds], runs=100)
    return statistics.median(times[1]) / statistics.median(times[0])


def _logit_cosine(dense: Path, pruned: Path) -> float:
    sessions = [runtime.session(str(p)) for p in (dense, pruned)]
    feeds = runtime.random_feeds(sessions[0], batch=8, seed=1)
    a, b = (runtime.run(s, feeds)[0].reshape(8, -1) for s in sessions)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _row(name: str, dense: Path, folder: Path, target: float, fast: bool, dims: dict | None, threads: int,
         quality, cut: dict) -> list:
    pruned = folder / f"{name}_{target}_{'fast' if fast else 'macs'}.onnx"
    allocation = Allocation("adaptive", target=("latency", target), fast_widths=fast, threads=threads,
                            kind_ratios=cut.get("kind_ratios"))
    try:
        result = prune_file(dense, Output(pruned, dims=dims), allocation=allocation, **cut)
    except GraphpruneError as exc:
        return [name, target, "fast" if fast else "MACs-driven", "-", "-", "-", str(exc)[:60]]
    return [name, target, "fast" if fast else "MACs-driven", f"{result.plan.meta['latency']['measured']:.3f}",
            f"{_timed_ratio(dense, pruned, dims, threads):.3f}", f"{result.after.macs / result.before.macs:.3f}",
            f"{quality(dense, pruned):.4f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "mobilenet_v3"])
    parser.add_argument("--minilm", action="store_true", help="also the real MiniLM at sequence length 128")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            dense = export_reference(name, False, folder)
            rows += [_row(name, dense, folder, target, fast, None, args.threads, _logit_cosine, {"ratio": 0.5})
                     for target in args.targets for fast in (True, False)]
        if args.minilm:
            from graphprune.models.minilm import SENTENCES, export_minilm, mean_cosine

            dense = export_minilm(folder / "minilm.onnx", dynamo=False)
            held_out = SENTENCES[len(SENTENCES) // 2:]
            rows += [_row("minilm", dense, folder, target, fast, {"seq": 128}, args.threads,
                          lambda d, p: mean_cosine(d, p, held_out), {"ratio": 0.0})
                     for target in args.targets for fast in (True, False)]
    print(render(["model", "target", "widths", "latency (search)", "latency (re-timed)", "MACs", "quality"], rows))


if __name__ == "__main__":
    main()
