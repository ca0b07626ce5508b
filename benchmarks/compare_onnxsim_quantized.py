"""graphprune vs onnxsim 0.8.1's pattern-matched pruning on ORT-quantized models: the fraction of weights each
removes at the same ratio, and whether its output runs in ONNX Runtime. onnxsim lives in its own virtual
environment (its onnx pin differs); point --onnxsim-python at that interpreter:

    python3 -m venv /tmp/simvenv && /tmp/simvenv/bin/pip install onnxsim==0.8.1 onnxruntime
    python benchmarks/compare_onnxsim_quantized.py --onnxsim-python /tmp/simvenv/bin/python
Needs graphprune[torch].
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from graphprune.cli.table import render
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.models.quantize import FORMATS, quantize
from graphprune.models.reference import export_reference
from graphprune.passes import prune_file
from graphprune.verify.cost import count_params

ONNXSIM = {"float": "apply_structured_pruning", "qdq": "apply_structured_pruning_qdq",
           "qdq-per-tensor": "apply_structured_pruning_qdq", "qoperator": "apply_structured_pruning_qoperator",
           "qoperator-per-tensor": "apply_structured_pruning_qoperator",
           "dynamic": "apply_structured_pruning_dynamic_quantize_matmul",
           "int4": "apply_structured_pruning_matmul_nbits"}
DIMS = {"bert": {"batch": 1, "seq": 16}}


def _onnxsim(python: str, function: str, source: Path, target: Path, ratio: float) -> str | None:
    code = ("import sys, onnx, onnxsim.pruning as p; "
            f"onnx.save(p.{function}(sys.argv[1], sparsity={ratio}), sys.argv[2])")
    done = subprocess.run([python, "-c", code, str(source), str(target)], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1][:80]


def _kept_and_runs(source: Path, target: Path, dims: dict | None) -> tuple[str, str]:
    try:
        kept = count_params(load_model(target)) / count_params(load_model(source))
        sess = runtime.session(str(target))
        runtime.run(sess, runtime.random_feeds(sess, dims=dims))
        return f"{kept:.3f}", "yes"
    except Exception as exc:  # noqa: BLE001 - report, do not stop the table
        return "-", f"no ({str(exc).splitlines()[0][:60]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnxsim-python", required=True)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=["resnet", "bert"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            dense = export_reference(name, False, folder)
            for form in ["float", *(f for f in FORMATS if name == "bert" or f != "int4")]:
                source = dense if form == "float" else quantize(dense, folder / f"{name}_{form}.onnx", form,
                                                                dims=DIMS.get(name))
                ours, theirs = folder / f"{name}_{form}_gp.onnx", folder / f"{name}_{form}_sim.onnx"
                prune_file(source, ours, ratio=args.ratio)
                failure = _onnxsim(args.onnxsim_python, ONNXSIM[form], source, theirs, args.ratio)
                sim = ("-", f"no ({failure})") if failure else _kept_and_runs(source, theirs, DIMS.get(name))
                rows.append([name, form, *_kept_and_runs(source, ours, DIMS.get(name)), *sim])
    print(render(["model", "format", "graphprune kept", "runs", "onnxsim kept", "runs"], rows))


if __name__ == "__main__":
    main()
