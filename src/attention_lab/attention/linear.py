"""`linear`: causal linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

softmax(q k^T) is replaced by phi(q) phi(k)^T with phi(x) = elu(x) + 1 > 0, so the causal context is
  out_t = phi(q_t) S_t / (phi(q_t) . z_t),   S_t = sum_{s<=t} phi(k_s) v_s^T,   z_t = sum_{s<=t} phi(k_s)
computed in chunks of CHUNK tokens: a small causal (C, C) product inside each chunk plus the prefix sum of
the earlier chunks' (S, z). Memory is O(T * C + T / C * hd^2), linear in T, with no (T, T) matrix; a
per-token prefix sum would hold a (T, hd, hd) state and be ~10x slower at T = 256. The KV cache is the
running (S, z). Dropout has no weights to act on in this form, so it is applied to the context before
`out_proj`.

Of the softmax variants' three settings (knobs.py) only `qk_norm` applies: q and k are RMS-normalised per head
before the feature map (and rope). `logit_softcap` and `sinks` act on softmax logits, and there are none here:
both are refused.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import HeadedAttention
from .functional import AttentionConfigError, matmul_flops, merge_heads
from .knobs import apply_qk_norm
from .positions import Rotary, take_positions

EPS = 1e-6
CHUNK = 64


def feature_map(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


class LinearAttention(HeadedAttention):
    kernel = "linear"  # chunked prefix sums of phi(q) phi(k)^T: no (T, T) matrix in training

    def __init__(
        self,
        d_model: int,
        context_length: int,
        num_heads: int,
        *args,
        logit_softcap: float = 0.0,
        sinks: bool = False,
        **kwargs,
    ):
        for setting, value, off in (("logit_softcap", logit_softcap, 0.0), ("sinks", sinks, False)):
            if value != off:
                raise AttentionConfigError(
                    f"attention=linear cannot use attention.{setting}={value!r}: it acts on softmax logits, and "
                    "linear attention has no score matrix or softmax (phi(q) phi(k)^T is normalised by a sum). "
                    f"Set attention.{setting}={str(off).lower()}, or use a softmax variant (sdpa, gqa, ...)."
                )
        super().__init__(d_model, context_length, num_heads, *args, **kwargs)

    def use_positions(self, scheme: str, rope_base: float = 10000.0) -> None:
        if scheme == "alibi":
            raise AttentionConfigError(
                "attention=linear cannot use model.position=alibi: ALiBi adds a bias to each score before a "
                "softmax, and linear attention has neither a score matrix nor a softmax (its running sums "
                "cannot carry a per-distance bias). Use model.position=rope, learned, sinusoidal or none."
            )
        super().use_positions(scheme, rope_base)

    def forward(self, x: Tensor, return_weights: bool = False, cache: dict | None = None):
        if return_weights and cache is not None:
            raise ValueError(
                "linear attention caches running sums, not keys, so return_weights=True is not available while "
                "decoding with a cache: run the full sequence without a cache to get its weights."
            )
        start = take_positions(cache, x.shape[1])
        q, k, v = self._qkv(x)  # the cache holds running sums, not keys
        q, k = apply_qk_norm(self.q_norm, self.k_norm, q, k)  # per head, before the feature map
        q, k = feature_map(q), feature_map(k)
        # rope, as RoFormer (eq. 19) pairs it with linear attention: rotate phi(q), phi(k) in the numerator
        # only; the denominator keeps phi(q) . phi(k) > 0. Without rope both are the same tensors.
        q_rot, k_rot = self.position.rotate(q, k, start=start)
        if return_weights:
            context, weights = self._quadratic(q, k, q_rot, k_rot, v)
        else:
            context = self._chunked(q, k, q_rot, k_rot, v, cache)  # (B, H, T, hd)
        out = self.out_proj(merge_heads(context))  # (B, T, d_model)
        return (out, weights) if return_weights else out

    def _chunked(self, q: Tensor, k: Tensor, q_rot: Tensor, k_rot: Tensor, v: Tensor, cache: dict | None) -> Tensor:
        b, h, t, d = q.shape
        c = min(CHUNK, t)
        pad = -t % c  # zero keys/values add nothing to the sums; padded queries are cut off below
        rotated = q_rot is not q

        def chunks(z: Tensor) -> Tensor:
            return F.pad(z, (0, 0, 0, pad)).view(b, h, -1, c, z.shape[-1])  # (B, H, N, C, .)

        q, k, v = chunks(q), chunks(k), chunks(v)
        q_rot, k_rot = (chunks(q_rot), chunks(k_rot)) if rotated else (q, k)
        chunk_state = k_rot.transpose(-2, -1) @ v  # (B, H, N, hd, hd): sum of k_s v_s^T within each chunk
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
        causal = self._mask(c, c, q.device)
        within = (q_rot @ k_rot.transpose(-2, -1)).masked_fill(~causal, 0.0)  # (B, H, N, C, C)
        within_norm = (q @ k.transpose(-2, -1)).masked_fill(~causal, 0.0) if rotated else within
        numerator = within @ v + q_rot @ state  # (B, H, N, C, hd)
        denominator = within_norm.sum(dim=-1, keepdim=True) + q @ norm.unsqueeze(-1) + EPS  # (B, H, N, C, 1)
        context = (numerator / denominator).view(b, h, -1, d)[:, :, :t]  # (B, H, T, hd)
        return self.dropout(context)

    def _quadratic(self, q: Tensor, k: Tensor, q_rot: Tensor, k_rot: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The same map in quadratic form; weights (B, H, T, T) are the normalised kernel scores (with rope,
        rotated scores over unrotated sums, so a row need not sum to 1)."""
        allowed = self._mask(q.shape[2], k.shape[2], q.device)
        scores = (q_rot @ k_rot.transpose(-2, -1)).masked_fill(~allowed, 0.0)  # (B, H, T, T)
        norms = scores if q_rot is q else (q @ k.transpose(-2, -1)).masked_fill(~allowed, 0.0)
        weights = scores / (norms.sum(dim=-1, keepdim=True) + EPS)
        return self.dropout(weights @ v), weights

    def _mixing_flops(self, t: int) -> int:
        """The products `_chunked` computes, per head, over t tokens padded to n chunks of c: per chunk its state
        k^T v and the carried state q S (c x hd x hd each), the causal (c, c) products q k^T and within @ v (and a
        second q k^T for the denominator when rope rotated the numerator's), and q z (c x hd x 1). Linear in t up
        to the padding of the last chunk; no (T, T) product."""
        c, hd = min(CHUNK, t), self.head_dim
        padded = -(-t // c) * c  # n * c
        within = (3 if isinstance(self.position, Rotary) else 2) * matmul_flops(padded, hd, c)
        per_head = 2 * matmul_flops(padded, hd, hd) + within + matmul_flops(padded, hd, 1)
        return self.num_heads * per_head

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return 0  # constant-size state: num_heads * hd * (hd + 1) elements, whatever the length
