"""Quality at a latency target, side by side: a real model pruned to each `--target-latency` by the FLOPs search
along obs scores (one-shot obs, uniform allocation: the method a latency target ran before the one allocator)
and by the default method with calibration data (measured error per millisecond of the latency table,
sequential refit, depth); latency re-timed interleaved against the dense model; wall time of each run.

- `minilm`: the real all-MiniLM-L6-v2; calibration on `--samples` standard-library docstring sentences, quality
  (embedding cosine to the dense model) on the other half; timed at batch 8 × 64 tokens;
- `ppocr`: the real PP-OCRv4 recognizer (rapidocr-onnxruntime's), on printed document lines
  (`ocr.render_documents`): calibration on 64, character agreement with the dense reading on 160 others;
  timed at batch 8 × 48 × 320.

    python benchmarks/bench_latency_quality.py [--models minilm ppocr] [--targets 0.8 0.7 0.5] [--samples 64]
        [--threads 1]
Needs graphprune[hf] (minilm), graphprune[ocr] and Pillow (ppocr).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

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


class Subject:
    """A model, its calibration, its quality measure and the sizes its latency is timed at."""

    def __init__(self, name: str, folder: Path, samples: int) -> None:
        if name == "minilm":
            calibration, evaluation = corpus_sentences()
            self.model = export_minilm(folder / "minilm.onnx", dynamo=False)
            (folder / "calib.txt").write_text("\n".join(calibration[:samples]))
            self.spec = CalibrationSpec(str(folder / "calib.txt"), samples=samples, batch_size=16,
                                        tokenizer=str(model_dir() / "tokenizer.json"))
            self.sizes, self.quality = {"batch": 8, "seq": 64}, lambda path: mean_cosine(self.model, path, evaluation)
            self.title = f"all-MiniLM-L6-v2, {samples} calibration sentences, {len(evaluation)} evaluation sentences"
        else:
            from graphprune.models import ocr

            self.model = Path(ocr.packaged_recognizer())
            np.savez(folder / "calib.npz", x=ocr.render_documents(64, 1)[0])
            lines = ocr.render_documents(160, 2)[0]
            reference = ocr.read(self.model, lines)
            self.spec = CalibrationSpec(str(folder / "calib.npz"), batch_size=64)
            self.sizes = {"p2o.DynamicDimension.0": 8, "?": 48, "p2o.DynamicDimension.1": 320}  # "?": its height
            self.quality = lambda path: ocr.agreement(reference, ocr.read(path, lines))
            self.title = "PP-OCRv4 recognizer, 64 calibration document lines, 160 evaluation lines"


HEADER = ["model", "target", "method", "latency (re-timed)", "quality", "wall s", "file"]


def retimed(dense: Path, pruned: Path, feeds: dict, threads: int) -> float:
    sessions = [runtime.session(p, threads=threads, timing=True) for p in (dense, pruned)]
    inputs = [{i.name: feeds[i.name] for i in s.get_inputs()} for s in sessions]
    return statistics.median(runtime.round_ratios(*runtime.interleaved_ms(sessions, inputs, runs=40)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "ppocr"], choices=["minilm", "ppocr"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.8, 0.7, 0.5])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            folder = Path(tmp) / model
            folder.mkdir()
            subject = Subject(model, folder, args.samples)
            dense = subject.model
            timing = runtime.random_feeds(runtime.session(dense), dims=subject.sizes)
            for target in args.targets:
                for name, method in METHODS.items():
                    allocation = Allocation(method["allocation"], 0.5, target=("latency", target), fast_widths=True,
                                            latency_table=str(folder / "table.json"), threads=args.threads)
                    request = PruneRequest(method["criterion"], calibration=subject.spec, allocation=allocation,
                                           sequential=method["sequential"], depth=method["depth"])
                    path = folder / f"{target}-{len(rows)}.onnx"
                    start = time.perf_counter()
                    try:
                        prune_file(dense, Output(path, dims=subject.sizes), request)
                    except Exception as exc:  # noqa: BLE001 - a method that cannot reach the target says so
                        rows.append([model, f"{target:g}", name, "-", "-", f"{type(exc).__name__}: {str(exc)[:60]}",
                                     "-"])
                        continue
                    seconds = time.perf_counter() - start
                    rows.append([model, f"{target:g}", name, f"{retimed(dense, path, timing, args.threads):.3f}",
                                 f"{subject.quality(path):.4f}", f"{seconds:.0f}", path.name])
                    print(render(HEADER, rows[-1:]), flush=True)
            print(f"{subject.title}, ORT CPU, {args.threads} thread(s)")
    print(render(HEADER, rows))


if __name__ == "__main__":
    main()
