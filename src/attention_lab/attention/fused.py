"""`fused`: one (d, 3d) QKV matmul instead of three; `sdpa`: the same with PyTorch's fused attention kernel."""

from __future__ import annotations

from torch import Tensor, nn

from .base import HeadedAttention
from .functional import split_heads


class FusedAttention(HeadedAttention):
    """Multi-head attention whose Q, K and V come from a single projection (one GEMM, one weight)."""

    def _init_projections(self, d_model: int, qkv_bias: bool) -> None:
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=qkv_bias)  # rows: [W_query; W_key; W_value]

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return q, k, v


class SDPAAttention(FusedAttention):
    """Fused projection + `F.scaled_dot_product_attention` (flash / memory-efficient kernels where available).

    Weights are never materialised in training; `return_weights=True` recomputes them by the explicit formula.
    """

    kernel = "sdpa"
