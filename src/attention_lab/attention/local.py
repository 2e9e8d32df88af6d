"""Blocked local attention: a causal band of `window` keys in O(T * window) time and memory.

Why: the band as a dense (T, T) mask costs T^2 memory and T^2 work however small the window. Cut the queries
into blocks of w = window; query i sees keys i - w + 1 .. i, all of which lie in its own key block or the one
before it. So each block of w queries attends to 2w keys, through one batched call over every block at once:
(B * H_kv, N, G * w, hd) queries against (B * H_kv, N, 2w, hd) keys, N = ceil(T / w) blocks, G = H / H_kv query
heads per K/V head (their rows are stacked, so K/V are never repeated; head h reads K/V head h // G).

Alignment (lower-right, as with a KV cache): the keys are the `cached` keys kept from earlier calls (at most
w - 1, all a new query can still see) followed by the new ones. Left-padded with w - cached zero keys and
right-padded to (N + 1) w, query r of block n sits at padded position (n + 1) w + r, and its band is the keys
n w + r + 1 .. (n + 1) w + r: local keys j = r + 1 .. r + w of the block's 2w. The band is the same for every
block, and so is a relative position bias (ALiBi's distance w + r - j): built once per call as (H, w, 2w). Only
block 0 differs (its left padding is masked out); padded query rows are computed and cut.

Two kernels, measured alone on the 2-core CPU (torch 2.13, 2 threads, load ~4; B=1, H=8, hd=32, w=128, T=4096,
fwd+bwd, two interleaved runs): SDPA over the blocks with a 4-D mask (its fused CPU kernel saves no weights) 266-387
ms and 28 MiB saved for backward; the explicit softmax over the blocks 679-1694 ms and 53 MiB; the dense band
1958-2012 ms and 68 MiB. (With a 5-D or 3-D mask SDPA silently takes its math path, which saves the weights.)
SDPA is the default; the explicit one runs when scores must be soft-capped or a sink column joins the softmax,
which SDPA cannot express here.
On CUDA, `flex_band_attention` runs PyTorch's FlexAttention with a cached band BlockMask instead (see there).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import float_mask, matmul_flops
from .knobs import softcap as cap_scores

log = logging.getLogger(__name__)


def block_count(t_q: int, window: int) -> int:
    """N: blocks of `window` queries that cover t_q queries (the last one padded)."""
    return -(-t_q // window)


def local_flops(t_q: int, window: int, heads: int, head_dim: int) -> int:
    """Matmul FLOPs of the blocked kernel: per head and block, (w, hd) @ (hd, 2w) scores and (w, 2w) @ (2w, hd)."""
    blocks = block_count(t_q, window)
    return heads * blocks * (matmul_flops(window, head_dim, 2 * window) + matmul_flops(window, 2 * window, head_dim))


def block_allowed(window: int, blocks: int, cached: int, device: torch.device | None = None) -> Tensor:
    """(N, w, 2w) bool: True where query r of block n may see local key j (band, minus block 0's left padding)."""
    r = torch.arange(window, device=device)[:, None]
    j = torch.arange(2 * window, device=device)[None, :]
    band = (j > r) & (j <= r + window)  # distance w + r - j in 0 .. w - 1
    padded_key = torch.arange(blocks, device=device)[:, None, None] * window + j  # (N, 1, 2w)
    return band & (padded_key >= window - cached)  # (N, w, 2w)


def key_blocks(x: Tensor, window: int, blocks: int, left: int) -> Tensor:
    """Keys or values (B, H_kv, Tk, d) -> (B * H_kv, N, 2w, d): block n holds padded positions n w .. n w + 2w - 1."""
    b, h, t, d = x.shape
    padded = F.pad(x, (0, 0, left, (blocks + 1) * window - left - t))  # (B, H_kv, (N + 1) w, d)
    halves = padded.view(b * h, blocks + 1, window, d)  # (B H_kv, N + 1, w, d)
    return torch.cat((halves[:, :-1], halves[:, 1:]), dim=2)  # (B H_kv, N, 2w, d)


def query_blocks(q: Tensor, window: int, blocks: int, group: int) -> Tensor:
    """(B, H, Tq, d) -> (B * H_kv, N, G * w, d): the G query heads of one K/V head stacked row-wise per block."""
    b, h, t, d = q.shape
    padded = F.pad(q, (0, 0, 0, blocks * window - t)).view(b, h // group, group, blocks, window, d)
    return padded.transpose(2, 3).reshape(b * (h // group), blocks, group * window, d)


def unblock(out: Tensor, batch: int, group: int, t_q: int) -> Tensor:
    """Inverse of `query_blocks`: (B * H_kv, N, G * w, d) -> (B, H, Tq, d), padded rows cut."""
    bh, blocks, gw, d = out.shape
    window = gw // group
    out = out.view(batch, bh // batch, blocks, group, window, d).transpose(2, 3)  # (B, H_kv, G, N, w, d)
    return out.reshape(batch, bh // batch * group, blocks * window, d)[:, :, :t_q]


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    softcap: float = 0.0,
    sink: Tensor | None = None,
) -> Tensor:
    """Causal band attention, blocked: q (B, H, Tq, hd), k, v (B, H_kv, Tk, hd) -> (B, H, Tq, hd).

    The first Tk - Tq keys are cached ones (at most window - 1), before the new queries (lower-right alignment).
    `bias` (H, w, 2w): the position bias of a block (e.g. `ALiBi.bias(w, 2w)`), the same for every block.
    `softcap` caps the scaled scores before the bias (knobs.softcap); `sink` (H,) joins every softmax row as one
    more logit with a zero value (knobs.py). `dropout_p` is applied to the weights: pass 0 outside training.
    """
    b, h, t_q, _ = q.shape
    h_kv, t_k, w = k.shape[1], k.shape[2], window
    cached = t_k - t_q
    if not 0 <= cached < w:
        raise ValueError(f"{cached} cached keys: the blocked kernel takes 0 .. window - 1 = {w - 1} of them")
    group, blocks = h // h_kv, block_count(t_q, w)
    qb = query_blocks(q, w, blocks, group)  # (B H_kv, N, G w, hd)
    kb, vb = (key_blocks(x, w, blocks, w - cached) for x in (k, v))  # (B H_kv, N, 2w, hd)
    allowed = block_allowed(w, blocks, cached, q.device).repeat(1, group, 1)  # (N, G w, 2w), rows (g, r)
    if bias is not None:
        bias = bias.reshape(h_kv, 1, group * w, 2 * w)  # head h = kv * G + g: rows (g, r) of K/V head kv
    if softcap or sink is not None:
        out = _explicit_blocks(qb, kb, vb, allowed, bias, dropout_p, softcap, sink, batch=b)
    else:
        out = _sdpa_blocks(qb, kb, vb, allowed, bias, dropout_p, batch=b)
    return unblock(out, b, group, t_q)  # (B, H, Tq, hd)


def _sdpa_blocks(
    qb: Tensor, kb: Tensor, vb: Tensor, allowed: Tensor, bias: Tensor | None, dropout_p: float, batch: int
) -> Tensor:
    """SDPA over the blocks. Its fused CPU kernel takes only 2-D or 4-D masks (else it falls back to the math
    path, which saves the weights): (1, N, Gw, 2w) bool, or with a bias a float (B H_kv, N, Gw, 2w)."""
    if bias is None:
        mask = allowed[None]  # (1, N, G w, 2w)
    else:
        mask = float_mask(allowed, bias, qb.dtype)  # (H_kv, N, G w, 2w)
        mask = mask.expand(batch, *mask.shape).reshape(-1, *mask.shape[1:])  # (B H_kv, N, G w, 2w)
    return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout_p)


def _explicit_blocks(
    qb: Tensor,
    kb: Tensor,
    vb: Tensor,
    allowed: Tensor,
    bias: Tensor | None,
    dropout_p: float,
    softcap: float,
    sink: Tensor | None,
    batch: int,
) -> Tensor:
    """softmax(cap(q k^T / sqrt(hd)) + bias, masked [, sink]) @ v per block; the weights are (B H_kv, N, Gw, 2w)."""
    scores = cap_scores(qb @ kb.transpose(-2, -1) / math.sqrt(qb.shape[-1]), softcap)  # (B H_kv, N, G w, 2w)
    scores = scores.unflatten(0, (batch, -1))  # (B, H_kv, N, G w, 2w)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    scores = scores.masked_fill(~allowed, float("-inf"))
    if sink is None:
        weights = torch.softmax(scores, dim=-1)
    else:
        h_kv, gw = scores.shape[1], scores.shape[3]
        group = sink.numel() // h_kv
        rows = sink.to(scores.dtype).view(h_kv, group, 1).expand(h_kv, group, gw // group)  # (H_kv, G, w)
        column = rows.reshape(1, h_kv, 1, gw, 1).expand(*scores.shape[:-1], 1)  # (B, H_kv, N, G w, 1)
        weights = torch.softmax(torch.cat((scores, column), dim=-1), dim=-1)[..., :-1]
    weights = F.dropout(weights, dropout_p) if dropout_p else weights
    return weights.flatten(0, 1) @ vb  # (B H_kv, N, G w, hd)


# --- FlexAttention (CUDA) -----------------------------------------------------------------------------------
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # an older torch: the blocked kernel everywhere
    create_block_mask = flex_attention = None

_flex_failed = False  # after one failure, the blocked kernel for the rest of the process


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)  # uncompiled, FlexAttention materialises the scores


@functools.lru_cache(maxsize=64)
def band_block_mask(window: int, t_q: int, t_k: int, device: str):
    """The band as a FlexAttention BlockMask, built once per (window, Tq, Tk, device): only the blocks that
    touch the band are computed, so time and memory are O(T * window)."""
    offset = t_k - t_q  # lower-right: query i sits at key position i + offset

    def band(b, h, q_idx, kv_idx):
        position = q_idx + offset
        return (kv_idx <= position) & (kv_idx > position - window)

    return create_block_mask(band, B=None, H=None, Q_LEN=t_q, KV_LEN=t_k, device=device)


def flex_available(q: Tensor) -> bool:
    """FlexAttention only on CUDA (on CPU it has no backward, and a failure inside torch.compile slows every later
    call: DESIGN.md, Known pitfalls), only where this torch has it, and not after it failed once."""
    return q.is_cuda and flex_attention is not None and not _flex_failed


def flex_band_attention(q: Tensor, k: Tensor, v: Tensor, window: int, slopes: Tensor | None = None) -> Tensor | None:
    """The band through FlexAttention: q (B, H, Tq, hd), k, v (B, H_kv, Tk, hd) -> (B, H, Tq, hd), or None if it
    failed (logged once; the caller then runs the blocked kernel). `slopes` (H,): ALiBi's, as a score_mod.
    No dropout, soft cap or sink here: the caller keeps those on the blocked kernel."""
    global _flex_failed
    offset = k.shape[2] - q.shape[2]
    score_mod = None
    if slopes is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx + offset - kv_idx)  # distance >= 0 inside the band

    try:
        block_mask = band_block_mask(window, q.shape[2], k.shape[2], str(q.device))
        grouped = q.shape[1] != k.shape[1]
        return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=grouped)
    except Exception as error:  # any failure: the blocked kernel is always correct
        _flex_failed = True
        log.warning("FlexAttention failed (%s); sliding_window uses its blocked kernel from now on", error)
        return None
