"""Base of the modern variants: query heads, (possibly fewer) key/value heads, a kernel, an output projection.

A subclass changes one thing: how Q/K/V are projected (fused, latent), which keys a query may see (sliding
window) or how the context is computed (SDPA, linear). The explicit formula behind `return_weights` is
shared, so the fast kernels never materialise (B, H, T, T) during training.

Three settings, off by default, act inside every softmax variant built on this class (knobs.py says what each
does): `qk_norm` normalises q and k per head before rope, `logit_softcap` caps the scaled scores before the
bias and mask (and moves the SDPA variants onto the explicit formula: `kernel_in_use` says which runs), and
`sinks` adds a learned per-head logit to every softmax row, which absorbs probability mass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import (
    AttentionConfigError,
    attention_weights,
    causal_allowed,
    check_divisible,
    check_softcap,
    divisors,
    extend_cache,
    float_mask,
    matmul_flops,
    merge_heads,
    sdpa_attention,
    softmax_attention_flops,
    split_heads,
)
from .knobs import apply_qk_norm, qk_norms, sink_key_value, sink_mask, sink_parameter
from .positions import NoPositions, build_positions, take_positions


class HeadedAttention(nn.Module):
    """Causal multi-head attention with `num_kv_heads` K/V heads shared by groups of query heads.

    Shapes: x (B, T, d_model) -> (B, T, d_model); q (B, H, T, hd); k, v (B, H_kv, T, hd).
    Masks and position biases are built for the lengths seen, so `context_length` limits nothing here (the
    model's learned position table, if it has one, does).

    With `sinks=True` the returned weights are the (Tq, Tk) part of a softmax with one more column (the sink):
    their rows sum to 1 - sink mass, and the instance says so with `weights_sum_to_one = False`.
    """

    kernel = "explicit"  # or "sdpa": F.scaled_dot_product_attention in the training path
    window: int | None = None  # keys each query sees (sliding_window); None: all earlier keys

    def __init__(
        self,
        d_model: int,
        context_length: int,
        num_heads: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        num_kv_heads: int | None = None,
        qk_norm: bool = False,
        logit_softcap: float = 0.0,
        sinks: bool = False,
    ):
        super().__init__()
        self.head_dim = check_divisible(d_model, num_heads, "d_model")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise AttentionConfigError(
                f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}: set "
                f"attention.num_kv_heads to a divisor of {num_heads} (one of {divisors(num_heads)})."
            )
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.context_length = context_length
        self.position: NoPositions = NoPositions()  # rope / alibi once `use_positions` attached one
        self.dropout_p = dropout
        self._init_projections(d_model, qkv_bias)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.q_norm, self.k_norm = qk_norms(qk_norm, self.head_dim)  # (None, None) when off
        self.logit_softcap: float = check_softcap(logit_softcap)  # 0.0: off
        self.sink_logit: nn.Parameter | None = sink_parameter(sinks, num_heads)  # (H,) or None
        if sinks:  # an instance attribute, so that a subclass's class-level False is never shadowed by a True
            self.weights_sum_to_one = False

    @property
    def kernel_in_use(self) -> str:
        """What the training path really runs: the class's kernel, except that SDPA cannot soft-cap scores."""
        if self.kernel == "sdpa" and self.logit_softcap:
            return "explicit (logit_softcap)"
        return self.kernel

    def use_positions(self, scheme: str, rope_base: float = 10000.0) -> None:
        """Attach what `scheme` does inside this layer: rope rotates q and k, alibi biases the scores."""
        self.position = build_positions(scheme, self.num_heads, self.head_dim, rope_base)

    # --- the things a variant may change -------------------------------------------------------------
    def _init_projections(self, d_model: int, qkv_bias: bool) -> None:
        kv_width = self.num_kv_heads * self.head_dim
        self.W_query = nn.Linear(d_model, d_model, bias=qkv_bias)
        self.W_key = nn.Linear(d_model, kv_width, bias=qkv_bias)
        self.W_value = nn.Linear(d_model, kv_width, bias=qkv_bias)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The new tokens' q (B, H, T, hd), k and v (B, H_kv, T, hd)."""
        q = split_heads(self.W_query(x), self.num_heads)
        k = split_heads(self.W_key(x), self.num_kv_heads)
        v = split_heads(self.W_value(x), self.num_kv_heads)
        return q, k, v

    def _remember(self, cache: dict | None, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new keys/values to the cache; returns every key/value the queries may see."""
        k, v = extend_cache(cache, 2, k=k, v=v)
        return k, v

    def _project(self, x: Tensor, cache: dict | None) -> tuple[Tensor, Tensor, Tensor]:
        start = take_positions(cache, x.shape[1])  # absolute position of x[:, 0]
        q, k, v = self._qkv(x)
        q, k = apply_qk_norm(self.q_norm, self.k_norm, q, k)  # before rope, as OLMo-2 and Gemma do
        q, k = self.position.rotate(q, k, start=start)  # rope: keys are cached already rotated
        k, v = self._remember(cache, k, v)
        return q, k, v

    def _context(self, q: Tensor, k: Tensor, v: Tensor, cache: dict | None) -> Tensor:
        """Training path: the explicit formula, or SDPA's fused kernel when the class sets kernel = "sdpa" (and no
        soft cap asks for the explicit one). Sinks: one zero key/value more, the sink logits in the mask."""
        if self.kernel == "explicit" or self.logit_softcap:
            return self._explicit(q, k, v)[0]
        p = self.dropout_p if self.training else 0.0
        grouped = self.num_kv_heads != self.num_heads
        mask = self._sdpa_mask(q.shape[2], k.shape[2], q.device, q.dtype)
        if self.sink_logit is not None:  # after the cache was extended: the cache never holds the sink
            k, v = sink_key_value(k, v)  # (B, H_kv, Tk + 1, .)
        if grouped and mask is not None and q.is_cuda:
            # CUDA's kernels that take a mask do not take enable_gqa, so SDPA would fall back to its O(T^2)-memory
            # math path (measured: gqa + alibi 18x slower than without, T=8192): repeat K/V heads instead
            k, v, grouped = self._expand_kv(k), self._expand_kv(v), False
        return sdpa_attention(q, k, v, mask, p, enable_gqa=grouped)

    def _sdpa_mask(self, t_q: int, t_k: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """None lets SDPA use is_causal (and its fastest kernels); that aligns top-left, so only for t_q == t_k
        and plain causal attention. Otherwise the band, with the position bias folded in as a float mask; with sinks
        a float mask (1, H, Tq, Tk + 1) whose last column holds the sink logits (see knobs.sink_mask)."""
        bias = self.position.bias(t_q, t_k, device)
        if bias is None and t_q == t_k and self.window is None and self.sink_logit is None:
            return None
        allowed = self._mask(t_q, t_k, device)
        if self.sink_logit is not None:
            return sink_mask(allowed, bias, self.sink_logit, dtype)
        return allowed if bias is None else float_mask(allowed, bias, dtype)

    # --- shared --------------------------------------------------------------------------------------
    def _expand_kv(self, t: Tensor) -> Tensor:
        """(B, H_kv, T, hd) -> (B, H, T, hd); query head h reads K/V head h // (H / H_kv)."""
        group = self.num_heads // self.num_kv_heads
        return t if group == 1 else t.repeat_interleave(group, dim=1)

    def _mask(self, t_q: int, t_k: int, device: torch.device) -> Tensor:
        return causal_allowed(t_q, t_k, self.window, device)  # (Tq, Tk) bool, lower-right aligned

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        t_q, t_k = q.shape[2], k.shape[2]
        mask, bias = self._mask(t_q, t_k, q.device), self.position.bias(t_q, t_k, q.device)
        weights = attention_weights(
            q, self._expand_kv(k), mask, bias=bias, softcap=self.logit_softcap, sink=self.sink_logit
        )  # (B, H, Tq, Tk)
        return self.dropout(weights) @ self._expand_kv(v), weights

    def forward(self, x: Tensor, return_weights: bool = False, cache: dict | None = None):
        q, k, v = self._project(x, cache)
        if return_weights:
            context, weights = self._explicit(q, k, v)
        else:
            context = self._context(q, k, v, cache)  # (B, H, T, hd)
        out = self.out_proj(merge_heads(context))  # (B, T, d_model)
        return (out, weights) if return_weights else out

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        """Bytes one token adds to this layer's KV cache: K and V for each KV head."""
        return 2 * self.num_kv_heads * self.head_dim * bytes_per_element

    def forward_flops(self, t: int) -> dict[str, int]:
        """Matmul FLOPs of one training forward over t tokens (no cache): `projections` (Q, K, V, out) and
        `mixing` (what mixes tokens: scores and context here).

        Q and out_proj are d x d, K and V d x (H_kv * hd) (gqa/mqa: narrower; fused's one d x 3d GEMM is the same
        sum). Mixing is the full (T, T) score and context products of every query head: K/V heads are shared, not
        the products, and a sliding window or the causal mask is applied to a matrix computed whole. QK-norm, the
        soft cap and the sink logits are elementwise; SDPA's sink is one more key column (`_keys_scored`)."""
        d, kv_width = self.d_model, self.num_kv_heads * self.head_dim
        projections = matmul_flops(t, d, 2 * d + 2 * kv_width)
        return {"projections": projections, "mixing": self._mixing_flops(t)}

    def _mixing_flops(self, t: int) -> int:
        return softmax_attention_flops(t, self._keys_scored(t), self.num_heads, self.head_dim, self.head_dim)

    def _keys_scored(self, t: int) -> int:
        """Keys in each score row of a t-token forward: t, plus SDPA's zero key for the sink."""
        return t + 1 if self.sink_logit is not None and self.kernel == "sdpa" and not self.logit_softcap else t
