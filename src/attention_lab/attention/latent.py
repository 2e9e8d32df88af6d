"""`latent`: multi-head latent attention (DeepSeek-V2, 2024). K and V are expanded from a shared `latent_dim`
vector per token, and only that latent is cached: latent_dim numbers per token instead of 2 * d_model.

RoPE cannot rotate keys that are re-expanded from the cache at every step, so with `model.position=rope` this
layer does what MLA does: a *decoupled* rotary part. Each query head gets `rope_dim` extra features
(W_query_rope) and all heads share one rotary key of `rope_dim` features (W_key_rope); both are rotated and
concatenated to the content parts, so scores are (q_c . k_c + q_r . k_r) / sqrt(head_dim + rope_dim). The cache
then holds the latent and the rotated shared key: latent_dim + rope_dim numbers per token. rope_dim is
head_dim / 2 (rounded down to even), DeepSeek-V2's ratio. The other schemes need no extra parameters.

`qk_norm` normalises the content parts only: q_c per query head and k_c per head after the up-projection (over
head_dim), before they are concatenated with the rotary parts, which stay as they are (one shared rotary key of
rope_dim features has no head to normalise per, and its norm is what rope's relative angle acts on). K is
re-expanded from the cached latent at every step and normalised afresh, so the cache is unchanged. The soft cap
and sinks act on the scores, as in every softmax variant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import HeadedAttention
from .functional import AttentionConfigError, extend_cache, matmul_flops, softmax_attention_flops, split_heads
from .knobs import apply_qk_norm
from .positions import Rotary, take_positions


class LatentAttention(HeadedAttention):
    kernel = "sdpa"
    rope_dim = 0  # width of the decoupled rotary part (0: no rope)

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

    def use_positions(self, scheme: str, rope_base: float = 10000.0) -> None:
        if scheme != "rope":
            return super().use_positions(scheme, rope_base)
        self.rope_dim = max(2, self.head_dim // 2 // 2 * 2)
        self.W_query_rope = nn.Linear(self.d_model, self.num_heads * self.rope_dim, bias=False)
        self.W_key_rope = nn.Linear(self.d_model, self.rope_dim, bias=False)  # one rotary key for all heads
        self.position = Rotary(self.rope_dim, rope_base)

    def _project(self, x: Tensor, cache: dict | None) -> tuple[Tensor, Tensor, Tensor]:
        start = take_positions(cache, x.shape[1])
        q = split_heads(self.W_query(x), self.num_heads)  # (B, H, T, hd)
        if not self.rope_dim:
            (latent,) = extend_cache(cache, 1, latent=self.W_down_kv(x))  # (B, Tk, latent_dim)
            k = split_heads(self.W_up_key(latent), self.num_heads)
            v = split_heads(self.W_up_value(latent), self.num_heads)
            return (*apply_qk_norm(self.q_norm, self.k_norm, q, k), v)
        q_rope = split_heads(self.W_query_rope(x), self.num_heads)  # (B, H, T, rope_dim)
        q_rope, k_rope = self.position.rotate(q_rope, self.W_key_rope(x), start=start)  # k_rope (B, T, rope_dim)
        latent, k_rope = extend_cache(cache, 1, latent=self.W_down_kv(x), k_rope=k_rope)  # (B, Tk, .)
        k = split_heads(self.W_up_key(latent), self.num_heads)  # (B, H, Tk, hd)
        q, k = apply_qk_norm(self.q_norm, self.k_norm, q, k)  # the content parts only
        shared = k_rope[:, None].expand(-1, self.num_heads, -1, -1)  # (B, H, Tk, rope_dim)
        v = split_heads(self.W_up_value(latent), self.num_heads)
        return torch.cat((q, q_rope), dim=-1), torch.cat((k, shared), dim=-1), v

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return (self.latent_dim + self.rope_dim) * bytes_per_element

    def forward_flops(self, t: int) -> dict[str, int]:
        """Q and out_proj are d x d; the latent costs d x latent_dim down and 2 x latent_dim x d up (K and V are
        re-expanded for every key: in training, once per token). Decoupled rope adds d x (H * rope_dim) for the
        rotary queries and d x rope_dim for the one shared rotary key, and widens each head's scores to
        head_dim + rope_dim; the context stays head_dim wide. Sinks under SDPA score one zero key more."""
        d, latent, rope = self.d_model, self.latent_dim, self.rope_dim
        projections = matmul_flops(t, d, 2 * d + latent + (self.num_heads + 1) * rope) + matmul_flops(t, latent, 2 * d)
        mixing = softmax_attention_flops(t, self._keys_scored(t), self.num_heads, self.head_dim + rope, self.head_dim)
        return {"projections": projections, "mixing": mixing}
