"""A GPT-2 style decoder whose attention layer comes from the registry (nanoGPT-sized, no Lightning here).

token embeddings (+ position embeddings) -> N pre-LayerNorm blocks (attention, GELU MLP) -> LayerNorm -> head.
Dropout is set separately for embeddings (`emb_dropout`), residual branches (`resid_dropout`) and the
attention weights (the attention config's own `dropout`).

`position` picks how the model knows where a token is: `learned` (GPT-2's table of context_length rows, the
default) or `sinusoidal` (Vaswani et al.'s fixed table) are added to the token embeddings; `rope` and `alibi`
act inside every attention layer (attention/positions.py); `none` (NoPE) relies on the causal mask alone.
Only `learned` ties the model to context_length: the others run on longer sequences than they trained on.

`layers` (attention/patterns.py) gives each layer its own variant, e.g. `sliding_window*3+multihead` for a
local/global hybrid; None uses `attention` in every layer. `bias=False` removes the bias of every nn.Linear and
nn.LayerNorm (nanoGPT's switch; attention.qkv_bias must then be false): fewer parameters and less work per step.

`init_seed` makes the initial weights common random numbers: every parameter is drawn from its own generator,
seeded by (init_seed, the parameter's name), so the parts two attention variants share (embeddings, norms, MLPs,
head) start bit-identical whatever attention was built next to them, and building the model leaves the global
random stream (dropout) where it was. Without it, the weights come from the global stream in construction order.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from .attention import build_attention, count_params
from .attention.patterns import Pattern, layer_settings
from .attention.positions import SinusoidalPositions

INITS = ("gpt2", "torch_default")  # model.init: GPT-2's std-0.02 scheme, or each module's PyTorch default
RESIDUAL_PROJECTIONS = ("out_proj.weight", "mlp.proj.weight")  # write into the residual stream: GPT-2 scales them


def name_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed for one parameter (or module) of a model seeded with `seed`.

    A stable hash (hashlib, not Python's per-process salted `hash()`), so the same name gets the same numbers in
    every process, and a function of the name alone, so nothing built before it can shift its numbers."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def drop_biases(module: nn.Module) -> None:
    """Remove the bias of every nn.Linear and nn.LayerNorm inside `module` (both run without one)."""
    for child in module.modules():
        if isinstance(child, (nn.Linear, nn.LayerNorm)) and child.bias is not None:
            child.bias = None


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden)
        self.act = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.proj = nn.Linear(hidden, d_model)

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
        mlp_hidden: int | None = None,  # None: 4 x d_model
        depth: int = 0,  # this block's index: differential attention's lambda_init depends on it
    ):
        super().__init__()
        knobs = {k: v for k, v in attention.items() if k != "name"}
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = build_attention(
            attention["name"], d_model, context_length, position=position, rope_base=rope_base, **knobs
        )
        if hasattr(self.attn, "use_depth"):
            self.attn.use_depth(depth)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, 4 * d_model if mlp_hidden is None else mlp_hidden)
        self.drop_resid = nn.Dropout(resid_dropout)

    def forward(self, x: Tensor, return_weights: bool = False, cache: dict | None = None):
        attended = self.attn(self.norm1(x), return_weights=return_weights, cache=cache)
        attended, weights = attended if return_weights else (attended, None)
        x = x + self.drop_resid(attended)
        x = x + self.drop_resid(self.mlp(self.norm2(x)))
        return x, weights


def _gpt2_kind(module: nn.Module) -> bool:
    """Modules whose weights GPT-2's init draws (LayerNorm keeps its 1/0 through reset_parameters)."""
    return isinstance(module, (nn.Linear, nn.Embedding))


