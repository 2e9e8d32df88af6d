"""`linear`: causal linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

softmax(q k^T) is replaced by phi(q) phi(k)^T with phi(x) = elu(x) + 1 > 0, so the causal context is
  out_t = phi(q_t) S_t / (phi(q_t) . z_t),   S_t = sum_{s<=t} phi(k_s) v_s^T,   z_t = sum_{s<=t} phi(k_s)
computed in chunks of CHUNK tokens: a small causal (C, C) product inside each chunk plus the prefix sum of
the earlier chunks' (S, z). Memory is O(T * C + T / C * hd^2), linear in T, with no (T, T) matrix; a
per-token prefix sum would hold a (T, hd, hd) state and be ~10x slower at T = 256. The KV cache is the
running (S, z). Dropout has no weights to act on in this form, so it is applied to the context before
`out_proj`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import HeadedAttention

EPS = 1e-6
CHUNK = 64


def feature_map(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


class LinearAttention(HeadedAttention):
    kernel = "linear"  # chunked prefix sums of phi(q) phi(k)^T: no (T, T) matrix in training

    def forward(self, x: Tensor, return_weights: bool = False, cache: dict | None = None):
        if return_weights and cache is not None:
            raise ValueError(
                "linear attention caches running sums, not keys, so return_weights=True is not available while "
                "decoding with a cache: run the full sequence without a cache to get its weights."
            )
        return super().forward(x, return_weights, cache)

    def _project(self, x: Tensor, cache: dict | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super()._project(x, None)  # the cache holds running sums, not keys
        return feature_map(q), feature_map(k), v

    def _context(self, q: Tensor, k: Tensor, v: Tensor, cache: dict | None) -> Tensor:
        b, h, t, d = q.shape
        c = min(CHUNK, t)
        pad = -t % c  # zero keys/values add nothing to the sums; padded queries are cut off below
        q, k, v = (F.pad(z, (0, 0, 0, pad)).view(b, h, -1, c, d) for z in (q, k, v))  # (B, H, N, C, hd)
        chunk_state = k.transpose(-2, -1) @ v  # (B, H, N, hd, hd): sum of k_s v_s^T within each chunk
        chunk_norm = k.sum(dim=3)  # (B, H, N, hd)
        state = chunk_state.cumsum(dim=2) - chunk_state  # exclusive prefix: the chunks before this one
        norm = chunk_norm.cumsum(dim=2) - chunk_norm
        if cache is not None:
            if "state" in cache:
                state = state + cache["state"][:, :, None]
                norm = norm + cache["norm"][:, :, None]
            cache["state"], cache["norm"] = (
                state[:, :, -1] + chunk_state[:, :, -1],
                norm[:, :, -1] + chunk_norm[:, :, -1],
            )
        within = (q @ k.transpose(-2, -1)).masked_fill(~self._mask(c, c), 0.0)  # (B, H, N, C, C), causal
        numerator = within @ v + q @ state  # (B, H, N, C, hd)
        denominator = within.sum(dim=-1, keepdim=True) + q @ norm.unsqueeze(-1) + EPS  # (B, H, N, C, 1)
        context = (numerator / denominator).view(b, h, -1, d)[:, :, :t]  # (B, H, T, hd)
        return self.dropout(context)

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The same map in quadratic form; weights (B, H, T, T) are the normalised kernel scores."""
        scores = (q @ k.transpose(-2, -1)).masked_fill(~self._mask(q.shape[2], k.shape[2]), 0.0)
        weights = scores / (scores.sum(dim=-1, keepdim=True) + EPS)
        return self.dropout(weights @ v), weights

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return 0  # constant-size state: num_heads * hd * (hd + 1) elements, whatever the length
