"""The same pruning job on each ONNX Runtime provider (LLaMA-GQA exports as in bench_llama_scale.py, 25 % heads +
30 % FFN, data-free calibration): per provider, one fresh process reports wall and CPU time and peak memory,
the plans are compared (fraction of removed units the providers agree on), and dense vs pruned latency is timed
on that provider (A/B interleaved, --batch × --seq tokens; on a GPU inputs and outputs stay there, IO binding).

    python benchmarks/bench_provider.py [--sizes 50m,250m] [--criteria flap,obs] [--providers cpu,cuda]
        [--batch 1] [--seq 512] [--folder DIR]
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
from bench_llama_scale import RATIO, parser_for, sources

from graphprune.cli.table import render
from graphprune.io import runtime
from graphprune.models.measure import measured_cost

HEADERS = ["size", "criterion", "provider", "wall s", "CPU s", "peak RSS GB", "plan agrees", "dense ms",
           "pruned ms", "latency ratio"]


def agreement(removed: dict[str, list[int]], reference: dict[str, list[int]]) -> float:
    """Fraction of the reference plan's removed units that `removed` removes too."""
    total = sum(len(units) for units in reference.values())
    shared = sum(len(set(units) & set(removed.get(group, []))) for group, units in reference.items())
    return shared / total if total else 1.0


def latency(dense: Path, pruned: Path, provider: str, batch: int, seq: int, runs: int) -> tuple[float, float]:
    """Median ms of the dense and the pruned model on `provider`, runs interleaved A/B in one process."""
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 32000, (batch, seq), dtype=np.int64)}
    with runtime.using(provider):
        sessions = [runtime.session(dense), runtime.session(pruned)]
        times = runtime.interleaved_ms(sessions, [feeds, feeds], warmup=5, runs=runs)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = parser_for(__doc__, "flap,obs")
    parser.add_argument("--providers", default="cpu,cuda")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, source in sources(args.sizes, Path(args.folder or tmp)):
            for criterion in args.criteria.split(","):
                reference = None
                for provider in args.providers.split(","):
                    target = Path(tmp) / f"{size}_{criterion}_{provider}" / "pruned.onnx"
                    cost = measured_cost(source, target, criterion, RATIO, provider)
                    reference = reference or cost["removed"]
                    dense_ms, pruned_ms = latency(source, target, provider, args.batch, args.seq, args.runs)
                    rows.append([size, criterion, provider, cost["wall_s"], cost["cpu_s"],
                                 f"{cost['peak_rss_bytes'] / 1e9:.2f}", f"{agreement(cost['removed'], reference):.3f}",
                                 f"{dense_ms:.2f}", f"{pruned_ms:.2f}", f"{pruned_ms / dense_ms:.3f}"])
                    print(rows[-1], flush=True)
    print(render(HEADERS, rows))


if __name__ == "__main__":
    main()
