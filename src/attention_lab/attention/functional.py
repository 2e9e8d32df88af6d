"""Building blocks shared by the attention variants: head reshapes, masks, explicit softmax attention.

These are plain functions (attention-gym style) so that every variant reads as "project, attend, merge"
and the explicit formula used for `return_weights` is written exactly once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .knobs import softcap as cap_scores
from .knobs import softmax_with_sink


class AttentionConfigError(UserError):
    """A variant was configured with values that cannot work; the message names the fix."""


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_divisible(width: int, num_heads: int, width_name: str = "d_out") -> int:
    """Return the head width, or raise with the values that would work."""
    if num_heads < 1:
        raise AttentionConfigError(f"num_heads={num_heads} must be >= 1: set attention.num_heads to 1 or more.")
    if width % num_heads:
        raise AttentionConfigError(
            f"{width_name}={width} is not divisible by num_heads={num_heads}: set attention.num_heads to a "
            f"divisor of {width} (one of {divisors(width)}) or change the width (model.d_model)."
        )
    return width // num_heads


def check_softcap(logit_softcap: float) -> float:
    """The soft cap as a float, or raise: 0 is off, a positive c caps the scores at +-c."""
    if isinstance(logit_softcap, bool) or not isinstance(logit_softcap, int | float) or logit_softcap < 0:
        raise AttentionConfigError(
            f"logit_softcap={logit_softcap!r} must be a number >= 0: set attention.logit_softcap to 0 (off) or "
            "to a positive cap such as 50 (Gemma 2's)."
        )
    return float(logit_softcap)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, T, H * hd) -> (B, H, T, hd)."""
    b, t, _ = x.shape
    return x.view(b, t, num_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, hd) -> (B, T, H * hd)."""
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


def causal_allowed(t_q: int, t_k: int | None = None, window: int | None = None, device=None) -> Tensor:
    """Boolean (Tq, Tk) mask, True where query i may attend to key j, for the last t_q queries over t_k keys.

    Lower-right aligned: with a KV cache the queries are the newest positions, so query row r sits at position
    t_k - t_q + r. Causal: j <= i. With `window`, also j > i - window, so each query sees `window` keys (itself
    included). Built for the lengths asked for, never sized up front: no (T, T) buffer limits the length.
    """
    t_k = t_q if t_k is None else t_k
    i = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    j = torch.arange(t_k, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed


def attention_weights(
    q: Tensor,
    k: Tensor,
    allowed: Tensor | None,
    scale: float | None = None,
    bias: Tensor | None = None,
    softcap: float = 0.0,
    sink: Tensor | None = None,
) -> Tensor:
    """softmax(cap(q k^T * scale) + bias) with disallowed positions removed; post-softmax, pre-dropout.

    q: (B, H, Tq, hd), k: (B, H, Tk, hd), allowed: (Tq, Tk) bool, bias: (H, Tq, Tk) float -> (B, H, Tq, Tk).
    `softcap` c > 0 caps the scaled scores at c * tanh(s / c) before the bias (see knobs.py); `sink` (H,) joins
    each row as one more logit whose column is dropped after the softmax, so rows then sum to 1 - sink mass.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = cap_scores((q @ k.transpose(-2, -1)) * scale, softcap)  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)  # the bias is built in float32; keep the scores' dtype
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return softmax_with_sink(scores, sink)


def float_mask(allowed: Tensor, bias: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A boolean mask and an additive bias as the one float mask SDPA takes: bias where allowed, -inf elsewhere.

    In the queries' dtype: SDPA refuses a float32 mask beside bfloat16 queries (`trainer.precision=bf16-true`)."""
    return bias.to(dtype).masked_fill(~allowed, float("-inf"))  # (H, Tq, Tk)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, enable_gqa: bool = False
) -> Tensor:
    """PyTorch's fused kernel (flash / memory-efficient / math, whichever the device offers).

    Causality is folded into `mask` (boolean: True = may attend; float: added to the scores, -inf = may not)
    rather than combined with `is_causal`, whose behaviour with an explicit mask differs per backend;
    `mask=None` (only valid for Tq == Tk) means plain causal. With `enable_gqa`, k/v may have fewer heads;
    query head h reads K/V head h // (H / H_kv).
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=enable_gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=enable_gqa)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def extend_cache(cache: dict[str, Tensor] | None, dim: int, **new: Tensor) -> list[Tensor]:
    """Append this step's tensors to a per-layer KV cache (in place) and return the full sequences.

    `cache` is a plain dict owned by the caller, one per layer; `None` means no caching (training).
    """
    if cache is None:
        return list(new.values())
    full = []
    for name, value in new.items():
        if name in cache:
            value = torch.cat((cache[name], value), dim=dim)
        cache[name] = value
        full.append(value)
    return full


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of one (m, k) @ (k, n) product: m * n dot products of length k, a multiply and an add each.

    The convention of `torch.utils.flop_counter` (and of the "6N" rule): only matrix products count; softmax,
    masks, norms, rope and biases are elementwise and small beside them."""
    return 2 * m * k * n


def softmax_attention_flops(t_q: int, t_k: int, heads: int, qk_dim: int, v_dim: int) -> int:
    """Scores q k^T (Tq, qk_dim) @ (qk_dim, Tk) and context weights @ v (Tq, Tk) @ (Tk, v_dim), per head.

    The whole (Tq, Tk) matrix is computed, masked entries included: the explicit formula masks after the
    product, SDPA's math path does the same, and torch's flop counter counts its fused kernels this way too."""
    return heads * (matmul_flops(t_q, qk_dim, t_k) + matmul_flops(t_q, t_k, v_dim))
