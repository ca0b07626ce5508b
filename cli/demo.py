"""`graphprune demo`: prune the embedded digits CNN and show accuracy, latency, params and MACs before and after."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from graphprune.cli.table import human, render
from graphprune.cli.table import ratio as ratio_text
from graphprune.io import runtime
from graphprune.models.demo import DEMO_MODEL, accuracy, digits_test_set
from graphprune.passes.calibration.spec import CalibrationSpec
from graphprune.passes.importance import needs_data
from graphprune.passes.pipeline.prune import prune_file


def run_demo(ratio: float = 0.25, criterion: str = "obs", round_to: int = 8, output: str | None = None) -> dict:
    """Prune the demo model, print a before/after table, return the numbers. Criteria that need statistics
    get them data-free (synthetic inputs): the held-out digits are only ever used to measure accuracy."""
    x, y = digits_test_set()
    synthetic = CalibrationSpec(data_free=True, samples=256, batch_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(output) if output else Path(tmp) / "digits_pruned.onnx"
        result = prune_file(DEMO_MODEL, target, criterion=criterion, ratio=ratio, round_to=round_to,
                            calibration=synthetic if needs_data(criterion) else None)
        numbers = {
            "accuracy": (accuracy(DEMO_MODEL, x, y), accuracy(target, x, y)),
            **_latencies(DEMO_MODEL, target, x),
            "params": (result.before.params, result.after.params),
            "macs": (result.before.macs, result.after.macs),
        }
    rows = []
    for key, (before, after) in ((k, v) for k, v in numbers.items() if k != "latency_rounds"):
        fmt = (lambda v: f"{v:.4f}") if key == "accuracy" else (lambda v: f"{v:.3f}") if key == "latency_ms" else human
        rows.append([key, fmt(before), fmt(after), _ratio(key, before, after)])
    data = "data-free, " if needs_data(criterion) else ""
    print(f"demo: digits CNN, {len(y)} held-out images, criterion {criterion} ({data}no fine-tuning), "
          f"ratio {ratio}, round-to {round_to}")
    print(render(["", "dense", "pruned", "pruned/dense"], rows))
    low, high = numbers["latency_rounds"]
    print(f"latency: all {len(y)} images in one batch, 1 thread, the two models timed interleaved; pruned/dense "
          f"per round {low:.3f}–{high:.3f}")
    block = runtime.conv_channel_block() if runtime.provider_name() == "CPUExecutionProvider" else None
    if block and round_to % block:
        print(f"note: ONNX Runtime's CPU convolutions compute channels in blocks of {block} on this CPU; a width "
              f"between multiples of {block} runs as the next one, so the MACs saved show in latency with "
              f"--round-to {block} (e.g. graphprune demo --ratio 0.5 --round-to {block})")
    if output:
        print(f"\nwrote {output}")
    return numbers


def _ratio(key: str, before: float, after: float) -> str:
    return "" if key == "accuracy" else ratio_text(after, before)


def _latencies(dense: Path, pruned: Path, x: np.ndarray) -> dict[str, tuple[float, float]]:
    """Median ms of each model on the whole test set as one batch (where arithmetic, not call overhead, is
    what is timed), interleaved in rounds so that machine load hits both alike; and the lowest and highest of
    the rounds' pruned/dense ratios."""
    sessions = [runtime.session(path, threads=1, timing=True) for path in (dense, pruned)]
    feeds = [{sess.get_inputs()[0].name: x} for sess in sessions]
    times = runtime.interleaved_ms(sessions, feeds, warmup=5, runs=60)
    rounds = runtime.round_ratios(times[0], times[1])
    dense_ms = float(np.median(times[0]))
    return {"latency_ms": (dense_ms, dense_ms * float(np.median(rounds))), "latency_rounds": (min(rounds), max(rounds))}
