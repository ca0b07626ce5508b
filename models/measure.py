"""Run one graphprune job in this process and report what it cost: wall and CPU time, bytes written to disk,
peak resident memory (all of it, and the anonymous part: mapped weight files excluded). Linux /proc only.

    python -m graphprune.models.measure MODEL OUTPUT [CRITERION [RATIO [PROVIDER]]]   (prints one JSON line)

RATIO is a fraction for every group, or per kind: head=0.25,neuron=0.3 (other kinds untouched); PROVIDER is
the ONNX Runtime provider calibration and verification run on (cpu, cuda).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx

from graphprune.io.load import external_data_files
from graphprune.io.save import model_files


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _written() -> int:
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["write_bytes"])


def measure(source: str, target: str, criterion: str = "l2", ratio: float = 0.5,
            kind_ratios: dict[str, float] | None = None, provider: str = "cpu") -> dict:
    """Prune `source` into `target` (`ratio`, or `kind_ratios` per kind) on `provider` and return the costs of
    doing it, and the units it removed (group id → indices)."""
    from graphprune.io import runtime
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
    with runtime.using(provider):
        result = prune_file(source, target, criterion=criterion, ratio=0.0 if kind_ratios else ratio,
                            kind_ratios=kind_ratios, calibration=calibration)
    done.set()
    sampler.join()
    graph = onnx.load(source, load_external_data=False).graph
    files = [Path(source), *external_data_files(graph, Path(source).parent)]
    return {
        "wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
        "model_bytes": sum(f.stat().st_size for f in files if f.exists()),
        "output_bytes": sum(f.stat().st_size for f in model_files(target)),
        "written_bytes": _written() - written, "peak_rss_bytes": _status("VmHWM"),
        "peak_anonymous_bytes": peak["anonymous"], "verified": result.verification.passed,
        "removed": {str(group): units.tolist() for group, units in result.plan.removed.items()},
    }


HEADERS = ["size", "GB", "criterion", "wall s", "CPU s", "peak RSS / file", "anonymous / file", "written / output"]


def measured_cost(source: Path, target: Path, criterion: str, ratio: str, provider: str = "cpu") -> dict:
    """Run `measure` in a fresh process (so peaks are this run's alone) and return what it reported."""
    done = subprocess.run([sys.executable, "-m", "graphprune.models.measure", str(source), str(target), criterion,
                           ratio, provider], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def row_of(size: str, criterion: str, cost: dict) -> list:
    """One row under HEADERS from what `measure` reported."""
    model = cost["model_bytes"]
    return [size, f"{model / 1e9:.2f}", criterion, cost["wall_s"], cost["cpu_s"],
            f"{cost['peak_rss_bytes'] / model:.2f}", f"{cost['peak_anonymous_bytes'] / model:.2f}",
            f"{cost['written_bytes'] / cost['output_bytes']:.2f}"]


def parse_ratio(text: str) -> tuple[float, dict[str, float] | None]:
    """"0.5" → (0.5, None); "head=0.25,neuron=0.3" → (0.0, {"head": 0.25, "neuron": 0.3})."""
    if "=" not in text:
        return float(text), None
    return 0.0, {kind: float(value) for kind, value in (item.split("=") for item in text.split(","))}


if __name__ == "__main__":
    args = sys.argv[1:]
    ratio, kinds = parse_ratio(args[3]) if len(args) > 3 else (0.5, None)
    print(json.dumps(measure(args[0], args[1], args[2] if len(args) > 2 else "l2", ratio, kinds,
                             args[4] if len(args) > 4 else "cpu")))
