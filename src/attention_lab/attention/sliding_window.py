"""`sliding_window`: causal attention restricted to a band (Longformer / Mistral style local attention).

Convention: query i sees the `window` keys i - window + 1 .. i (itself included). `window=1` attends only
to itself; `window >= T` is ordinary causal attention. The KV cache keeps only the last window - 1 tokens,
so with a relative position scheme (rope, alibi, none) decoding goes on indefinitely in bounded memory.

Kernels: training and prefill run the blocked local kernel (local.py), O(T * window) in time and memory, or
FlexAttention with a band BlockMask on CUDA; one-token decoding, and every call in which no key has yet left
the window (Tk <= window), run the dense path of the base class (SDPA, or the explicit formula under a soft
cap). `blocked = False` forces the dense (T, T) band everywhere: the reference, and the benchmark's
`sliding_window_dense` row. `return_weights` is always the explicit dense formula.
"""

from __future__ import annotations

from torch import Tensor

from .base import HeadedAttention
from .functional import AttentionConfigError, softmax_attention_flops
from .local import flex_available, flex_band_attention, local_attention, local_flops


class SlidingWindowAttention(HeadedAttention):
    kernel = "sdpa"  # the dense path's kernel (decoding, Tk <= window, blocked = False)

    def __init__(self, d_model: int, context_length: int, num_heads: int, window: int, **kwargs):
        if not isinstance(window, int) or window < 1:
            raise AttentionConfigError(
                f"window={window} must be an integer >= 1 (the number of keys each query sees, itself "
                f"included): set attention.window to e.g. 32, or to >= {context_length} for full causal."
            )
        self.window = window  # read by _mask: band and causality in one boolean mask, built per length
        super().__init__(d_model, context_length, num_heads, **kwargs)
        self.blocked = True  # False: the dense (T, T) band (reference and benchmark only)

    @property
    def kernel_in_use(self) -> str:
        """What the training path runs: `local` (blocked SDPA; FlexAttention on CUDA), `local (explicit: ...)` when a
        soft cap or sinks need the explicit softmax over the blocks, or the dense kernel + ` (dense band)` when
        `blocked` is off."""
        if not self.blocked:
            return f"{super().kernel_in_use} (dense band)"
        settings = (("logit_softcap", bool(self.logit_softcap)), ("sinks", self.sink_logit is not None))
        needs = [name for name, on in settings if on]
        return f"local (explicit: {', '.join(needs)})" if needs else "local"

    def _remember(self, cache: dict | None, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k, v = super()._remember(cache, k, v)
        if cache is not None:  # the band is translation-invariant, so older keys can simply be dropped
            keep = self.window - 1
            cache["k"], cache["v"] = (t[:, :, max(t.shape[2] - keep, 0) :] for t in (k, v))
        return k, v

    def _uses_blocks(self, t_q: int, t_k: int) -> bool:
        """Blocked unless decoding one token or no key is out of any query's reach yet (plain causal)."""
        return self.blocked and t_q > 1 and t_k > self.window

    def _context(self, q: Tensor, k: Tensor, v: Tensor, cache: dict | None) -> Tensor:
        if not self._uses_blocks(q.shape[2], k.shape[2]):
            if self.logit_softcap:  # SDPA cannot cap scores (this class's kernel_in_use never says "explicit")
                return self._explicit(q, k, v)[0]
            return super()._context(q, k, v, cache)
        w, p = self.window, self.dropout_p if self.training else 0.0
        bias = self.position.bias(w, 2 * w, q.device)  # (H, w, 2w) or None: one block's, the same for all
        slopes = getattr(self.position, "slopes", None)  # ALiBi's (H,), for FlexAttention's score_mod
        plain = p == 0 and not self.logit_softcap and self.sink_logit is None
        if plain and (bias is None or slopes is not None) and flex_available(q):
            out = flex_band_attention(q, k, v, w, slopes if bias is not None else None)
            if out is not None:
                return out
        return local_attention(q, k, v, w, bias, p, self.logit_softcap, self.sink_logit)  # (B, H, Tq, hd)

    def _keys_scored(self, t: int) -> int:
        """Dense path: SDPA scores one zero key more for the sink (not under a soft cap: that is explicit)."""
        return t + 1 if self.sink_logit is not None and not self.logit_softcap else t

    def _mixing_flops(self, t: int) -> int:
        """Blocked (t > window): N = ceil(t / w) blocks of (w, 2w) per head; else the dense (t, t) products."""
        if self._uses_blocks(t, t):
            return local_flops(t, self.window, self.num_heads, self.head_dim)
        return softmax_attention_flops(t, self._keys_scored(t), self.num_heads, self.head_dim, self.head_dim)
