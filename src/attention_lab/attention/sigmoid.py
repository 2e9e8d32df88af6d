"""`sigmoid`: sigmoid attention (Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid
Self-Attention", arXiv 2409.04431).

Each score goes through its own sigmoid instead of a row softmax:

  w_ij = sigmoid(q_i . k_j / sqrt(hd) + b)  for the keys j query i may see, 0 elsewhere;  out_i = sum_j w_ij v_j

with b = -log(n), the paper's bias for sequence length n: at initialisation (scores near 0) each weight is about
1 / (1 + n), so a row of n keys carries a total weight near 1, and the large early attention norms the paper finds
destabilise training are avoided. Rows are not normalised: the returned map is the sigmoid map itself, its rows do
not sum to 1 (`weights_sum_to_one = False`); masked entries are exactly 0.

n here is the training `context_length`, a constant, as in the paper's code (one scalar bias added to every
score). A causal row i sees only i + 1 keys, so early rows carry
less total weight than late ones; we keep the constant rather than a per-row -log(i + 1), which would make the bias
depend on the query's position: the constant keeps weights translation-invariant (with rope, alibi or none), and
decoding, any length past the context included, sees exactly the weights of the full forward.

Kernel: the explicit formula (PyTorch has no fused sigmoid-attention kernel; the paper's FlashSigmoid is a CUDA
extension), so training holds the (B, H, T, T) map as the explicit softmax variants do. Dropout (training only)
acts on the weights. The KV cache, positions and FLOPs are multihead's: `k`, `v` (B, H, Tk, hd).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import HeadedAttention
from .functional import AttentionConfigError


def sigmoid_weights(q: Tensor, k: Tensor, allowed: Tensor, bias: float, position_bias: Tensor | None = None) -> Tensor:
    """sigmoid(q k^T / sqrt(hd) + bias + position_bias), exactly 0 where not allowed.

    q (B, H, Tq, hd), k (B, H, Tk, hd), allowed (Tq, Tk) bool, position_bias (H, Tq, Tk) -> (B, H, Tq, Tk)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]) + bias  # (B, H, Tq, Tk)
    if position_bias is not None:
        scores = scores + position_bias.to(scores.dtype)
    return torch.sigmoid(scores).masked_fill(~allowed, 0.0)


class SigmoidAttention(HeadedAttention):
    kernel = "explicit"  # no fused sigmoid kernel in PyTorch
    weights_sum_to_one = False  # each weight is its own sigmoid; rows are not normalised

    def __init__(self, d_model: int, context_length: int, num_heads: int, dropout: float = 0.0, qkv_bias: bool = False):
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
            raise AttentionConfigError(
                f"attention=sigmoid biases its scores by -log(n) with n = model.context_length, got "
                f"{context_length!r}: set model.context_length to an integer >= 1."
            )
        super().__init__(d_model, context_length, num_heads, dropout, qkv_bias)
        self.score_bias = -math.log(context_length)  # the paper's b = -log(n)

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        t_q, t_k = q.shape[2], k.shape[2]
        mask, bias = self._mask(t_q, t_k, q.device), self.position.bias(t_q, t_k, q.device)
        weights = sigmoid_weights(q, self._expand_kv(k), mask, self.score_bias, bias)  # (B, H, Tq, Tk)
        return self.dropout(weights) @ self._expand_kv(v), weights
