"""The Hugging Face zoo, numbers: for each architecture `transformers` builds from a small random-init config,
exported by both torch exporters, the groups found and prunable, the share of attention and MLP weights in
prunable groups, the commonest reasons for the rest, and the params ratio after `--ratio 0 --head-ratio 0.5
--neuron-ratio 0.5` (l2, verified in ONNX Runtime).

    python benchmarks/bench_zoo.py [--models bert gemma-mqa ...] [--json FILE]
Needs graphprune[hf]. The suite checks the same zoo (tests/models/test_hf_zoo.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

from graphprune.analysis.coupling import analyze
from graphprune.cli.table import render
from graphprune.io.load import load_model
from graphprune.models import zoo
from graphprune.passes.pipeline.prune import prune_file


def measure(name: str, dynamo: bool, folder: Path) -> dict:
    row: dict = {"model": name, "exporter": "dynamo" if dynamo else "legacy"}
    try:
        path = zoo.export_architecture(name, dynamo, folder)
    except Exception as exc:  # noqa: BLE001 - exporters fail in many ways; the row says how
        return row | {"error": f"export: {type(exc).__name__}"}
    units = zoo.GQA_UNITS.get(name, "kv-group")
    analysis = analyze(load_model(path), gqa_units=units)
    reasons = Counter(g.frozen_reasons[0].split(": ", 1)[-1] for g in analysis.groups if g.frozen)
    result = prune_file(path, folder / f"{path.stem}-pruned.onnx", ratio=0.0, criterion="l2", gqa_units=units,
                        kind_ratios={"head": 0.5, "neuron": 0.5})
    return row | {"groups": len(analysis.groups), "prunable": len(analysis.prunable()),
                  "kinds": dict(Counter(g.kind for g in analysis.prunable())),
                  "fraction": round(zoo.prunable_fraction(analysis), 3),
                  "params_ratio": round(result.after.params / result.before.params, 3),
                  "frozen_by": dict(reasons.most_common(3))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(zoo.ARCHITECTURES))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, dynamo, Path(tmp)) for name in args.models for dynamo in (False, True)]
    print(render(["model", "exporter", "groups / prunable", "attn+MLP prunable", "params after", "frozen by"],
                 [[r["model"], r["exporter"], f"{r.get('groups', '-')} / {r.get('prunable', '-')}",
                   f"{r['fraction']:.0%}" if "fraction" in r else r.get("error", "-"),
                   f"{r['params_ratio']:.3f}x" if "params_ratio" in r else "-",
                   "; ".join(f"{n} × {t[:60]}" for t, n in r.get("frozen_by", {}).items())] for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
