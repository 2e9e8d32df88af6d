"""`sliding_window`: causal attention restricted to a band (Longformer / Mistral style local attention).

Convention: query i sees the `window` keys i - window + 1 .. i (itself included). `window=1` attends only
to itself; `window >= T` is ordinary causal attention. The KV cache keeps only the last window - 1 tokens.
"""

from __future__ import annotations

from torch import Tensor

from .base import HeadedAttention
from .functional import AttentionConfigError, causal_allowed


class SlidingWindowAttention(HeadedAttention):
    kernel = "sdpa"

    def __init__(self, d_model: int, context_length: int, num_heads: int, window: int, **kwargs):
        if not isinstance(window, int) or window < 1:
            raise AttentionConfigError(
                f"window={window} must be an integer >= 1 (the number of keys each query sees, itself "
                f"included): set attention.window to e.g. 32, or to >= {context_length} for full causal."
            )
        self.window = window
        super().__init__(d_model, context_length, num_heads, **kwargs)

    def _build_mask(self, context_length: int) -> Tensor:
        return causal_allowed(context_length, window=self.window)  # (T, T) band, built once

    def _project(self, x: Tensor, cache: dict | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super()._project(x, cache)
        if cache is not None:  # the band is translation-invariant, so older keys can simply be dropped
            keep = self.window - 1
            cache["k"], cache["v"] = (t[:, :, max(t.shape[2] - keep, 0) :] for t in (k, v))
        return q, k, v

    def _sdpa_mask(self, t_q: int, t_k: int) -> Tensor:
        return self._mask(t_q, t_k)  # band and causality folded into one boolean mask, always
