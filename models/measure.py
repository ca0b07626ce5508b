"""Run one graphprune job in this process and report what it cost: wall and CPU time, bytes written to disk,
peak resident memory (all of it, and the anonymous part: mapped weight files excluded). Linux /proc only.

    python -m graphprune.models.measure MODEL OUTPUT [CRITERION [RATIO]]   (prints one JSON line)
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import onnx

from graphprune.io import external_data_files, output_files


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _written() -> int:
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["write_bytes"])


def measure(source: str, target: str, criterion: str = "l2", ratio: float = 0.5) -> dict:
    """Prune `source` into `target` and return the costs of doing it."""
    from graphprune.passes import CalibrationSpec, prune_file

    peak = {"anonymous": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["anonymous"] = max(peak["anonymous"], _status("RssAnon"))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    written, wall, cpu = _written(), time.perf_counter(), time.process_time()
    calibration = CalibrationSpec(data_free=True, samples=8, batch_size=4) if criterion != "l2" else None
    result = prune_file(source, target, criterion, ratio=ratio, calibration=calibration)
    done.set()
    sampler.join()
    graph = onnx.load(source, load_external_data=False).graph
    files = [Path(source), *external_data_files(graph, Path(source).parent)]
    return {
        "wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
        "model_bytes": sum(f.stat().st_size for f in files if f.exists()),
        "output_bytes": sum(f.stat().st_size for f in output_files(target, True) if f.exists()),
        "written_bytes": _written() - written, "peak_rss_bytes": _status("VmHWM"),
        "peak_anonymous_bytes": peak["anonymous"], "verified": result.verification.passed,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(measure(args[0], args[1], *(args[2:3]), *(float(a) for a in args[3:4]))))
