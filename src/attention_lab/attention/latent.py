"""`latent`: multi-head latent attention (DeepSeek-V2, 2024), without the decoupled RoPE (positions here
are learned embeddings). K and V are expanded from a shared `latent_dim` vector per token, and only that
latent is cached: latent_dim numbers per token instead of 2 * d_model.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import HeadedAttention
from .functional import AttentionConfigError, extend_cache, split_heads


class LatentAttention(HeadedAttention):
    kernel = "sdpa"

    def __init__(self, d_model: int, context_length: int, num_heads: int, latent_dim: int, **kwargs):
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise AttentionConfigError(
                f"latent_dim={latent_dim} must be an integer >= 1: set attention.latent_dim, e.g. to "
                f"d_model / 4 = {max(1, d_model // 4)} (smaller than 2 * d_model to save cache)."
            )
        self.latent_dim = latent_dim
        super().__init__(d_model, context_length, num_heads, **kwargs)

    def _init_projections(self, d_model: int, qkv_bias: bool) -> None:
        self.W_query = nn.Linear(d_model, d_model, bias=qkv_bias)
        self.W_down_kv = nn.Linear(d_model, self.latent_dim, bias=qkv_bias)  # the cached bottleneck
        self.W_up_key = nn.Linear(self.latent_dim, d_model, bias=False)
        self.W_up_value = nn.Linear(self.latent_dim, d_model, bias=False)

    def _project(self, x: Tensor, cache: dict | None) -> tuple[Tensor, Tensor, Tensor]:
        q = split_heads(self.W_query(x), self.num_heads)
        (latent,) = extend_cache(cache, 1, latent=self.W_down_kv(x))  # (B, Tk, latent_dim)
        k = split_heads(self.W_up_key(latent), self.num_heads)
        v = split_heads(self.W_up_value(latent), self.num_heads)
        return q, k, v

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return self.latent_dim * bytes_per_element
