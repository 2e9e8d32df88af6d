"""A GPT-2 style decoder whose attention layer comes from the registry (nanoGPT-sized, no Lightning here).

token embeddings (+ position embeddings) -> N pre-LayerNorm blocks (attention, 4x GELU MLP) -> LayerNorm -> head.
Dropout is set separately for embeddings (`emb_dropout`), residual branches (`resid_dropout`) and the
attention weights (the attention config's own `dropout`).

`position` picks how the model knows where a token is: `learned` (GPT-2's table of context_length rows, the
default) or `sinusoidal` (Vaswani et al.'s fixed table) are added to the token embeddings; `rope` and `alibi`
act inside every attention layer (attention/positions.py); `none` (NoPE) relies on the causal mask alone.
Only `learned` ties the model to context_length: the others run on longer sequences than they trained on.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .attention import build_attention, count_params
from .attention.positions import SinusoidalPositions

INITS = ("gpt2", "torch_default")  # model.init: GPT-2's std-0.02 scheme, or each module's PyTorch default


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int = 4):
        super().__init__()
        self.fc = nn.Linear(d_model, ratio * d_model)
        self.act = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.proj = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)); dropout on each residual branch."""

    def __init__(
        self,
        d_model: int,
        context_length: int,
        attention: dict[str, Any],
        resid_dropout: float,
        position: str = "learned",
        rope_base: float = 10000.0,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        knobs = {k: v for k, v in attention.items() if k != "name"}
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = build_attention(
            attention["name"], d_model, context_length, position=position, rope_base=rope_base, **knobs
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio)
        self.drop_resid = nn.Dropout(resid_dropout)

    def forward(self, x: Tensor, return_weights: bool = False, cache: dict | None = None):
        attended = self.attn(self.norm1(x), return_weights=return_weights, cache=cache)
        attended, weights = attended if return_weights else (attended, None)
        x = x + self.drop_resid(attended)
        x = x + self.drop_resid(self.mlp(self.norm2(x)))
        return x, weights


class KVCache:
    """Decoding state: one dict per layer (filled by the attention modules) and the tokens seen so far."""

    def __init__(self, n_layers: int):
        self.layers: list[dict] = [{} for _ in range(n_layers)]
        self.length = 0


class GPT(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        n_layers: int,
        attention: dict[str, Any],
        emb_dropout: float = 0.1,
        resid_dropout: float = 0.1,
        tie_weights: bool = True,
        position: str = "learned",
        rope_base: float = 10000.0,
        mlp_ratio: int = 4,
        init: str = "gpt2",
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init={init!r}: use one of {', '.join(INITS)}")
        if "name" not in attention:
            raise ValueError("the attention config needs a `name` (e.g. attention=multihead).")
        self.vocab_size, self.context_length, self.n_layers = vocab_size, context_length, n_layers
        self.position, self.init = position, init
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        if position == "learned":
            self.pos_emb = nn.Embedding(context_length, d_model)
        elif position == "sinusoidal":
            self.sinusoidal = SinusoidalPositions(d_model)
        self.drop_emb = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(
            [
                Block(d_model, context_length, attention, resid_dropout, position, rope_base, mlp_ratio)
                for _ in range(n_layers)
            ]
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.tok_emb.weight
        if init == "gpt2":
            self._gpt2_init(n_layers)
        # init == "torch_default": every module keeps what its own reset_parameters gave it at construction
        # (N(0, 1) embeddings, Kaiming-uniform linears, LayerNorm 1/0): how the book trains its chapter-4/5 GPT

    def _gpt2_init(self, n_layers: int) -> None:
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layers)
        residual_std = 0.02 / math.sqrt(2 * n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("out_proj.weight", "mlp.proj.weight")):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        # raw nn.Parameter projections (SelfAttentionV1) are uniform [0, 1) by the chapter's definition,
        # which saturates the softmax in a deep model: give them the same init as nn.Linear here
        for name, param in module.named_parameters(recurse=False):
            if name.startswith("W_") and param.dim() == 2:
                nn.init.normal_(param, mean=0.0, std=0.02)

    @property
    def max_length(self) -> int | None:
        """The longest sequence the model can take: context_length with learned positions, else no limit."""
        return self.context_length if self.position == "learned" else None

    def _embed(self, idx: Tensor, start: int) -> Tensor:
        t = idx.shape[1]
        x = self.tok_emb(idx)  # (B, T, d_model)
        if self.position == "learned":
            if start + t > self.context_length:
                raise ValueError(
                    f"{start + t} positions exceed model.context_length={self.context_length}, the size of the "
                    "learned position table: crop the input (generation does this for you), train with a larger "
                    "context_length, or use a scheme without a table (model.position=rope, alibi or none)."
                )
            x = x + self.pos_emb(torch.arange(start, start + t, device=idx.device))
        elif self.position == "sinusoidal":
            x = x + self.sinusoidal(start, t).to(x.dtype)
        return self.drop_emb(x)

    def forward(self, idx: Tensor, return_weights: bool = False, cache: KVCache | None = None):
        """idx (B, T) -> logits (B, T, vocab); with `return_weights`, also a list of (B, H, T, Tk) per layer."""
        x = self._embed(idx, 0 if cache is None else cache.length)  # (B, T, d_model)
        t = idx.shape[1]
        all_weights = []
        for i, block in enumerate(self.blocks):
            x, weights = block(x, return_weights, None if cache is None else cache.layers[i])
            all_weights.append(weights)
        if cache is not None:
            cache.length += t
        logits = self.head(self.final_norm(x))  # (B, T, vocab)
        return (logits, all_weights) if return_weights else logits

    def num_params(self) -> dict[str, int]:
        """Total (shared weights counted once), attention-only, and non-embedding (no token/position tables)."""
        total = count_params(self)
        attention = sum(count_params(block.attn) for block in self.blocks)
        embeddings = self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.position == "learned" else 0)
        return {"total": total, "attention": attention, "non_embedding": total - embeddings}

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return sum(block.attn.kv_cache_bytes_per_token(bytes_per_element) for block in self.blocks)
