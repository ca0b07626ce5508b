"""A sweep: one model pruned at several targets of one cost (latency, params or FLOPs), each result re-timed
against the dense model and its output error measured, for a report of quality against cost. The latency
table and the measured sensitivity are measured once and reused by every target."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from graphprune import progress
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.pipeline.prune import PruneResult, prune_file
from graphprune.passes.pipeline.request import Output, PruneRequest
from graphprune.verify.drift import squared_error_ratio

METRICS = ("latency", "params", "flops")
QUALITY_BATCHES = 4  # calibration batches the output error of each point is measured on
RUNS = 40  # timed runs per model when re-timing a point


@dataclass
class SweepPoint:
    """One target's result: the file written, the prune result, the latency re-timed against the dense model
    (median of the rounds' ratios, lowest, highest) and the relative squared output error on `inputs`."""

    target: float
    path: Path
    result: PruneResult
    latency: tuple[float, float, float]
    error: float
    inputs: str


def sweep_file(source: str | os.PathLike, folder: str | os.PathLike, request: PruneRequest, metric: str,
               targets: list[float], dims: dict[str, int] | None = None,
               feeds: dict[str, np.ndarray] | None = None) -> list[SweepPoint]:
    """Prune `source` as `request` asks, once per target of `metric`, into `folder` (created); every point
    re-timed and its error measured on the calibration data (its first batches) or else on `feeds`/random
    inputs sized by `dims`."""
    if metric not in METRICS:
        raise GraphpruneError(f"a sweep varies one of {', '.join(METRICS)}, not {metric!r}")
    if not targets or any(not 0 < t <= 1 for t in targets):
        raise GraphpruneError(f"sweep targets are fractions of the dense model in (0, 1], got {targets}")
    source, folder = Path(source), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = request.allocation or Allocation(ratio=request.ratio)
    table = base.latency_table or str(folder / "latency_table.json")
    threads = base.threads
    quality, inputs = _quality_inputs(source, request, dims, feeds)
    points, reuse = [], {}  # the targets share one model, data and method: sensitivity is measured once
    for target in sorted(targets, reverse=True):
        with progress.step(f"sweep: {metric} {target:g}"):
            path = folder / f"{source.stem}-{metric}-{target:g}.onnx"
            allocation = replace(base, target=(metric, target), latency_table=table, reuse=reuse)
            result = prune_file(source, Output(path, dims=dims, feeds=feeds), replace(request, allocation=allocation))
            points.append(SweepPoint(target, path, result, _retimed(source, path, quality[0], threads),
                                     _error(source, path, quality), inputs))
    return points


def _quality_inputs(source: Path, request: PruneRequest, dims: dict[str, int] | None,
                    feeds: dict[str, np.ndarray] | None) -> tuple[list[dict[str, np.ndarray]], str]:
    """The batches each point's error is measured on, and what they are."""
    spec = request.spec
    if spec.path is not None:
        batches = []
        for batch in spec.open(load_model(source)):
            batches.append(batch)
            if len(batches) == QUALITY_BATCHES:
                break
        return batches, f"{sum(len(next(iter(b.values()))) for b in batches)} calibration samples"
    if feeds is not None:
        return [feeds], "the given inputs"
    return [runtime.random_feeds(runtime.session(source), dims=dims)], "random inputs"


def _retimed(dense: Path, pruned: Path, feeds: dict[str, np.ndarray], threads: int | None) -> tuple[float, ...]:
    sessions = [runtime.session(path, threads=threads, timing=True) for path in (dense, pruned)]
    inputs = [{i.name: feeds[i.name] for i in sess.get_inputs()} for sess in sessions]
    ratios = runtime.round_ratios(*runtime.interleaved_ms(sessions, inputs, runs=RUNS))
    return float(np.median(ratios)), min(ratios), max(ratios)


def _error(dense: Path, pruned: Path, batches: list[dict[str, np.ndarray]]) -> float:
    outputs = []
    for path in (dense, pruned):
        sess = runtime.session(path)
        names = [i.name for i in sess.get_inputs()]
        outputs.append([sess.run(None, {k: v for k, v in b.items() if k in names}) for b in batches])
    return squared_error_ratio(*outputs, batches)
