"""Small random-init Hugging Face architectures that `transformers` builds offline (no weights are downloaded),
exported as their own code writes them: the zoo coverage is measured on. Needs graphprune[hf]."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import onnx_ir as ir
import torch

from graphprune.analysis.coupling import Analysis
from graphprune.models.export import export

TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100,
            max_position_embeddings=64)


def _configs() -> dict[str, Callable[[], torch.nn.Module]]:
    import transformers as hf

    return {
        "bert": lambda: hf.BertModel(hf.BertConfig(**TEXT)),
        "gpt2": lambda: hf.GPT2LMHeadModel(hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100,
                                                          n_positions=64)),
        "opt": lambda: hf.OPTForCausalLM(hf.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                      ffn_dim=64, vocab_size=100, max_position_embeddings=64,
                                                      word_embed_proj_dim=32)),
        "llama-gqa": lambda: hf.LlamaForCausalLM(hf.LlamaConfig(**TEXT, num_key_value_heads=2)),
        "gemma-mqa": lambda: hf.GemmaForCausalLM(hf.GemmaConfig(**TEXT, num_key_value_heads=1, head_dim=8)),
        "albert": lambda: hf.AlbertModel(hf.AlbertConfig(**TEXT, embedding_size=16)),  # one layer applied twice
        "deberta-v2": lambda: hf.DebertaV2Model(hf.DebertaV2Config(**TEXT, relative_attention=True,
                                                                   pos_att_type=["p2c", "c2p"], position_buckets=8)),
        "vit": lambda: hf.ViTModel(hf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=64, image_size=32, patch_size=8)),
        "deit": lambda: hf.DeiTModel(hf.DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                   intermediate_size=64, image_size=32, patch_size=8)),
        "clip-vision": lambda: hf.CLIPVisionModel(hf.CLIPVisionConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8)),
        "segformer": lambda: hf.SegformerModel(hf.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
            patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=32)),
        "mobilevit": lambda: hf.MobileViTModel(hf.MobileViTConfig(
            image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
            num_attention_heads=2)),
        "yolos": lambda: hf.YolosModel(hf.YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                      intermediate_size=64, image_size=[32, 32], patch_size=8,
                                                      num_detection_tokens=4)),
        "wav2vec2": lambda: hf.Wav2Vec2Model(hf.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2)),
    }


ARCHITECTURES = ("bert", "albert", "gpt2", "opt", "llama-gqa", "gemma-mqa", "deberta-v2", "vit", "segformer",
                 "mobilevit", "yolos", "wav2vec2")
VISION = {"vit", "deit", "clip-vision", "segformer", "mobilevit", "yolos"}
ENCODERS = ("bert", "vit", "deit", "clip-vision", "yolos", "wav2vec2")  # token reduction applies to these
GQA_UNITS = {"gemma-mqa": "query-slot"}  # one KV head: query heads are the only head units


def _main_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


class _Text(torch.nn.Module):
    """A text model's main output (logits or last hidden state), without a KV cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cache = {"use_cache": False} if "use_cache" in self.model.forward.__code__.co_varnames else {}
        return _main_output(self.model(input_ids=input_ids, attention_mask=attention_mask, **cache))


class _Vision(torch.nn.Module):
    """An image or audio model's main output, its one input passed by name (`pixel_values`, `input_values`)."""

    def __init__(self, model: torch.nn.Module, input_name: str) -> None:
        super().__init__()
        self.model, self.input_name = model, input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _main_output(self.model(**{self.input_name: x}))


def export_architecture(name: str, dynamo: bool, folder: str | os.PathLike, static_batch: int | None = None) -> Path:
    """Export the seeded random-init `name` (of ARCHITECTURES or ENCODERS), every weight nudged by noise, with dynamic
    batch (and, for text, sequence) axes; `static_batch`: text models at that batch and 16 tokens, sizes fixed."""
    torch.manual_seed(0)
    model = _configs()[name]().eval()
    with torch.no_grad():  # some inits zero a layer out (MobileViT's transformers then reach no output)
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    form = f"{'dynamo' if dynamo else 'legacy'}{f'-static{static_batch}' if static_batch else ''}"
    path = Path(folder) / f"{name}-{form}.onnx"
    opset = 17 if not dynamo else 18
    if name in VISION:
        return export(_Vision(model, "pixel_values"), (torch.randn(2, 3, 32, 32),), path, dynamo, opset=opset,
                      input_names=["pixel_values"])
    if name == "wav2vec2":
        return export(_Vision(model, "input_values"), (torch.randn(2, 400),), path, dynamo, opset=opset,
                      input_names=["input_values"])
    batch = static_batch or 2
    ids, mask = torch.randint(0, 100, (batch, 16)), torch.ones(batch, 16, dtype=torch.long)
    axes = {0: "batch", 1: "seq"}
    return export(_Text(model), (ids, mask), path, dynamo, opset=opset, input_names=["input_ids", "attention_mask"],
                  dynamic=[axes, axes], output_dynamic=axes, static=bool(static_batch))


def layer_weights(analysis: Analysis) -> list[ir.Value]:
    """The attention and MLP weights: matrices MatMul/Gemm read, less the output head (a product that is, or is
    one Add away from, a graph output)."""
    model = analysis.model
    outputs = {id(v) for v in model.graph.outputs}

    def is_head(node: ir.Node) -> bool:
        out = node.outputs[0]
        return id(out) in outputs or any(u.node.op_type == "Add" and id(u.node.outputs[0]) in outputs
                                         for u in out.uses())

    return [node.inputs[1] for node in model.graph if node.op_type in ("MatMul", "Gemm") and len(node.inputs) > 1
            and node.inputs[1].const_value is not None and len(node.inputs[1].const_value.shape) == 2
            and not is_head(node)]


def prunable_fraction(analysis: Analysis) -> float:
    """The share of `layer_weights` elements in at least one prunable group."""
    in_groups = {id(m.value) for g in analysis.prunable() for m in g.members if m.is_param}
    weights = layer_weights(analysis)
    total = sum(w.const_value.size for w in weights)
    return sum(w.const_value.size for w in weights if id(w) in in_groups) / max(total, 1)
