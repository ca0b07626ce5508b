"""Small torch reference transformers in the shapes real exporters see (needs graphprune[torch]).

BERT-style encoder (post-LN, GELU FFN, additive attention mask), ViT (patch conv, cls token concat, pre-LN),
LLaMA-style decoder (RMSNorm, rotary embeddings, GQA with 2 query heads per KV head, SwiGLU, tied or untied
lm_head). Each builder returns (module in eval mode, example inputs).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, S, D] → [B, H_kv·n_rep, S, D], written as Hugging Face's LLaMA does."""
    batch, kv_heads, seq, head_dim = x.shape
    if n_rep == 1:
        return x
    x = x[:, :, None, :, :].expand(batch, kv_heads, n_rep, seq, head_dim)
    return x.reshape(batch, kv_heads * n_rep, seq, head_dim)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention with separate or fused Q/K/V projections; `packed` fuses
    them as timm's ViT does: qkv viewed as [B, S, 3, heads, head_dim], permuted, then unbound."""

    def __init__(self, d: int, heads: int, kv_heads: int | None = None, bias: bool = True, fused: bool = False,
                 rope: bool = False, sdpa: bool = False, packed: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads or heads, d // heads
        self.fused, self.rope, self.sdpa, self.packed = fused or packed, rope, sdpa, packed
        kv_d = self.kv_heads * self.head_dim
        if fused:
            self.qkv = nn.Linear(d, d + 2 * kv_d, bias=bias)
        else:
            self.q = nn.Linear(d, d, bias=bias)
            self.k, self.v = nn.Linear(d, kv_d, bias=bias), nn.Linear(d, kv_d, bias=bias)
        self.o = nn.Linear(d, d, bias=bias)
        if rope:
            inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
            angles = torch.outer(torch.arange(64).float(), inv)
            emb = torch.cat((angles, angles), dim=-1)
            self.register_buffer("cos", emb.cos(), persistent=False)
            self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, d = x.shape
        if self.packed:
            q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            if self.fused:
                kv_d = self.kv_heads * self.head_dim
                q, k, v = self.qkv(x).split([d, kv_d, kv_d], dim=-1)
            else:
                q, k, v = self.q(x), self.k(x), self.v(x)
            q = q.view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.rope:
            cos, sin = self.cos[:s], self.sin[:s]
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        n_rep = self.heads // self.kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            out = scores.softmax(-1) @ v
        return self.o(out.transpose(1, 2).reshape(b, s, d))


class BertLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.attn, self.ln1 = Attention(d, heads), nn.LayerNorm(d)
        self.up, self.down, self.ln2 = nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d)

    def forward(self, x, mask):
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class Bert(nn.Module):
    def __init__(self, vocab: int = 100, d: int = 64, heads: int = 4, ffn: int = 128, layers: int = 2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(64, d)
        self.ln = nn.LayerNorm(d)
        self.layers = nn.ModuleList(BertLayer(d, heads, ffn) for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.ln(self.tok(input_ids) + self.pos(positions))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x


class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, packed: bool = False):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), Attention(d, heads, fused=True, packed=packed)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self, d: int = 48, heads: int = 3, ffn: int = 96, layers: int = 2, patch: int = 8,
                 packed: bool = False):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, (32 // patch) ** 2 + 1, d) * 0.1)
        self.blocks = nn.ModuleList(ViTBlock(d, heads, ffn, packed) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x)[:, 0])


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class LlamaLayer(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, ffn: int):
        super().__init__()
        self.norm1, self.attn = RMSNorm(d), Attention(d, heads, kv_heads, bias=False, rope=True, sdpa=True)
        self.norm2 = RMSNorm(d)
        self.gate, self.up = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x, mask):
        x = x + self.attn(self.norm1(x), mask)
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):
    def __init__(self, vocab: int = 100, d: int = 64, heads: int = 4, kv_heads: int = 2, ffn: int = 96,
                 layers: int = 2, tied: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(LlamaLayer(d, heads, kv_heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids):
        s = input_ids.shape[1]
        mask = torch.full((s, s), float("-inf")).triu(1)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return self.lm_head(self.norm(x))


class WindowAttention(nn.Module):
    """Swin window attention: packed qkv, per-head relative position bias gathered from a table."""

    def __init__(self, dim, heads, ws):
        super().__init__()
        self.heads, self.ws = heads, ws
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads) * 0.1)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("index", (rel[..., 0] * (2 * ws - 1) + rel[..., 1]).flatten(), persistent=False)

    def forward(self, x):  # x [B*nW, N, C]
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.table[self.index].view(n, n, -1).permute(2, 0, 1)
        attn = F.softmax(attn + bias.unsqueeze(0), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

class SwinBlock(nn.Module):
    """Windows partitioned and merged back with view/permute; every other block shifted with torch.roll."""

    def __init__(self, dim, heads, ws, shift):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, heads, ws)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):  # [B, H, W, C]
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        ws = self.ws
        y = y.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        y = self.attn(y)
        y = y.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

