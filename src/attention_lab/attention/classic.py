"""The chapter's sequence, step by step, with its exact signatures and parameter creation order.

simplified (no weights) -> SelfAttentionV1 (nn.Parameter Q/K/V) -> SelfAttentionV2 (nn.Linear Q/K/V)
-> CausalAttention (+ mask, dropout) -> MultiHeadAttentionWrapper (stacked heads)
-> MultiHeadAttention (one module, heads by view/transpose, output projection).

Under the chapter's seeds these reproduce its printed numbers (see tests/test_classic.py). Every module
also takes an unbatched (T, d_in) input, `return_weights=True` (weights (B, H, T, T), H = 1 for single
head) and an optional per-layer `cache` dict for incremental decoding. A position scheme that acts inside
attention (rope, alibi) is attached after construction with `use_positions`, so the signatures stay the book's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import (
    AttentionConfigError,
    attention_weights,
    causal_allowed,
    check_divisible,
    check_softcap,
    extend_cache,
    matmul_flops,
    merge_heads,
    softmax_attention_flops,
    split_heads,
)
from .knobs import apply_qk_norm, qk_norms, sink_parameter
from .positions import ALiBi, NoPositions, alibi_slopes, build_positions, take_positions


class _ChapterAttention(nn.Module):
    """Shared plumbing: unbatched inputs, the optional causal mask, position schemes, `return_weights`."""

    def __init__(self) -> None:
        super().__init__()
        # an instance attribute (a class-level module would shadow the one use_positions registers)
        self.position: NoPositions = NoPositions()  # rope / alibi once `use_positions` attached one
        self.logit_softcap = 0.0  # MultiHeadAttention's optional settings (knobs.py); the others keep them off
        self.sink_logit: nn.Parameter | None = None

    def _init_mask(self, causal: bool, context_length: int | None) -> None:
        self.causal = causal
        if causal and context_length is None:
            raise ValueError("causal=True needs context_length (the longest sequence the model is trained on).")
        self.context_length = context_length  # the mask itself is built per length: it limits nothing

    def _allowed(self, t_q: int, t_k: int, device: torch.device) -> Tensor | None:
        return causal_allowed(t_q, t_k, device=device) if self.causal else None  # (Tq, Tk) bool

    def _weights(self, queries: Tensor, keys: Tensor, scale: float | None = None) -> Tensor:
        """Softmax weights (B, Tq, Tk) of new queries over all keys, with the mask and any position bias."""
        t_q, t_k, device = queries.shape[-2], keys.shape[-2], queries.device
        bias = self.position.bias(t_q, t_k, device)  # (1, Tq, Tk) for one head, or None
        allowed = self._allowed(t_q, t_k, device)
        return attention_weights(queries, keys, allowed, scale, bias, self.logit_softcap, self.sink_logit)

    def _head_shape(self) -> tuple[int, int]:
        """(heads, width of one head): what rope rotates and how many alibi slopes."""
        return 1, self.W_key.shape[1] if isinstance(self.W_key, nn.Parameter) else self.W_key.out_features

    def use_positions(self, scheme: str, rope_base: float = 10000.0) -> None:
        """Attach what `scheme` does inside attention (rope: rotate q and k; alibi: bias the scores)."""
        self.position = build_positions(scheme, *self._head_shape(), rope_base)

    def _rotated(self, queries: Tensor, keys: Tensor, cache: dict | None) -> tuple[Tensor, Tensor]:
        """The new tokens' queries and keys at their absolute positions (identity unless rope)."""
        start = take_positions(cache, queries.shape[-2])
        return self.position.rotate(queries, keys, start=start)

    def forward(self, x: Tensor, return_weights: bool = False, cache: dict | None = None):
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        out, weights = self._attend(x, cache)  # (B, T, d_out), (B, H, T, T)
        if unbatched:
            out, weights = out.squeeze(0), weights.squeeze(0)
        return (out, weights) if return_weights else out

    def _attend(self, x: Tensor, cache: dict | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward_flops(self, t: int) -> dict[str, int]:
        """Matmul FLOPs of one forward over t tokens (see HeadedAttention.forward_flops): three d_in x d_out
        projections, no output projection, and one head's full (T, T) scores and context, d_out wide."""
        w = self.W_key
        d_in, d_out = (w.shape[0], w.shape[1]) if isinstance(w, nn.Parameter) else (w.in_features, w.out_features)
        mixing = softmax_attention_flops(t, t, 1, d_out, d_out)
        return {"projections": matmul_flops(t, d_in, 3 * d_out), "mixing": mixing}


def simplified_self_attention(x: Tensor) -> Tensor:
    """Context vectors with no trainable weights: softmax(x x^T) x, unscaled, as the chapter defines it."""
    weights = torch.softmax(x @ x.transpose(-2, -1), dim=-1)  # (..., T, T)
    return weights @ x


class SimplifiedSelfAttention(_ChapterAttention):
    """`simplified_self_attention` as a module; `causal=True` adds the mask (the GPT's default)."""

    def __init__(self, causal: bool = False, context_length: int | None = None, d_in: int | None = None):
        super().__init__()
        self.d_in = d_in  # only needed to report KV-cache size: the module has no weights to infer it from
        self._init_mask(causal, context_length)

    def _head_shape(self) -> tuple[int, int]:
        if self.d_in is None:
            raise AttentionConfigError("build SimplifiedSelfAttention(d_in=...) to give it a position scheme.")
        return 1, self.d_in

    def _attend(self, x, cache):
        start = take_positions(cache, x.shape[1])
        (inputs,) = extend_cache(cache, 1, x=x)  # the cache holds the inputs: they are keys and values
        # rope rotates queries and keys, not values: the cached inputs are rotated afresh at their positions
        (queries,) = self.position.rotate(x, start=start)
        (keys,) = self.position.rotate(inputs, start=start + x.shape[1] - inputs.shape[1])
        weights = self._weights(queries, keys, scale=1.0)
        return weights @ inputs, weights.unsqueeze(1)

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        if self.d_in is None:
            raise ValueError("build SimplifiedSelfAttention(d_in=...) to report its KV-cache size.")
        return self.d_in * bytes_per_element  # the inputs are cached once: they serve as keys and values

    def forward_flops(self, t: int) -> dict[str, int]:
        """No projections; x x^T and weights @ x over the d_in-wide inputs, one head."""
        _, width = self._head_shape()
        return {"projections": 0, "mixing": softmax_attention_flops(t, t, 1, width, width)}


class SelfAttentionV1(_ChapterAttention):
    """Trainable Q/K/V as raw `nn.Parameter(torch.rand(d_in, d_out))`; scores scaled by sqrt(d_out)."""

    def __init__(self, d_in: int, d_out: int, *, causal: bool = False, context_length: int | None = None):
        super().__init__()
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))
        self._init_mask(causal, context_length)

    def _attend(self, x, cache):
        queries, keys = self._rotated(x @ self.W_query, x @ self.W_key, cache)  # (B, T, d_out)
        keys, values = extend_cache(cache, 1, k=keys, v=x @ self.W_value)
        weights = self._weights(queries, keys)
        return weights @ values, weights.unsqueeze(1)

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return 2 * self.W_key.shape[1] * bytes_per_element


