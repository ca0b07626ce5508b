"""Benchmark expert pruning on the reference MoE decoder (2 MoE layers, 8 experts, top-2) in each form: params
and ONNX Runtime latency of pruned vs dense at each expert ratio, and how far each expert criterion moves the
output (relative L2 error vs dense, no fine-tuning); then the same decoder *trained* on sklearn's digits (rows
of pixels as tokens), where experts specialise: held-out accuracy per expert criterion — one run, this machine.

    python benchmarks/bench_moe.py [--ratios 0.25 0.5] [--tokens 256] [--exporter legacy|dynamo]
Needs graphprune[train]. Calibration (router-frequency, expert-output, merge weights): random tokens of
another seed than the evaluation tokens; for digits, 120 training images.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from graphprune.analysis.coupling import analyze
from graphprune.cli.table import render
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.io.save import save_model
from graphprune.models import moe
from graphprune.models.digits import load_split
from graphprune.models.export import export
from graphprune.passes import apply_plan
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.calibration.statistics import calibrate
from graphprune.passes.pipeline.prune import make_plan
from graphprune.passes.rewrite.compensation import apply_weight_updates
from graphprune.passes.rewrite.expert_merge import merge_updates
from graphprune.verify.cost import cost
from graphprune.verify.drift import max_relative_error

# (expert criterion, fold removed experts into survivors)
CRITERIA = (("router-similarity", False), ("router-similarity", True), ("router-frequency", False),
            ("router-frequency", True), ("expert-output", False), ("l2", False), ("random", False))
SIZES = {"d_in": 64, "d": 256, "f": 512, "experts": 8, "top_k": 2}


def tokens(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((count // 64, 64, SIZES["d_in"])).astype(np.float32)}


def bench_form(form: str, folder: Path, args: argparse.Namespace) -> list[list]:
    tokens_axes = {0: "batch", 1: "seq"}
    dense_path = export(*moe.build(form, **SIZES), folder / f"{form}.onnx", args.exporter == "dynamo",
                        dynamic=[tokens_axes], output_dynamic=tokens_axes)
    feeds, calib = tokens(args.tokens, 0), [tokens(args.tokens, 1)]
    dense_sess = runtime.session(dense_path, timing=True)
    dense_out, dense_ms = runtime.run(dense_sess, feeds), runtime.latency_ms(dense_sess, feeds, runs=args.runs)
    before = cost(load_model(dense_path))
    rows = []
    for ratio in args.ratios:
        for criterion, merge in CRITERIA:
            analysis = analyze(load_model(dense_path))
            stats = calibrate(analysis, calib)
            try:
                plan = make_plan(analysis, "l2", calibration=stats, expert_criterion=criterion,
                                 allocation=Allocation(ratio=0.0, expert_ratio=ratio))
            except GraphpruneError as exc:  # expert-output where experts are combined inside one op
                rows.append([form, ratio, criterion, "", "", f"n/a: {str(exc).split('(')[0].strip()}"])
                continue
            if merge:
                apply_weight_updates(merge_updates(analysis, plan, stats))
                criterion += " + merge"
            pruned_path = folder / f"{form}_{ratio}_{criterion}.onnx"
            save_model(apply_plan(analysis, plan), pruned_path)
            sess = runtime.session(pruned_path, timing=True)
            error = max_relative_error(dense_out, runtime.run(sess, feeds))
            latency = f"{runtime.latency_ms(sess, feeds, runs=args.runs) / dense_ms:.3f}" if criterion == "l2" else ""
            after = cost(load_model(pruned_path))
            rows.append([form, ratio, criterion, f"{after.params / before.params:.3f}", latency, f"{error:.4f}"])
    rows.append([form, 0.0, "dense", f"{before.params / 1e6:.2f} M params", f"{dense_ms:.2f} ms", ""])
    return rows


class DigitsMoE(torch.nn.Module):
    """The dense-form MoE decoder over the 8 pixel rows of an 8x8 digit (each with a one-hot row position),
    logits averaged over rows."""

    def __init__(self):
        super().__init__()
        self.decoder = moe.MoEDecoder("dense", d_in=16, d=32, f=64, experts=8, top_k=2, layers=2, d_out=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([x, torch.eye(8).expand(x.shape[0], 8, 8)], dim=-1)
        return self.decoder(rows).mean(dim=1)


def trained_digits(folder: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """(model path, calibration images, test images, test labels) of a seeded, single-threaded training run."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = load_split()
    x_train, x_test = x_train[:, 0], x_test[:, 0]
    net = DigitsMoE()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    order = np.random.default_rng(0)
    for _ in range(40):
        for batch in np.array_split(order.permutation(len(x_train)), len(x_train) // 64):
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x_train[batch])),
                                                     torch.from_numpy(y_train[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = export(net.eval(), torch.from_numpy(x_test[:4]), folder / "digits_moe.onnx", dynamo=True)
    return path, x_train[:120], x_test, y_test


def bench_trained(folder: Path, args: argparse.Namespace) -> list[list]:
    path, calib, x_test, y_test = trained_digits(folder)

    def accuracy(model_path: Path) -> float:
        return float((runtime.run(runtime.session(model_path), {"x": x_test})[0].argmax(1) == y_test).mean())

    rows = [["digits", 0.0, "dense", "1.000", f"{accuracy(path):.3f}"]]
    for ratio in args.ratios:
        for criterion, merge in CRITERIA:
            analysis = analyze(load_model(path))
            stats = calibrate(analysis, [{"x": calib}])
            plan = make_plan(analysis, "l2", calibration=stats, expert_criterion=criterion,
                             allocation=Allocation(ratio=0.0, expert_ratio=ratio))
            if merge:
                apply_weight_updates(merge_updates(analysis, plan, stats))
            pruned = folder / "digits_pruned.onnx"
            before = cost(load_model(path))
            save_model(apply_plan(analysis, plan), pruned)
            name = criterion + (" + merge" if merge else "")
            rows.append(["digits", ratio, name, f"{cost(load_model(pruned)).params / before.params:.3f}",
                         f"{accuracy(pruned):.3f}"])
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
        trained = bench_trained(Path(tmp), args)
    print(render(["form", "expert ratio", "criterion", "params", "latency pruned/dense", "rel. output error"],
                 rows))
    print("\ntrained on digits (8 row tokens per image), accuracy on 360 held-out images, no fine-tuning:")
    print(render(["model", "expert ratio", "criterion", "params", "accuracy"], trained))


if __name__ == "__main__":
    main()
