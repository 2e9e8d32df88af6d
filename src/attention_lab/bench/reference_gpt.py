"""A minimal GPT written out in one screen, the yardstick the loop benchmark holds our training step to.

nanoGPT's shape of the model, nothing configurable: token + learned position embeddings, pre-LayerNorm blocks
with one fused QKV projection and `F.scaled_dot_product_attention(is_causal=True)`, a GELU(tanh) MLP, a final
LayerNorm and a head tied to the token embedding; no biases anywhere (LayerNorms included), no dropout. With
`GPT(..., bias=False)` and the `sdpa` attention our model has exactly these parameters, so the time our step
takes beyond this one's is what our registry, hooks and Lightning cost, not a different amount of arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceBlock(nn.Module):
    """x + proj(sdpa(qkv(LN(x)))), then x + MLP(LN(x)); every Linear and LayerNorm without a bias."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(d_model, bias=False)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.ln_2 = nn.LayerNorm(d_model, bias=False)
        self.fc = nn.Linear(d_model, 4 * d_model, bias=False)
        self.fc_proj = nn.Linear(4 * d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)  # 3 x (B, T, d)
        q = q.view(b, t, self.num_heads, -1).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(b, t, self.num_heads, -1).transpose(1, 2)  # (B, H, T, hd)
        v = v.view(b, t, self.num_heads, -1).transpose(1, 2)  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, d)
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))  # (B, T, d)


class ReferenceGPT(nn.Module):
    """idx (B, T) -> logits (B, T, vocab). GPT-2's init: N(0, 0.02), residual projections / sqrt(2 n_layers)."""

    def __init__(self, vocab_size: int, context_length: int, d_model: int, n_layers: int, num_heads: int) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList([ReferenceBlock(d_model, num_heads) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model, bias=False)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        for name, param in self.named_parameters():
            if param.dim() == 2:
                residual = name.endswith("proj.weight")  # proj and fc_proj: write into the residual stream
                std = 0.02 / math.sqrt(2 * n_layers) if residual else 0.02
                nn.init.normal_(param, mean=0.0, std=std)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, vocab)
