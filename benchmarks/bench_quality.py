"""Quality of every criterion at several ratios, without fine-tuning, measured in one run:
- the shipped digits CNN: accuracy on held-out digits (calibration on 120 other held-out images);
- the real all-MiniLM-L6-v2: mean cosine of sentence embeddings to the dense model's on real sentences
  (calibration on other sentences); head and neuron ratio both = ratio, the hidden size kept.
Each row also gives the wall time of the whole prune (calibration included).

    python benchmarks/bench_quality.py [--models digits minilm] [--ratios 0.2 0.3 0.5]
MiniLM needs graphprune[hf].
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from graphprune.cli.table import render
from graphprune.passes import CalibrationSpec, prune_file
from graphprune.passes.importance import criteria

VARIANTS = [(c, False) for c in criteria()] + [("l2", True), ("wanda-sp", True)]  # flap compensates by default


def digits_rows(ratios: list[float], folder: Path) -> list[list]:
    from graphprune.models.demo import DEMO_MODEL, accuracy, digits_test_set

    x, y = digits_test_set()
    np.savez(folder / "calib.npz", x=x[:120])
    x_eval, y_eval = x[120:], y[120:]
    rows = [["digits", "-", "dense", f"{accuracy(DEMO_MODEL, x_eval, y_eval):.4f}", ""]]
    for ratio in ratios:
        for criterion, compensate in VARIANTS:
            start = time.perf_counter()
            prune_file(DEMO_MODEL, folder / "d.onnx", criterion, ratio, round_to=8, compensate=compensate or None,
                       calibration=CalibrationSpec(str(folder / "calib.npz"), samples=120, batch_size=40))
            seconds = time.perf_counter() - start
            label = criterion + ("+comp" if compensate else "")
            quality = accuracy(folder / "d.onnx", x_eval, y_eval)
            rows.append(["digits", ratio, label, f"{quality:.4f}", f"{seconds:.2f}"])
    return rows


def minilm_rows(ratios: list[float], folder: Path) -> list[list]:
    from graphprune.models.minilm import CALIBRATION_SENTENCES, export_minilm, mean_cosine, tokenize

    dense = export_minilm(folder / "minilm.onnx", dynamo=False)
    np.savez(folder / "tokens.npz", **tokenize(CALIBRATION_SENTENCES))
    rows = []
    for ratio in ratios:
        for criterion, compensate in VARIANTS:
            start = time.perf_counter()
            prune_file(dense, folder / "m.onnx", criterion, 0.0, kind_ratios={"head": ratio, "neuron": ratio},
                       compensate=compensate or None,
                       calibration=CalibrationSpec(str(folder / "tokens.npz"), samples=len(CALIBRATION_SENTENCES)))
            seconds = time.perf_counter() - start
            label = criterion + ("+comp" if compensate else "")
            rows.append(["minilm", ratio, label, f"{mean_cosine(dense, folder / 'm.onnx'):.4f}", f"{seconds:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "minilm"], choices=["digits", "minilm"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.3, 0.5])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += (digits_rows if name == "digits" else minilm_rows)(args.ratios, Path(tmp))
    print("digits: accuracy (round-to 8); minilm: embedding cosine to dense; no fine-tuning")
    print(render(["model", "ratio", "criterion", "quality", "prune s"], rows))


if __name__ == "__main__":
    main()
