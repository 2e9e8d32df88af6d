"""`sliding_window`: causal attention restricted to a band (Longformer / Mistral style local attention).

Convention: query i sees the `window` keys i - window + 1 .. i (itself included). `window=1` attends only
to itself; `window >= T` is ordinary causal attention. The KV cache keeps only the last window - 1 tokens,
so with a relative position scheme (rope, alibi, none) decoding goes on indefinitely in bounded memory.
"""

from __future__ import annotations

from torch import Tensor

from .base import HeadedAttention
from .functional import AttentionConfigError


class SlidingWindowAttention(HeadedAttention):
    kernel = "sdpa"

    def __init__(self, d_model: int, context_length: int, num_heads: int, window: int, **kwargs):
        if not isinstance(window, int) or window < 1:
            raise AttentionConfigError(
                f"window={window} must be an integer >= 1 (the number of keys each query sees, itself "
                f"included): set attention.window to e.g. 32, or to >= {context_length} for full causal."
            )
        self.window = window  # read by _mask: band and causality in one boolean mask, built per length
        super().__init__(d_model, context_length, num_heads, **kwargs)

    def _remember(self, cache: dict | None, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k, v = super()._remember(cache, k, v)
        if cache is not None:  # the band is translation-invariant, so older keys can simply be dropped
            keep = self.window - 1
            cache["k"], cache["v"] = (t[:, :, max(t.shape[2] - keep, 0) :] for t in (k, v))
        return k, v
