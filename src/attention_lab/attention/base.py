"""Base of the modern variants: query heads, (possibly fewer) key/value heads, a kernel, an output projection.

A subclass changes one thing: how Q/K/V are projected (fused, latent), which keys a query may see (sliding
window) or how the context is computed (SDPA, linear). The explicit formula behind `return_weights` is
shared, so the fast kernels never materialise (B, H, T, T) during training.
"""

from __future__ import annotations

from torch import Tensor, nn

from .functional import (
    AttentionConfigError,
    attention_weights,
    causal_allowed,
    check_divisible,
    divisors,
    extend_cache,
    merge_heads,
    sdpa_attention,
    slice_allowed,
    split_heads,
)


class HeadedAttention(nn.Module):
    """Causal multi-head attention with `num_kv_heads` K/V heads shared by groups of query heads.

    Shapes: x (B, T, d_model) -> (B, T, d_model); q (B, H, T, hd); k, v (B, H_kv, T, hd).
    """

    kernel = "explicit"  # or "sdpa": F.scaled_dot_product_attention in the training path

    def __init__(
        self,
        d_model: int,
        context_length: int,
        num_heads: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        num_kv_heads: int | None = None,
    ):
        super().__init__()
        self.head_dim = check_divisible(d_model, num_heads, "d_model")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise AttentionConfigError(
                f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}: set "
                f"attention.num_kv_heads to a divisor of {num_heads} (one of {divisors(num_heads)})."
            )
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.dropout_p = dropout
        self._init_projections(d_model, qkv_bias)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("allowed", self._build_mask(context_length), persistent=False)  # (T, T)

    # --- the three things a variant may change -------------------------------------------------------
    def _init_projections(self, d_model: int, qkv_bias: bool) -> None:
        kv_width = self.num_kv_heads * self.head_dim
        self.W_query = nn.Linear(d_model, d_model, bias=qkv_bias)
        self.W_key = nn.Linear(d_model, kv_width, bias=qkv_bias)
        self.W_value = nn.Linear(d_model, kv_width, bias=qkv_bias)

    def _project(self, x: Tensor, cache: dict | None) -> tuple[Tensor, Tensor, Tensor]:
        q = split_heads(self.W_query(x), self.num_heads)
        k, v = extend_cache(
            cache,
            2,
            k=split_heads(self.W_key(x), self.num_kv_heads),
            v=split_heads(self.W_value(x), self.num_kv_heads),
        )
        return q, k, v

    def _build_mask(self, context_length: int) -> Tensor:
        return causal_allowed(context_length)

    def _context(self, q: Tensor, k: Tensor, v: Tensor, cache: dict | None) -> Tensor:
        """Training path: the explicit formula, or SDPA's fused kernel when the class sets kernel = "sdpa"."""
        if self.kernel == "explicit":
            return self._explicit(q, k, v)[0]
        p = self.dropout_p if self.training else 0.0
        grouped = self.num_kv_heads != self.num_heads
        return sdpa_attention(q, k, v, self._sdpa_mask(q.shape[2], k.shape[2]), p, enable_gqa=grouped)

    def _sdpa_mask(self, t_q: int, t_k: int) -> Tensor | None:
        # None lets SDPA use is_causal; that aligns top-left, wrong for t_q < t_k (decoding with a cache).
        return None if t_q == t_k else self._mask(t_q, t_k)

    # --- shared --------------------------------------------------------------------------------------
    def _expand_kv(self, t: Tensor) -> Tensor:
        """(B, H_kv, T, hd) -> (B, H, T, hd); query head h reads K/V head h // (H / H_kv)."""
        group = self.num_heads // self.num_kv_heads
        return t if group == 1 else t.repeat_interleave(group, dim=1)

    def _mask(self, t_q: int, t_k: int) -> Tensor:
        return slice_allowed(self.allowed, t_q, t_k)  # (Tq, Tk) bool

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        weights = attention_weights(q, self._expand_kv(k), self._mask(q.shape[2], k.shape[2]))  # (B, H, Tq, Tk)
        return self.dropout(weights) @ self._expand_kv(v), weights

    def forward(self, x: Tensor, return_weights: bool = False, cache: dict | None = None):
        q, k, v = self._project(x, cache)
        if return_weights:
            context, weights = self._explicit(q, k, v)
        else:
            context = self._context(q, k, v, cache)  # (B, H, T, hd)
        out = self.out_proj(merge_heads(context))  # (B, T, d_model)
        return (out, weights) if return_weights else out

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        """Bytes one token adds to this layer's KV cache: K and V for each KV head."""
        return 2 * self.num_kv_heads * self.head_dim * bytes_per_element
