"""Benchmark expert pruning on the reference MoE decoder (2 MoE layers, 8 experts, top-2) in each form: params
and ONNX Runtime latency of pruned vs dense at each expert ratio, and how far each expert criterion moves the
output (relative L2 error vs dense, no fine-tuning) — all measured in one run on this machine.

    python benchmarks/bench_moe.py [--ratios 0.25 0.5] [--tokens 256] [--exporter legacy|dynamo]
Needs graphprune[torch]. Calibration (router-frequency, expert-output): 256 random tokens, other seed than
the evaluation tokens.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from graphprune import runtime, verify
from graphprune.analysis import analyze
from graphprune.cli.table import render
from graphprune.io import load_model, save_model
from graphprune.metrics import cost
from graphprune.models import moe
from graphprune.models.export import export
from graphprune.passes import apply_plan
from graphprune.passes.calibration import calibrate
from graphprune.passes.pipeline import Allocation, make_plan

CRITERIA = ("router-similarity", "router-frequency", "expert-output", "l2", "random")
SIZES = {"d_in": 64, "d": 256, "f": 512, "experts": 8, "top_k": 2}


def tokens(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((count // 64, 64, SIZES["d_in"])).astype(np.float32)}


def bench_form(form: str, folder: Path, args: argparse.Namespace) -> list[list]:
    tokens_axes = {0: "batch", 1: "seq"}
    dense_path = export(*moe.build(form, **SIZES), folder / f"{form}.onnx", args.exporter == "dynamo",
                        dynamic=[tokens_axes], output_dynamic=tokens_axes)
    feeds, calib = tokens(args.tokens, 0), [tokens(args.tokens, 1)]
    dense_sess = runtime.session(dense_path)
    dense_out, dense_ms = runtime.run(dense_sess, feeds), runtime.latency_ms(dense_sess, feeds, runs=args.runs)
    before = cost(load_model(dense_path))
    rows = []
    for ratio in args.ratios:
        for criterion in CRITERIA:
            analysis = analyze(load_model(dense_path))
            stats = calibrate(analysis, calib, progress=False)
            plan = make_plan(analysis, "l2", calibration=stats, expert_criterion=criterion,
                             allocation=Allocation(ratio=0.0, expert_ratio=ratio))
            pruned_path = folder / f"{form}_{ratio}_{criterion}.onnx"
            save_model(apply_plan(analysis, plan), pruned_path)
            sess = runtime.session(pruned_path)
            error = verify.relative_error(dense_out, runtime.run(sess, feeds))
            latency = f"{runtime.latency_ms(sess, feeds, runs=args.runs) / dense_ms:.3f}" if criterion == "l2" else ""
            after = cost(load_model(pruned_path))
            rows.append([form, ratio, criterion, f"{after.params / before.params:.3f}", latency, f"{error:.4f}"])
    rows.append([form, 0.0, "dense", f"{before.params / 1e6:.2f} M params", f"{dense_ms:.2f} ms", ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per run (batches of 64)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], default="dynamo")
    parser.add_argument("forms", nargs="*", default=list(moe.FORMS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for form in args.forms for row in bench_form(form, Path(tmp), args)]
    print(render(["form", "expert ratio", "criterion", "params", "latency pruned/dense", "rel. output error"],
                 rows))


if __name__ == "__main__":
    main()
