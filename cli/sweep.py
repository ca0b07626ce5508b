"""`graphprune prune --sweep METRIC=T1,T2,…`: the model pruned at each target into a folder, with an HTML
report of quality against latency and parameters (see cli/html_report.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from graphprune.cli.html_report import render
from graphprune.cli.table import render as render_table
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.passes.pipeline.request import PruneRequest
from graphprune.passes.pipeline.sweep import RUNS, sweep_file


def run_sweep(args: argparse.Namespace, request: PruneRequest, method: str) -> int:
    """Sweep `args.sweep` into the folder `args.output`; print the points and where the report is."""
    metric, targets = args.sweep
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise GraphpruneError(f"--sweep writes a folder of models and a report: {folder} is a file")
    dims = dict(args.dim) or None
    feeds = runtime.load_feeds(args.feeds) if args.feeds else None
    points = sweep_file(args.model, folder, request, metric, targets, dims, feeds)
    settings = {"model": str(args.model), "method": method, "swept": f"{metric} {', '.join(f'{t:g}' for t in targets)}",
                "provider": runtime.provider_name(), "threads": str(args.threads or "ONNX Runtime's default"),
                "sizes": ", ".join(f"{k}={v}" for k, v in (dims or {}).items()) or "symbolic axes at 1",
                "timing": f"{RUNS} runs of each model, interleaved in {runtime.ROUNDS} rounds, per point",
                "output error": f"relative squared error against the dense model on {points[0].inputs}"}
    report = folder / "report.html"
    staged = folder / ".report.html.partial"
    staged.write_text(render(points, f"graphprune sweep: {Path(args.model).name}", settings))
    os.replace(staged, report)
    rows = [[f"{p.target:g}", f"{p.latency[0]:.3f}x", f"{p.result.after.params / p.result.before.params:.3f}x",
             f"{p.error:.4g}", p.path.name] for p in points]
    print(render_table(["target", "latency", "params", "output error", "file"], rows))
    print(f"\nreport: {report}")
    return 0
