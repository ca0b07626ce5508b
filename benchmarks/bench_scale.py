"""Scale: prune residual FFN stacks of growing size (weights in sparse external data files, so no disk is
needed for the inputs) and report, per criterion, wall and CPU time, peak memory over the model file (all of
it, and the anonymous part, which excludes memory-mapped weights) and bytes written over the output's size.

    python benchmarks/bench_scale.py [--sizes small,medium,large,7b] [--criteria l2,flap] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from graphprune.cli.table import render
from graphprune.models.measure import HEADERS, measured_cost, row_of
from graphprune.models.sparse import build_sparse_ffn

SIZES = {  # layers, hidden, ffn
    "small": (4, 2048, 8192),  # 0.5 GB
    "medium": (5, 4096, 16384),  # 2.7 GB: past the 2 GiB protobuf limit
    "large": (12, 4096, 16384),  # 6.4 GB
    "7b": (32, 4096, 11008),  # 11.5 GB: LLaMA-7B's FFN shapes
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--criteria", default="l2,flap")
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            source = build_sparse_ffn(Path(tmp) / size, *SIZES[size])
            for criterion in args.criteria.split(","):
                target = Path(tmp) / f"{size}_{criterion}" / "pruned.onnx"
                rows.append(row_of(size, criterion, measured_cost(source, target, criterion, str(args.ratio))))
                print(rows[-1], flush=True)
    print(render(HEADERS, rows))


if __name__ == "__main__":
    main()
