"""`gqa`: groups of query heads share one K/V head (Ainslie et al., 2023); `mqa`: a single K/V head
(Shazeer, 2019). `num_kv_heads == num_heads` is ordinary multi-head attention."""

from __future__ import annotations

from .base import HeadedAttention


class GroupedQueryAttention(HeadedAttention):
    """Fewer K/V heads shrink the KV cache by num_heads / num_kv_heads; the kernel is SDPA with enable_gqa."""

    kernel = "sdpa"