class PatchMerging(nn.Module):
    """Four strided sub-grids concatenated on channels, LayerNorm, Linear 4C → 2C."""

    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)
    def forward(self, x):
        x0, x1, x2, x3 = x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], -1)))

class Swin(nn.Module):
    """A two-stage Swin transformer (torchvision's layout: NHWC inside, patch merging between stages)."""

    def __init__(self, dim=16, heads=2, ws=2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(SwinBlock(dim, heads, ws, 0), SwinBlock(dim, heads, ws, 1))
        self.merge = PatchMerging(dim)
        self.blocks2 = nn.Sequential(SwinBlock(2 * dim, 2 * heads, ws, 0))
        self.head = nn.Linear(2 * dim, 10)
    def forward(self, x):
        x = self.norm(self.patch(x).permute(0, 2, 3, 1))
        x = self.blocks2(self.merge(self.blocks(x)))
        return self.head(x.mean((1, 2)))


class TorchEncoder(nn.Module):
    """torch's own nn.TransformerEncoder (nn.MultiheadAttention inside: packed in_proj_weight [3d, d])."""

    def __init__(self, batch_first: bool, d: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        for copy in self.encoder.layers:  # deep copies of one layer: make them differ, as trained ones do
            for parameter in copy.parameters():
                nn.init.normal_(parameter, std=0.2 if parameter.dim() > 1 else 0.05)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        return self.head(self.encoder(x))


class TorchCrossAttention(nn.Module):
    """nn.MultiheadAttention as cross-attention (queries from x, keys and values from a memory sequence) in a
    residual block with LayerNorm, as a transformer decoder has it."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.query, self.memory = nn.Linear(d, d), nn.Linear(d, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 5)

    def forward(self, x, memory):
        q, m = self.query(x), torch.relu(self.memory(memory))
        out, _ = self.attn(q, m, m, need_weights=False)
        return self.head(self.norm(q + out))


BUILDERS: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    "bert": lambda: (Bert(), (torch.randint(0, 100, (2, 12)), torch.tensor([[1] * 12, [1] * 9 + [0] * 3]))),
    "vit": lambda: (ViT(), (torch.randn(2, 3, 32, 32),)),
    "vit_packed": lambda: (ViT(packed=True), (torch.randn(2, 3, 32, 32),)),
    "llama": lambda: (Llama(), (torch.randint(0, 100, (2, 12)),)),
    "llama_tied": lambda: (Llama(tied=True), (torch.randint(0, 100, (2, 12)),)),
    "torch_encoder": lambda: (TorchEncoder(batch_first=True), (torch.randn(2, 6, 32),)),
    "torch_encoder_seq_first": lambda: (TorchEncoder(batch_first=False), (torch.randn(6, 2, 32),)),
    "torch_cross_attention": lambda: (TorchCrossAttention(), (torch.randn(2, 6, 32), torch.randn(2, 4, 32))),
    "swin": lambda: (Swin(), (torch.randn(2, 3, 32, 32),)),
}
INPUT_NAMES = {"bert": ["input_ids", "attention_mask"], "vit": ["x"], "vit_packed": ["x"], "llama": ["input_ids"],
               "llama_tied": ["input_ids"], "torch_encoder": ["x"], "torch_encoder_seq_first": ["x"],
               "torch_cross_attention": ["x", "memory"], "swin": ["x"]}
# dynamic axes where not (batch, seq) on every input; torch's legacy exporter writes the key length of
# nn.MultiheadAttention as a constant, so those models stay valid only with a static sequence
DYNAMIC = {"torch_encoder": [{0: "batch"}], "torch_encoder_seq_first": [{1: "batch"}],
           "torch_cross_attention": [{0: "batch"}, {0: "batch"}]}


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple]:
    torch.manual_seed(seed)
    module, inputs = BUILDERS[name]()
    return module.eval(), inputs