class SelfAttentionV2(_ChapterAttention):
    """V1 with `nn.Linear` projections (better init, optional bias), created in the same order."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        qkv_bias: bool = False,
        *,
        causal: bool = False,
        context_length: int | None = None,
    ):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self._init_mask(causal, context_length)

    def _attend(self, x, cache):
        queries, keys = self._rotated(self.W_query(x), self.W_key(x), cache)  # (B, T, d_out)
        keys, values = extend_cache(cache, 1, k=keys, v=self.W_value(x))
        weights = self._weights(queries, keys)
        return weights @ values, weights.unsqueeze(1)

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return 2 * self.W_key.out_features * bytes_per_element


class CausalAttention(SelfAttentionV2):
    """V2 + causal mask + dropout on the weights after softmax. No output projection."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False):
        super().__init__(d_in, d_out, qkv_bias, causal=True, context_length=context_length)
        self.d_out = d_out
        self.dropout = nn.Dropout(dropout)

    def _attend(self, x, cache):
        queries, keys = self._rotated(self.W_query(x), self.W_key(x), cache)  # (B, T, d_out)
        keys, values = extend_cache(cache, 1, k=keys, v=self.W_value(x))
        weights = self._weights(queries, keys)  # (B, T, T)
        return self.dropout(weights) @ values, weights.unsqueeze(1)


