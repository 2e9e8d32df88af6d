"""`retention`: multi-scale retention (Sun et al. 2023, "Retentive Network", arXiv 2307.08621).

Head h decays its scores with distance by gamma_h = 1 - 2^(-5-h) (h = 0 .. H-1) instead of a softmax. With k
scaled by 1/sqrt(hd), one function has three forms (paper Sec. 2.1; tests/attention/test_retention.py holds them
equal to 1e-5):
  parallel   O = (Q K^T ⊙ D) V,   D_nm = gamma^(n-m) for n >= m, else 0
  recurrent  S_n = gamma S_{n-1} + k_n^T v_n,   o_n = q_n S_n
  chunkwise  inside a chunk of C tokens the parallel form; from the chunks before it, (gamma^(i+1) q_i) S
then MSR(X) = (swish(X W_G) ⊙ GroupNorm_h(heads)) W_O (Sec. 2.2): one GroupNorm group per head.

Where each is used: chunked in training, O(T * C + T / C * hd^2) memory and no (T, T) matrix (every decay factor is
gamma^e with 0 <= e <= C, so nothing overflows or underflows at any length); recurrent while decoding one token
with a cache, which holds `state` (B, H, hd, hd), constant in size (nothing per token; a prefill runs chunked and
leaves the same state); parallel for return_weights=True, whose map (B, H, T, T) is (q k^T / sqrt(hd)) ⊙ D: not
normalised, rows do not sum to 1 (`weights_sum_to_one = False`).
Left out of the paper: its xPos rotation is model.position=rope here (learned, sinusoidal, none rotate nothing);
the score normalisations of its Sec. 2.2 scale each row, which the GroupNorm cancels (up to its eps); values and
gate stay d_model wide (the paper widens them to 2 d_model to match a Transformer's parameter count).
Dropout: there are no weights to drop in the chunked or recurrent form, so it acts on the normalised heads before
the gate, in training only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import HeadedAttention
from .functional import AttentionConfigError, matmul_flops, merge_heads
from .positions import take_positions

CHUNK = 64


def decay_logs(num_heads: int, device: torch.device | None = None) -> Tensor:
    """log gamma_h (H,) in float32 with gamma_h = 1 - 2^(-5-h), h = 0 .. H-1 (paper Sec. 2.2). Built on the device
    for each call, so a bf16 cast cannot round it and no host-to-device copy waits in the forward."""
    h = torch.arange(num_heads, dtype=torch.float32, device=device)
    return torch.log1p(-torch.exp2(-5.0 - h))  # 2^(-5-h) is exact; log1p keeps the small logs accurate


def decay_powers(log_gamma: Tensor, exponents: Tensor) -> Tensor:
    """gamma_h^e for every head: (H,) and exponents (...) -> (H, ...), computed as exp(e log gamma)."""
    return torch.exp(log_gamma.view(-1, *[1] * exponents.dim()) * exponents)


def decay_matrix(log_gamma: Tensor, size: int) -> Tensor:
    """D (H, T, T): gamma^(n-m) for m <= n, exactly 0 above the diagonal (no inf: the exponent is clamped first)."""
    n = torch.arange(size, device=log_gamma.device)
    distance = n[:, None] - n[None, :]  # (T, T)
    return decay_powers(log_gamma, distance.clamp(min=0)).masked_fill(distance < 0, 0.0)


class RetentionAttention(HeadedAttention):
    kernel = "chunked"  # training path; `_recurrent` decodes, `_parallel` returns weights
    weights_sum_to_one = False  # the map is (q k^T / sqrt(hd)) ⊙ D: decayed scores, not a distribution

    def __init__(
        self,
        d_model: int,
        context_length: int,
        num_heads: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        chunk_size: int = CHUNK,
    ):
        if chunk_size < 1:
            raise AttentionConfigError(
                f"chunk_size={chunk_size} must be an integer >= 1: set attention.chunk_size to the tokens per chunk "
                f"of the training path (default {CHUNK})."
            )
        super().__init__(d_model, context_length, num_heads, dropout=dropout, qkv_bias=qkv_bias)
        self.chunk_size = chunk_size
        self.gate = nn.Linear(d_model, d_model, bias=False)  # W_G
        self.norm = nn.GroupNorm(num_heads, d_model)  # one group per head: each head normalised on its own

    def use_positions(self, scheme: str, rope_base: float = 10000.0) -> None:
        if scheme == "alibi":
            raise AttentionConfigError(
                "attention=retention cannot use model.position=alibi: ALiBi adds a distance bias to scores before a "
                "softmax, and retention has no softmax; it already decays each head's scores with distance. Use "
                "model.position=rope (the paper's rotation), learned, sinusoidal or none."
            )
        super().use_positions(scheme, rope_base)

    def forward(self, x: Tensor, return_weights: bool = False, cache: dict | None = None):
        if return_weights and cache is not None:
            raise ValueError(
                "retention caches a running state, not keys, so return_weights=True is not available while decoding "
                "with a cache: run the full sequence without a cache to get its weights."
            )
        start = take_positions(cache, x.shape[1])
        q, k, v = self._qkv(x)  # (B, H, T, hd) each
        q, k = self.position.rotate(q, k, start=start)  # rope: absolute positions, the cache's offset included
        k = k * self.head_dim**-0.5
        if return_weights:
            context, weights = self._parallel(q, k, v)
        elif cache is not None and x.shape[1] == 1:
            context = self._recurrent(q, k, v, cache)
        else:
            context = self._chunked(q, k, v, cache)
        b, t, d = x.shape
        heads = self.norm(merge_heads(context).reshape(b * t, d)).view(b, t, d)  # GroupNorm_h, per token
        out = self.out_proj(F.silu(self.gate(x)) * self.dropout(heads))  # (B, T, d_model)
        return (out, weights) if return_weights else out

    def _parallel(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        decay = decay_matrix(decay_logs(self.num_heads, q.device), q.shape[2]).to(q.dtype)  # (H, T, T)
        weights = (q @ k.transpose(-2, -1)) * decay  # (B, H, T, T)
        return weights @ v, weights

    def _recurrent(self, q: Tensor, k: Tensor, v: Tensor, cache: dict | None = None) -> Tensor:
        """One token at a time from the cache's state (decoding); any T, so tests can run it as the RNN."""
        b, h, t, hd = q.shape
        gamma = decay_logs(self.num_heads, q.device).exp().to(q.dtype)[:, None, None]  # (H, 1, 1)
        state = None if cache is None else cache.get("state")
        state = q.new_zeros(b, h, hd, hd) if state is None else state
        outs = []
        for n in range(t):
            state = gamma * state + k[:, :, n, :, None] * v[:, :, n, None, :]  # (B, H, hd, hd)
            outs.append(q[:, :, n, None] @ state)  # (B, H, 1, hd)
        if cache is not None:
            cache["state"] = state
        return torch.cat(outs, dim=2)  # (B, H, T, hd)

    def _chunked(self, q: Tensor, k: Tensor, v: Tensor, cache: dict | None = None) -> Tensor:
        b, h, t, hd = q.shape
        c = min(self.chunk_size, t)
        n = -(-t // c)
        pad = n * c - t  # zero keys/values add nothing to the state; padded queries are cut off below

        def chunks(z: Tensor) -> Tensor:
            return F.pad(z, (0, 0, 0, pad)).view(b, h, n, c, hd)  # (B, H, N, C, hd)

        q, k, v = chunks(q), chunks(k), chunks(v)
        log_gamma, i = decay_logs(self.num_heads, q.device), torch.arange(c, device=q.device)
        lengths = torch.full((n,), c, device=q.device)
        lengths[-1] = t - (n - 1) * c  # real tokens in each chunk: the state after the last one is exact too
        within = decay_matrix(log_gamma, c).to(q.dtype)[:, None]  # (H, 1, C, C): gamma^(i-j)
        query_decay = decay_powers(log_gamma, i + 1).to(q.dtype)[:, None, :, None]  # (H, 1, C, 1): gamma^(i+1)
        key_exponent = (lengths[:, None] - 1 - i).clamp(min=0)  # (N, C): steps from key j to its chunk's end
        key_decay = decay_powers(log_gamma, key_exponent).to(q.dtype)[..., None]  # (H, N, C, 1)
        chunk_decay = decay_powers(log_gamma, lengths).to(q.dtype)  # (H, N): gamma^L over a whole chunk
        scores = (q @ k.transpose(-2, -1)) * within  # (B, H, N, C, C)
        context = scores @ v  # (B, H, N, C, hd): what each chunk's own keys give
        first = None if cache is None else cache.get("state")  # the state before chunk 0 (None: nothing before)
        after = self._carry(k, v, key_decay, chunk_decay, first, n if cache is not None else n - 1)
        if cache is not None:
            cache["state"] = after[-1]
        before = ([first] if first is not None else []) + after[: n - 1]
        if before:  # chunks skip .. N-1 read the state they start from (chunk 0 only when a cache had one)
            skip = n - len(before)
            carried = (q[:, :, skip:] * query_decay) @ torch.stack(before, dim=2)  # (B, H, N - skip, C, hd)
            context = torch.cat((context[:, :, :skip], context[:, :, skip:] + carried), dim=2)
        return context.reshape(b, h, n * c, hd)[:, :, :t]

    @staticmethod
    def _carry(
        k: Tensor, v: Tensor, key_decay: Tensor, chunk_decay: Tensor, state: Tensor | None, count: int
    ) -> list[Tensor]:
        """The states after chunks 0 .. count-1, S_m = gamma^L_m S_(m-1) + sum_j gamma^(L_m - 1 - j) k_j^T v_j: the
        last chunk's only when a cache keeps it. A loop of `count` elementwise steps; the products are batched."""
        if count == 0:
            return []
        chunk_state = (k[:, :, :count] * key_decay[:, :count]).transpose(-2, -1) @ v[:, :, :count]  # (B, H, M, hd, hd)
        after = []
        for m in range(count):
            step = chunk_state[:, :, m]
            state = step if state is None else chunk_decay[:, m, None, None] * state + step
            after.append(state)
        return after

    def forward_flops(self, t: int) -> dict[str, int]:
        counts = super().forward_flops(t)  # Q, K, V, out
        counts["projections"] += matmul_flops(t, self.d_model, self.d_model)  # W_G
        return counts

    def _mixing_flops(self, t: int) -> int:
        """What `_chunked` multiplies without a cache, per head, over t tokens padded to n chunks of c: the causal
        (c, c) q k^T and scores @ v of every chunk, and for all chunks but the last the state k^T v it hands on and
        for all but the first the carried q S (c x hd x hd each). Decays are elementwise. Linear in t."""
        c, hd = min(self.chunk_size, t), self.head_dim
        padded = -(-t // c) * c
        return self.num_heads * 2 * (matmul_flops(padded, hd, c) + matmul_flops(padded - c, hd, hd))

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        return 0  # constant-size state: num_heads * hd * hd elements per sequence, whatever the length