def _raw_projection(name: str, param: Tensor) -> bool:
    """A raw nn.Parameter projection matrix (SelfAttentionV1's W_query, W_key, W_value)."""
    return name.rsplit(".", 1)[-1].startswith("W_") and param.dim() == 2


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
        mlp_hidden: int | None = None,
        init: str = "gpt2",
        init_seed: int | None = None,
        layers: Pattern = None,
        bias: bool = True,
    ):
        """mlp_hidden: the MLP's hidden width (None: mlp_ratio x d_model). init_seed: seed every parameter from
        (init_seed, its name), see the module docstring; None draws from the global random stream. layers: a
        per-layer attention pattern (attention/patterns.py); None: `attention` everywhere. bias: False drops
        every Linear and LayerNorm bias."""
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init={init!r}: use one of {', '.join(INITS)}")
        if "name" not in attention:
            raise ValueError("the attention config needs a `name` (e.g. attention=multihead).")
        self.vocab_size, self.context_length, self.n_layers = vocab_size, context_length, n_layers
        self.position, self.init = position, init
        if not bias and attention.get("qkv_bias"):
            raise ValueError("model.bias=false removes every bias: set attention.qkv_bias=false with it.")
        hidden = mlp_ratio * d_model if mlp_hidden is None else mlp_hidden
        per_layer = layer_settings(attention, layers, n_layers)  # (n_layers,) attention configs
        self.layers = layers
        # seeded: construction draws from a fork of the global stream, so the caller's stream (dropout) is unmoved
        with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
            self.tok_emb = nn.Embedding(vocab_size, d_model)
            if position == "learned":
                self.pos_emb = nn.Embedding(context_length, d_model)
            elif position == "sinusoidal":
                self.sinusoidal = SinusoidalPositions(d_model)
            self.drop_emb = nn.Dropout(emb_dropout)
            self.blocks = nn.ModuleList(
                [
                    Block(d_model, context_length, layer, resid_dropout, position, rope_base, hidden, depth)
                    for depth, layer in enumerate(per_layer)
                ]
            )
            self.final_norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab_size, bias=False)
            if not bias:
                drop_biases(self)
            if tie_weights:
                self.head.weight = self.tok_emb.weight
            if init_seed is not None:
                self._seeded_init(init_seed)
            elif init == "gpt2":
                self._gpt2_init(n_layers)
        # init == "torch_default": every module keeps what its own reset_parameters gave it at construction
        # (N(0, 1) embeddings, Kaiming-uniform linears, LayerNorm 1/0): how the book trains its chapter-4/5 GPT

    def _gpt2_init(self, n_layers: int) -> None:
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layers)
        residual_std = 0.02 / math.sqrt(2 * n_layers)
        for name, param in self.named_parameters():
            if name.endswith(RESIDUAL_PROJECTIONS):
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

    @torch.no_grad()
    def _seeded_init(self, seed: int) -> None:
        """The same distributions as the unseeded inits, each parameter drawn from a generator of its own name.

        torch_default re-runs each module's own reset_parameters under its module's seed (PyTorch's statistics,
        exactly); gpt2 draws N(0, 0.02) weights (residual projections scaled), zero biases, LayerNorm 1/0. A
        tied weight is initialised once, by the module that comes first (the token embedding, not the head).
        Runs inside the constructor's fork of the global stream, so its `manual_seed` calls leak nowhere."""
        residual_std = 0.02 / math.sqrt(2 * self.n_layers)
        seen: set[int] = set()
        for prefix, module in self.named_modules():
            own = [(f"{prefix}.{n}" if prefix else n, p) for n, p in module.named_parameters(recurse=False)]
            own = [(name, p) for name, p in own if id(p) not in seen]
            if not own:  # no parameters, or only one tied to an earlier module's (the tied head)
                continue
            seen.update(id(p) for _, p in own)
            if hasattr(module, "reset_parameters") and not (self.init == "gpt2" and _gpt2_kind(module)):
                torch.manual_seed(name_seed(seed, prefix))  # PyTorch's own init, from this module's seed
                module.reset_parameters()
                continue
            for name, param in own:
                generator = torch.Generator(param.device).manual_seed(name_seed(seed, name))
                if isinstance(module, nn.Linear) and name.endswith(".bias"):
                    param.zero_()
                elif self.init == "gpt2" and (_gpt2_kind(module) or _raw_projection(name, param)):
                    std = residual_std if name.endswith(RESIDUAL_PROJECTIONS) else 0.02
                    param.normal_(0.0, std, generator=generator)
                elif _raw_projection(name, param):  # torch_default: the chapter's torch.rand, uniform [0, 1)
                    param.uniform_(0.0, 1.0, generator=generator)
                # anything else has no random init (SinusoidalPositions' scale): kept as constructed

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