class MultiHeadAttentionWrapper(_ChapterAttention):
    """`num_heads` independent CausalAttention heads, outputs concatenated (width num_heads * d_out)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ):
        super().__init__()
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, d_out, context_length, dropout, qkv_bias) for _ in range(num_heads)]
        )

    def use_positions(self, scheme: str, rope_base: float = 10000.0) -> None:
        """Each head is its own CausalAttention: rope per head, alibi with head i's slope of the whole set."""
        slopes = alibi_slopes(len(self.heads))
        for i, head in enumerate(self.heads):
            width = head.W_key.out_features
            head.position = ALiBi([slopes[i]]) if scheme == "alibi" else build_positions(scheme, 1, width, rope_base)

    def _attend(self, x, cache):
        n = len(self.heads)
        caches = [None] * n if cache is None else [cache.setdefault(f"head{i}", {}) for i in range(n)]
        outs = [head._attend(x, head_cache) for head, head_cache in zip(self.heads, caches, strict=True)]
        return torch.cat([o for o, _ in outs], dim=-1), torch.cat([w for _, w in outs], dim=1)

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return sum(h.kv_cache_bytes_per_token(bytes_per_element) for h in self.heads)

    def forward_flops(self, t: int) -> dict[str, int]:
        """The heads' sum: each projects the full input on its own (no output projection)."""
        counts = [head.forward_flops(t) for head in self.heads]
        return {key: sum(c[key] for c in counts) for key in counts[0]}


class MultiHeadAttention(_ChapterAttention):
    """One module for all heads: project once, split by view/transpose, attend, merge, project out.

    Keyword-only, off by default (the chapter's signature and numbers are unchanged): `qk_norm` (RMSNorm of q
    and k per head, before rope), `logit_softcap` (c * tanh(s / c) on the scaled scores, before the bias and
    mask) and `sinks` (a learned per-head logit in every softmax row; the weights then sum to 1 - sink mass).
    Their parameters are created after the chapter's, so its seeds still give its numbers. See knobs.py.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
        *,
        qk_norm: bool = False,
        logit_softcap: float = 0.0,
        sinks: bool = False,
    ):
        super().__init__()
        self.head_dim = check_divisible(d_out, num_heads)
        self.d_out, self.num_heads = d_out, num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self._init_mask(True, context_length)
        self.q_norm, self.k_norm = qk_norms(qk_norm, self.head_dim)  # (None, None) when off
        self.logit_softcap = check_softcap(logit_softcap)
        self.sink_logit = sink_parameter(sinks, num_heads)  # (H,) or None
        if sinks:
            self.weights_sum_to_one = False  # rows sum to 1 - sink mass

    def _attend(self, x, cache):
        queries = split_heads(self.W_query(x), self.num_heads)  # (B, H, T, hd)
        keys = split_heads(self.W_key(x), self.num_heads)
        queries, keys = self._rotated(*apply_qk_norm(self.q_norm, self.k_norm, queries, keys), cache)
        keys, values = extend_cache(cache, 2, k=keys, v=split_heads(self.W_value(x), self.num_heads))
        weights = self._weights(queries, keys)  # (B, H, T, T)
        context = merge_heads(self.dropout(weights) @ values)  # (B, T, d_out)
        return self.out_proj(context), weights

    def _head_shape(self) -> tuple[int, int]:
        return self.num_heads, self.head_dim

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return 2 * self.d_out * bytes_per_element

    def forward_flops(self, t: int) -> dict[str, int]:
        """Q, K, V d_in x d_out and out_proj d_out x d_out; every head's full (T, T) scores and context."""
        d_in = self.W_query.in_features
        projections = matmul_flops(t, d_in, 3 * self.d_out) + matmul_flops(t, self.d_out, self.d_out)
        mixing = softmax_attention_flops(t, t, self.num_heads, self.head_dim, self.head_dim)
        return {"projections": projections, "mixing": mixing}
