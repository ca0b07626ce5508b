"""Real exports at scale: LLaMA-GQA decoders from transformers (random init) exported by torch's dynamo exporter
(external data), pruned 25 % of heads + 30 % of FFN neurons per criterion; each run in its own process reports
wall and CPU time, peak memory over the model's files (all, and anonymous: mapped weights excluded) and bytes
written over the output's size. Needs graphprune[hf]; the 1B export needs ~15 GB of memory.

    python benchmarks/bench_llama_scale.py [--sizes 50m,250m,1b] [--criteria l2,flap,obs] [--folder DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Iterator

from graphprune.cli.table import render
from graphprune.models.measure import HEADERS, measured_cost, row_of

RATIO = "head=0.25,neuron=0.3"
SHAPES = {  # hidden, FFN, layers, query heads, KV heads (vocabulary 32000)
    "50m": (512, 1536, 8, 8, 2),
    "250m": (1024, 2816, 16, 16, 4),
    "1b": (2048, 5632, 16, 32, 8),
}


def export(size: str, path: Path) -> Path:
    """Export a random-init LlamaForCausalLM of `size` (input_ids → logits, dynamic batch and sequence)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, ffn, layers, heads, kv_heads = SHAPES[size]
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=32000,
                         max_position_embeddings=512, use_cache=False)
    model = LlamaForCausalLM(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids).logits

    dims = ({0: torch.export.Dim("batch", min=1, max=8), 1: torch.export.Dim("seq", min=2, max=512)},)
    torch.onnx.export(Logits(model).eval(), (torch.randint(0, 32000, (2, 16)),), str(path), dynamo=True,
                      input_names=["input_ids"], output_names=["logits"], dynamic_shapes=dims, opset_version=18)
    return path


def sources(sizes: str, folder: Path) -> Iterator[tuple[str, Path]]:
    """Each of the comma-separated `sizes` and its export in `folder`, made there unless already present."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder.mkdir(parents=True, exist_ok=True)
    for size in sizes.split(","):
        source = folder / f"llama_{size}.onnx"
        if not source.exists():
            export(size, source)
        yield size, source


def parser_for(doc: str, criteria: str) -> argparse.ArgumentParser:
    """Options every LLaMA-export benchmark takes: --sizes, --criteria (default `criteria`), --folder."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--sizes", default="50m,250m")
    parser.add_argument("--criteria", default=criteria)
    parser.add_argument("--folder", help="keep the exports here (reused when present)")
    return parser


def main() -> None:
    args = parser_for(__doc__, "l2,flap,obs").parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, source in sources(args.sizes, Path(args.folder or tmp)):
            for criterion in args.criteria.split(","):
                target = Path(tmp) / f"{size}_{criterion}" / "pruned.onnx"
                rows.append(row_of(size, criterion, measured_cost(source, target, criterion, RATIO)))
                print(rows[-1], flush=True)
    print(render(HEADERS, rows))


if __name__ == "__main__":
    main()
