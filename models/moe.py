"""Reference Mixtral-style sparse MoE decoder blocks, written the ways real MoE ONNX graphs are (needs torch).

Router Linear → Softmax → TopK(k) → renormalise → SwiGLU experts → gate-weighted sum, in six forms:
`dense` (stacked [E, d, f] expert weights, every expert computes every token, weighted by a sparse gate
matrix built with scatter), `einsum` (the same written with einsum), `masked` (a loop over separate expert
Linears, gate weight from `indices == e`), `scatter` (Hugging Face Mixtral's loop: one_hot, `torch.where`,
gather the routed tokens, `index_add_`), `sliced` (separate experts, each weighted by its slice
`g[..., e:e+1]` of the scattered gate) and `stacked` (tokens kept [batch, seq, d]; stacked experts through
`einsum('bsef,efd->bsed')`, combined by `(g.unsqueeze(-1) * y).sum(-2)`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FORMS = ("dense", "einsum", "masked", "scatter", "sliced", "stacked")


class SwiGLU(nn.Module):
    def __init__(self, d: int, f: int):
        super().__init__()
        self.gate, self.up = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.down = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class SparseMoE(nn.Module):
    """One MoE FFN over flattened tokens [N, d]."""

    def __init__(self, d: int, f: int, experts: int, top_k: int, form: str):
        super().__init__()
        self.experts, self.top_k, self.form = experts, top_k, form
        self.router = nn.Linear(d, experts, bias=False)
        if form in ("dense", "einsum", "stacked"):
            self.w_gate = nn.Parameter(torch.randn(experts, d, f) / d**0.5)
            self.w_up = nn.Parameter(torch.randn(experts, d, f) / d**0.5)
            self.w_down = nn.Parameter(torch.randn(experts, f, d) / f**0.5)
        else:
            self.ffns = nn.ModuleList(SwiGLU(d, f) for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.router(x), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.form == "dense":
            gates = torch.zeros_like(probs).scatter(-1, chosen, weights)  # [N, E], zero where not routed
            hidden = F.silu(x[None] @ self.w_gate) * (x[None] @ self.w_up)  # [E, N, f]
            return ((hidden @ self.w_down) * gates.t()[:, :, None]).sum(dim=0)
        if self.form == "einsum":
            gates = torch.zeros_like(probs).scatter(-1, chosen, weights)
            hidden = F.silu(torch.einsum("nd,edf->enf", x, self.w_gate)) * torch.einsum("nd,edf->enf", x, self.w_up)
            return torch.einsum("ne,end->nd", gates, torch.einsum("enf,efd->end", hidden, self.w_down))
        if self.form == "stacked":  # x: [batch, seq, d]
            gates = torch.zeros_like(probs).scatter(-1, chosen, weights)  # [b, s, E]
            hidden = F.silu(torch.einsum("bsd,edf->bsef", x, self.w_gate)) * torch.einsum("bsd,edf->bsef", x,
                                                                                              self.w_up)
            y = torch.einsum("bsef,efd->bsed", hidden, self.w_down)
            return (gates.unsqueeze(-1) * y).sum(-2)
        if self.form == "sliced":
            gates = torch.zeros_like(probs).scatter(-1, chosen, weights)
            return sum(gates[..., e:e + 1] * ffn(x) for e, ffn in enumerate(self.ffns))
        out = torch.zeros_like(x)
        if self.form == "masked":
            for e, ffn in enumerate(self.ffns):
                weight = (weights * (chosen == e)).sum(dim=-1, keepdim=True)
                out = out + weight * ffn(x)
            return out
        expert_mask = F.one_hot(chosen, self.experts).permute(2, 1, 0)  # [E, k, N]
        for e, ffn in enumerate(self.ffns):
            slot, token = torch.where(expert_mask[e])
            out.index_add_(0, token, ffn(x[token]) * weights[token, slot, None])
        return out


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class MoEDecoder(nn.Module):
    """Input projection, `layers` pre-norm residual MoE blocks, output head; x: [batch, seq, d_in]."""

    def __init__(self, form: str, d_in: int = 16, d: int = 32, f: int = 48, experts: int = 8, top_k: int = 2,
                 layers: int = 2, d_out: int = 10):
        super().__init__()
        self.proj, self.head = nn.Linear(d_in, d), nn.Linear(d, d_out)
        self.norms = nn.ModuleList(RMSNorm(d) for _ in range(layers))
        self.moes = nn.ModuleList(SparseMoE(d, f, experts, top_k, form) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        h = self.proj(x)
        if self.moes[0].form != "stacked":
            h = h.reshape(batch * seq, -1)
        for norm, moe in zip(self.norms, self.moes, strict=True):
            h = h + moe(norm(h))
        return self.head(h).reshape(batch, seq, -1)


def build(form: str, seed: int = 0, **sizes: int) -> tuple[MoEDecoder, tuple[torch.Tensor]]:
    """A seeded MoE decoder of the given form (eval mode) and an example input [2, 6, d_in]."""
    if form not in FORMS:
        raise ValueError(f"MoE form must be one of {FORMS}, got {form!r}")
    torch.manual_seed(seed)
    module = MoEDecoder(form, **sizes).eval()
    return module, (torch.randn(2, 6, module.proj.in_features),)
