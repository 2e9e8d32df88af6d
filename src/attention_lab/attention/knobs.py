"""Three settings of the softmax variants, as small pieces the layers share: QK-norm, logit soft-capping, sinks.

All three are off by default, and off they change nothing (no parameter, no op, the same kernel).

- `qk_norm` (OLMo-2 / Gemma-3 / Qwen-3 recipes): RMS-normalise q and k over each head's features, with a learned
  per-feature scale (`nn.RMSNorm(head_dim, eps=QK_NORM_EPS)`, scale initialised to 1), before rope rotates them.
  Bounded q and k bound the scores, which keeps the logits from growing without limit in training. (OLMo-2 itself
  normalises the whole d_model-wide projection before splitting heads; Gemma 3 and Qwen 3 normalise each head, as
  here.)
- `logit_softcap` c > 0 (Gemma 2): scores -> c * tanh(scores / c) on the scaled logits q k^T / sqrt(d), so
  |score| < c. An ALiBi bias is added *after* the cap: capped, a long distance's penalty would saturate at -c and
  stop growing with distance. SDPA has no hook for it, so the SDPA variants compute it by the explicit formula.
- `sinks` (attention sinks as in gpt-oss, the "off-by-one" softmax): one learned logit s_h per head joins every
  softmax row as an extra column whose value vector is 0: weights = softmax([scores, s_h])[:, :Tk]. A query can
  then put mass on "nothing" instead of being forced to spread 1 over the keys, so rows sum to 1 - sink mass.
  For SDPA the sink is one extra key of zeros (its score q . 0 = 0) with s_h in that column of a float mask, and
  one extra value of zeros: the same numbers, one key column more per query (counted in the FLOPs). The keys and
  values are appended after the cache is updated, so a KV cache never holds the sink.

Plain tensor functions and module factories, with no import from the rest of the package (functional.py's
explicit formula uses them); the range check of `logit_softcap` is `functional.check_softcap`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

QK_NORM_EPS = 1e-6  # added to mean(x^2) inside the root, as Gemma's and OLMo-2's RMSNorm


def qk_norms(enabled: bool, head_dim: int) -> tuple[nn.RMSNorm | None, nn.RMSNorm | None]:
    """(q_norm, k_norm): RMSNorm over the last `head_dim` features with a learned scale, or (None, None)."""
    if not enabled:
        return None, None
    return nn.RMSNorm(head_dim, eps=QK_NORM_EPS), nn.RMSNorm(head_dim, eps=QK_NORM_EPS)


def apply_qk_norm(q_norm: nn.Module | None, k_norm: nn.Module | None, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """q (..., T, hd), k (..., Tk, hd) normalised per head (identity when the norms are None)."""
    if q_norm is None or k_norm is None:
        return q, k
    return q_norm(q), k_norm(k)


def softcap(scores: Tensor, cap: float) -> Tensor:
    """c * tanh(scores / c): about the identity for |scores| << c, never beyond +-c. cap 0: unchanged."""
    return cap * torch.tanh(scores / cap) if cap else scores


def sink_parameter(enabled: bool, num_heads: int) -> nn.Parameter | None:
    """The per-head sink logit (H,), initialised to 0 (a sink as likely as a key scoring 0), or None."""
    return nn.Parameter(torch.zeros(num_heads)) if enabled else None


def softmax_with_sink(scores: Tensor, sink: Tensor | None) -> Tensor:
    """softmax over the last dim of scores (B, H, Tq, Tk) with sink (H,) as one more column, which is dropped:
    the returned (B, H, Tq, Tk) rows sum to 1 - sink mass. sink None: the plain softmax."""
    if sink is None:
        return torch.softmax(scores, dim=-1)
    column = sink.to(scores.dtype)[:, None, None].expand(*scores.shape[:-1], 1)  # (B, H, Tq, 1)
    return torch.softmax(torch.cat((scores, column), dim=-1), dim=-1)[..., :-1]


def sink_key_value(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """k (B, H_kv, Tk, dk), v (B, H_kv, Tk, dv) with one key and one value of zeros appended: (.., Tk + 1, .)."""
    zero_k = k.new_zeros(*k.shape[:-2], 1, k.shape[-1])
    zero_v = v.new_zeros(*v.shape[:-2], 1, v.shape[-1])
    return torch.cat((k, zero_k), dim=-2), torch.cat((v, zero_v), dim=-2)


def sink_mask(allowed: Tensor, bias: Tensor | None, sink: Tensor, dtype: torch.dtype) -> Tensor:
    """The float mask (1, H, Tq, Tk + 1) that goes with `sink_key_value`: the bias (or 0) where allowed, -inf where
    not, and the sink logits in the last column (that key's score is 0, so the column's logit is s_h).

    4-D because the CPU flash kernel takes only 4-D masks (3-D falls back to the math path: 82 vs 22 ms at T=1024,
    H=8, hd=32, one thread). While the sink logits need a gradient, the CPU has no fused kernel for a mask that
    needs one and uses the math path; CUDA's memory-efficient kernel computes that gradient."""
    num_heads, (t_q, t_k) = sink.shape[0], allowed.shape
    base = torch.zeros((), dtype=dtype, device=allowed.device) if bias is None else bias.to(dtype)
    scores = base.masked_fill(~allowed, float("-inf")).expand(num_heads, t_q, t_k)  # (H, Tq, Tk)
    column = sink.to(dtype)[:, None, None].expand(num_heads, t_q, 1)  # (H, Tq, 1)
    return torch.cat((scores, column), dim=-1)[None]
