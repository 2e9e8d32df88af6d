"""`differential`: Differential Transformer attention (Ye et al. 2024, arXiv 2410.05258).

Each head computes two softmax maps from split queries and keys and subtracts them, so that attention both maps
give to irrelevant context (common-mode noise) cancels:

  A_h = softmax(Q1 K1^T / sqrt(hd/2)) - lambda softmax(Q2 K2^T / sqrt(hd/2)),  head_h = (1 - lambda_init) RMSNorm(A_h V)
  lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init

lambda is one learned scalar per layer, re-parametrised by four vectors of width hd/2 (the paper's eq. 2, drawn
from N(0, 0.1) as the official code does), shared by the layer's heads. lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1))
for the paper's layer l = 1..L: the model calls `use_depth(layer_index)` with l - 1; standalone it is layer 1's
0.2. RMSNorm normalises each head's output on its own (the paper's GroupNorm; one gain of width hd shared by the
heads, as in the official code), then (1 - lambda_init) restores the scale lambda_init took away.

Head layout (the official code's): `num_heads` differential heads of width hd = d_model / num_heads; head h has
queries/keys Q1, Q2, K1, K2 of width hd/2 (features [0, hd/2) and [hd/2, hd) of its slice) and one value of width
hd that both maps read. W_query, W_key, W_value and out_proj are d x d, exactly multihead's parameters plus
3 hd (four lambda vectors of hd/2, the norm's gain of hd). At the same num_heads each map is half as wide as
multihead's; the paper compares against a baseline with twice the heads (then the maps are as wide as the
baseline's heads): attention=differential with num_heads=H/2 against multihead with H.

Kernels: training runs two SDPA calls, softmax(Q_i K_i^T) V for i = 1, 2 (no (T, T) matrix kept), combined as
C1 - lambda C2, which is A V by linearity. `return_weights` computes A itself by the explicit formula; A is the
returned map, (B, H, Tq, Tk): its rows sum to 1 - lambda, not 1, and entries may be negative
(`weights_sum_to_one = False`). Masked entries are exactly 0. Dropout (training only) acts on each softmax map
inside SDPA, and on A in the explicit path.
KV cache: `k` (B, 2H, Tk, hd/2), both halves of each head (rotated under rope), and `v` (B, H, Tk, hd): 2 d_model
values per token, as multihead. Positions: rope rotates each half (width hd/2, so hd must be a multiple of 4),
alibi biases both maps of a head with its slope; learned, sinusoidal and none act outside attention.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import HeadedAttention
from .functional import (
    AttentionConfigError,
    attention_weights,
    check_divisible,
    divisors,
    sdpa_attention,
    softmax_attention_flops,
    split_heads,
)
from .positions import build_positions

LAMBDA_STD = 0.1  # the official code's init of the four lambda vectors


def lambda_init_for(layer_index: int) -> float:
    """The paper's lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) for layer l = layer_index + 1 (0-based index)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


class DifferentialAttention(HeadedAttention):
    kernel = "sdpa"  # two SDPA calls; the explicit difference map only for return_weights
    weights_sum_to_one = False  # rows of A sum to 1 - lambda and may hold negative entries

    def __init__(self, d_model: int, context_length: int, num_heads: int, dropout: float = 0.0, qkv_bias: bool = False):
        head_dim = check_divisible(d_model, num_heads, "d_model")
        if head_dim % 2:
            good = [h for h in divisors(d_model) if (d_model // h) % 2 == 0]
            raise AttentionConfigError(
                f"attention=differential splits each head's queries and keys into two halves, so d_model / "
                f"num_heads must be even; got {d_model} / {num_heads} = {head_dim}: set attention.num_heads to one "
                f"of {good} (or change model.d_model)."
            )
        super().__init__(d_model, context_length, num_heads, dropout, qkv_bias)
        self.half_dim = head_dim // 2
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.empty(self.half_dim)) for _ in range(4)
        )
        self.reset_parameters()
        self.norm = nn.RMSNorm(head_dim, eps=1e-5)  # each head's output on its own; one gain for all heads
        self.lambda_init = lambda_init_for(0)

    def reset_parameters(self) -> None:
        """Draw the lambda vectors (also what the GPT's seeded init calls, under this module's own seed)."""
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=LAMBDA_STD)

    def use_depth(self, layer_index: int) -> None:
        """Set lambda_init for the model's block `layer_index` (0-based), the paper's layer l = layer_index + 1."""
        if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 0:
            raise ValueError(f"layer_index={layer_index!r} must be an integer >= 0 (the block's 0-based index)")
        self.lambda_init = lambda_init_for(layer_index)

    def use_positions(self, scheme: str, rope_base: float = 10000.0) -> None:
        if scheme == "rope" and self.half_dim % 2:
            raise AttentionConfigError(
                f"attention=differential with model.position=rope rotates each half of a head, of width "
                f"d_model / num_heads / 2 = {self.half_dim}, which must be even: make d_model / num_heads a "
                "multiple of 4 (change attention.num_heads), or use model.position=alibi or none."
            )
        self.position = build_positions(scheme, self.num_heads, self.half_dim, rope_base)  # alibi: H slopes

    def lambda_full(self) -> Tensor:
        """The scalar lambda, computed in float32 (it is exp of a learned dot product)."""
        first = torch.exp((self.lambda_q1.float() * self.lambda_k1.float()).sum())
        second = torch.exp((self.lambda_q2.float() * self.lambda_k2.float()).sum())
        return first - second + self.lambda_init

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k (B, 2H, T, hd/2): head h's two maps are 2h and 2h + 1; v (B, H, T, hd)."""
        q = split_heads(self.W_query(x), 2 * self.num_heads)
        k = split_heads(self.W_key(x), 2 * self.num_heads)
        v = split_heads(self.W_value(x), self.num_heads)
        return q, k, v

    def _normalise(self, context: Tensor) -> Tensor:
        return self.norm(context) * (1.0 - self.lambda_init)  # (B, H, T, hd)

    def _context(self, q: Tensor, k: Tensor, v: Tensor, cache: dict | None) -> Tensor:
        p = self.dropout_p if self.training else 0.0
        mask = self._sdpa_mask(q.shape[2], k.shape[2], q.device, q.dtype)  # alibi: (H, Tq, Tk), both maps
        first = sdpa_attention(q[:, 0::2], k[:, 0::2], v, mask, p)  # (B, H, T, hd): softmax(Q1 K1^T) V
        second = sdpa_attention(q[:, 1::2], k[:, 1::2], v, mask, p)  # softmax(Q2 K2^T) V
        return self._normalise(first - self.lambda_full().to(q.dtype) * second)

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        t_q, t_k = q.shape[2], k.shape[2]
        mask, bias = self._mask(t_q, t_k, q.device), self.position.bias(t_q, t_k, q.device)
        first = attention_weights(q[:, 0::2], k[:, 0::2], mask, bias=bias)  # (B, H, Tq, Tk)
        second = attention_weights(q[:, 1::2], k[:, 1::2], mask, bias=bias)
        weights = first - self.lambda_full().to(q.dtype) * second  # masked entries: 0 - lambda * 0 = 0
        return self._normalise(self.dropout(weights) @ v), weights

    def _mixing_flops(self, t: int) -> int:
        """Two SDPA calls, each with (T, hd/2) scores and a (T, hd) context per head."""
        return 2 * softmax_attention_flops(t, t, self.num_heads, self.half_dim, self.head_dim)
