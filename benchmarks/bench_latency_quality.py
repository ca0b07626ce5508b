"""Quality at a latency target, side by side: the real all-MiniLM-L6-v2 pruned to each `--target-latency` by the
FLOPs search along obs scores (one-shot obs, uniform allocation: the method a latency target ran before the
one allocator) and by the default method with calibration data (measured error per millisecond of the latency
table, sequential refit, depth). Calibration on one half of the standard-library docstring sentences, quality
(embedding cosine to the dense model) on the other half; latency re-timed interleaved against the dense model
at batch 8 × 64 tokens; wall time of each run.

    python benchmarks/bench_latency_quality.py [--targets 0.8 0.7 0.5] [--samples 64] [--threads 1]
Needs graphprune[hf].
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from graphprune.cli.table import render
from graphprune.io import runtime
from graphprune.models.minilm import corpus_sentences, export_minilm, mean_cosine, model_dir
from graphprune.passes import CalibrationSpec, prune_file
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.pipeline.request import Output, PruneRequest

METHODS = {
    "FLOPs search (obs, uniform)": dict(criterion="obs", allocation="uniform", sequential=False, depth=False),
    "error per ms (default)": dict(criterion="obs", allocation="measured", sequential=True, depth=True),
}


SIZES = {"batch": 8, "seq": 64}  # what the latency probes and the table time at


def retimed(dense: Path, pruned: Path, feeds: dict, threads: int) -> float:
    sessions = [runtime.session(p, threads=threads, timing=True) for p in (dense, pruned)]
    inputs = [{i.name: feeds[i.name] for i in s.get_inputs()} for s in sessions]
    return statistics.median(runtime.round_ratios(*runtime.interleaved_ms(sessions, inputs, runs=40)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.8, 0.7, 0.5])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    calibration, evaluation = corpus_sentences()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense = export_minilm(folder / "minilm.onnx", dynamo=False)
        (folder / "calib.txt").write_text("\n".join(calibration[: args.samples]))
        spec = CalibrationSpec(str(folder / "calib.txt"), samples=args.samples, batch_size=16,
                               tokenizer=str(model_dir() / "tokenizer.json"))
        timing = runtime.random_feeds(runtime.session(dense), dims=SIZES)
        for target in args.targets:
            for name, method in METHODS.items():
                allocation = Allocation(method["allocation"], 0.5, target=("latency", target), fast_widths=True,
                                        latency_table=str(folder / "table.json"), threads=args.threads)
                request = PruneRequest(method["criterion"], calibration=spec, allocation=allocation,
                                       sequential=method["sequential"], depth=method["depth"])
                path = folder / f"{target}-{len(rows)}.onnx"
                start = time.perf_counter()
                try:
                    prune_file(dense, Output(path, dims=SIZES), request)
                except Exception as exc:  # noqa: BLE001 - a method that cannot reach the target says so
                    rows.append([f"{target:g}", name, "-", "-", f"{type(exc).__name__}: {str(exc)[:60]}", "-"])
                    continue
                seconds = time.perf_counter() - start
                rows.append([f"{target:g}", name, f"{retimed(dense, path, timing, args.threads):.3f}",
                             f"{mean_cosine(dense, path, evaluation):.4f}", f"{seconds:.0f}", path.name])
    print(f"all-MiniLM-L6-v2, {args.samples} calibration sentences, {len(evaluation)} evaluation sentences, "
          f"ORT CPU, {args.threads} thread(s)")
    print(render(["target", "method", "latency (re-timed)", "cosine", "wall s", "file"], rows))


if __name__ == "__main__":
    main()
