"""ONNX Runtime helpers: sessions from files or in-memory models, synthetic feeds, latency measurement."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from graphprune.io import as_file, to_bytes, uses_external_data

_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def session(model: ir.Model | str | os.PathLike, providers: list[str] | None = None,
            threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession for a model file or an in-memory model (spilled to disk if it has external data)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    providers = providers or ["CPUExecutionProvider"]
    if isinstance(model, ir.Model) and not uses_external_data(model):
        return ort.InferenceSession(to_bytes(model), options, providers=providers)
    with as_file(model) as path:
        return ort.InferenceSession(str(path), options, providers=providers)


def random_feeds(sess: ort.InferenceSession, batch: int = 1, seed: int = 0,
                 dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs matching the session's input specs; symbolic dims take `dims[name]`, else `batch` for
    the leading axis and 1 elsewhere. Integer inputs get small non-negative values."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in sess.get_inputs():
        shape = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                shape.append(d)
            else:
                shape.append((dims or {}).get(d, batch if axis == 0 else 1))
        dtype = _NUMPY_TYPES.get(spec.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return sess.run(None, feeds)


def latency_ms(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], warmup: int = 5,
               runs: int = 50) -> float:
    """Median wall time of one run, in milliseconds, after warm-up runs."""
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
