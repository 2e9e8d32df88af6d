"""Name -> builder for every attention variant (the Hydra group `conf/attention/` mirrors this table).

`build_attention(name, d_model, context_length, position=..., **knobs)` validates the name, the knob names
and their types, and whether the variant supports the position scheme, before anything is built, so a typo
in a sweep fails at once with the list of valid choices.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .classic import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    SimplifiedSelfAttention,
)
from .differential import DifferentialAttention
from .functional import AttentionConfigError, check_divisible
from .fused import FusedAttention, SDPAAttention
from .grouped import GroupedQueryAttention
from .latent import LatentAttention
from .linear import LinearAttention
from .positions import POSITIONS
from .retention import RetentionAttention
from .sigmoid import SigmoidAttention
from .sliding_window import SlidingWindowAttention

log = logging.getLogger(__name__)

HEADS = {"num_heads": 4, "dropout": 0.1, "qkv_bias": False}
# The softmax variants' optional settings (attention/knobs.py), all off: off, outputs are exactly as without them.
SOFTMAX_KNOBS = {"qk_norm": False, "logit_softcap": 0.0, "sinks": False}

# What each setting means, for the generated conf/attention/*.yaml (one line each).
KNOB_DOCS = {
    "num_heads": "must divide model.d_model",
    "dropout": "on the attention weights, training only",
    "qkv_bias": "bias in the Q/K/V projections",
    "causal": "false sees the future: a demonstration of the leak, not a language model",
    "num_kv_heads": "K/V heads shared by groups of query heads; must divide num_heads",
    "window": "keys each query sees, itself included (>= context_length: full causal)",
    "latent_dim": "width of the cached latent that K and V are expanded from",
    "qk_norm": "RMS-normalise q and k per head (learned scale) before rope",
    "logit_softcap": "c > 0: scores -> c tanh(scores / c) pre-softmax (SDPA runs explicit); 0 = off; linear refuses",
    "sinks": "a learned per-head logit joins each softmax row, absorbing mass (rows sum < 1); linear refuses",
    "chunk_size": "tokens per chunk of the training path: memory O(T * chunk_size), no (T, T) matrix",
}


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[..., nn.Module]  # (d_model, context_length, **knobs) -> module
    knobs: dict[str, Any] = field(default_factory=dict)  # every knob with its default
    summary: str = ""
    paper: str = ""
    positions: tuple[str, ...] = POSITIONS  # the model.position schemes it supports
    refuses: str = ""  # why it does not support the others
    fixed: dict[str, Any] = field(default_factory=dict)  # settings it fixes, not configurable (mqa: 1 K/V head)


def _non_causal_warning(name: str) -> None:
    message = (
        f"attention={name} with causal=false: every position sees the next token, so the LM loss is "
        "meaningless (a demonstration of the leak only). Set attention.causal=true to train a real model."
    )
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def _simplified(d, ctx, causal):
    causal or _non_causal_warning("simplified")
    return SimplifiedSelfAttention(causal=causal, context_length=ctx, d_in=d)


def _v1(d, ctx, causal):
    causal or _non_causal_warning("self_attention_v1")
    return SelfAttentionV1(d, d, causal=causal, context_length=ctx)


def _v2(d, ctx, causal, qkv_bias):
    causal or _non_causal_warning("self_attention")
    return SelfAttentionV2(d, d, qkv_bias, causal=causal, context_length=ctx)


def _wrapper(d, ctx, num_heads, dropout, qkv_bias):
    # each head is d / num_heads wide so the concatenation has the model's width
    head_width = check_divisible(d, num_heads, "d_model")
    return MultiHeadAttentionWrapper(d, head_width, ctx, dropout, num_heads, qkv_bias)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant(
            "simplified",
            _simplified,
            {"causal": True},
            "softmax(x x^T) x: no trainable weights, no scaling",
            "Raschka, LLMs from Scratch ch. 3",
        ),
        Variant(
            "self_attention_v1",
            _v1,
            {"causal": True},
            "Q/K/V as raw nn.Parameter matrices",
            "Vaswani et al. 2017",
        ),
        Variant(
            "self_attention",
            _v2,
            {"causal": True, "qkv_bias": False},
            "Q/K/V as nn.Linear (v2)",
            "Vaswani et al. 2017",
        ),
        Variant(
            "causal",
            lambda d, ctx, dropout, qkv_bias: CausalAttention(d, d, ctx, dropout, qkv_bias),
            {"dropout": 0.1, "qkv_bias": False},
            "one causal head with dropout",
            "Vaswani et al. 2017",
        ),
        Variant(
            "multihead_wrapper",
            _wrapper,
            dict(HEADS),
            "list of causal heads, concatenated",
            "Vaswani et al. 2017",
        ),
        Variant(
            "multihead",
            lambda d, ctx, num_heads, dropout, qkv_bias, **knobs: MultiHeadAttention(
                d, d, ctx, dropout, num_heads, qkv_bias, **knobs
            ),
            {**HEADS, **SOFTMAX_KNOBS},
            "one module, heads by view/transpose, out_proj",
            "Vaswani et al. 2017",
        ),
        Variant(
            "fused",
            FusedAttention,
            {**HEADS, **SOFTMAX_KNOBS},
            "one QKV projection, explicit softmax",
            "GPT-2 / nanoGPT",
        ),
        Variant(
            "sdpa",
            SDPAAttention,
            {**HEADS, **SOFTMAX_KNOBS},
            "one QKV projection + F.scaled_dot_product_attention",
            "Dao et al. 2022 (FlashAttention)",
        ),
        Variant(
            "gqa",
            GroupedQueryAttention,
            {**HEADS, "num_kv_heads": 2, **SOFTMAX_KNOBS},
            "query heads share num_kv_heads K/V heads",
            "Ainslie et al. 2023",
        ),
        Variant(
            "mqa",
            lambda d, ctx, **kw: GroupedQueryAttention(d, ctx, num_kv_heads=1, **kw),
            {**HEADS, **SOFTMAX_KNOBS},
            "all query heads share one K/V head",
            "Shazeer 2019",
            fixed={"num_kv_heads": 1},
        ),
        Variant(
            "sliding_window",
            SlidingWindowAttention,
            {**HEADS, "window": 32, **SOFTMAX_KNOBS},
            "causal band: each query sees the last `window` keys",
            "Beltagy et al. 2020",
        ),
        Variant(
            "linear",
            LinearAttention,
            {**HEADS, **SOFTMAX_KNOBS},  # qk_norm applies; the class refuses logit_softcap and sinks (no softmax)
            "phi(q) phi(k)^T with prefix sums, O(T) memory",
            "Katharopoulos et al. 2020",
            positions=("learned", "sinusoidal", "rope", "none"),
            refuses="alibi biases softmax scores, and linear attention has no score matrix or softmax",
        ),
        Variant(
            "latent",
            LatentAttention,
            {**HEADS, "latent_dim": 32, **SOFTMAX_KNOBS},
            "K/V expanded from a cached low-rank latent (MLA)",
            "DeepSeek-AI 2024",
        ),
        Variant(
            "differential",
            DifferentialAttention,
            dict(HEADS),
            "softmax(Q1 K1^T) - lambda softmax(Q2 K2^T) per head, then per-head RMSNorm",
            "Ye et al. 2024 (Differential Transformer)",
        ),
        Variant(
            "sigmoid",
            SigmoidAttention,
            dict(HEADS),
            "sigmoid(q k^T / sqrt(hd) - log n) per key, rows not normalised",
            "Ramapuram et al. 2024",
        ),
        Variant(
            "retention",
            RetentionAttention,
            {**HEADS, "chunk_size": 64},
            "RetNet: q k^T decayed by gamma_h^distance, per-head GroupNorm, swish gate; O(T) memory",
            "Sun et al. 2023",
            positions=("learned", "sinusoidal", "rope", "none"),
            refuses="alibi biases softmax scores, and retention has no softmax (it already decays each head's "
            "scores with distance)",
        ),
    ]
}


def available() -> list[str]:
    return sorted(VARIANTS)


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise AttentionConfigError(
            f"unknown attention variant {name!r}: choose one of {', '.join(available())} "
            f"(attention=<name> on the command line, or a file in conf/attention/)."
        )
    return VARIANTS[name]


def resolve_knobs(name: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with `knobs`, after checking every name and type."""
    variant = get_variant(name)
    unknown = sorted(set(knobs) - set(variant.knobs))
    if unknown:
        raise AttentionConfigError(
            f"attention={name} has no setting {', '.join(unknown)}: its settings are "
            f"{', '.join(sorted(variant.knobs)) or '(none)'}."
        )
    resolved = {**variant.knobs, **knobs}
    for key, value in resolved.items():
        expected = type(variant.knobs[key])
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            resolved[key], ok = float(value), True
        if not ok:
            article = "an" if expected.__name__[0] in "aeiou" else "a"
            raise AttentionConfigError(
                f"attention.{key}={value!r} should be {article} {expected.__name__} (default {variant.knobs[key]!r})."
            )
    if resolved.get("logit_softcap", 0.0) < 0:
        raise AttentionConfigError(
            f"attention.logit_softcap={resolved['logit_softcap']} must be >= 0: set it to 0 (off) or to a positive cap "
            "such as 50 (Gemma 2's)."
        )
    if "dropout" in resolved and not 0.0 <= resolved["dropout"] < 1.0:
        raise AttentionConfigError(f"attention.dropout={resolved['dropout']} must be in [0, 1).")
    return resolved


class UnsupportedPosition(AttentionConfigError):
    """A variant that cannot use a position scheme: in a sweep over variants x schemes, a hole in the grid
    (recorded as `unsupported`), not a typo that should stop the sweep."""


def check_position(name: str, position: str) -> None:
    """Raise unless `position` is a scheme and attention=`name` supports it."""
    if position not in POSITIONS:
        raise AttentionConfigError(
            f"model.position={position!r} is not a position scheme: use one of {', '.join(POSITIONS)}."
        )
    variant = get_variant(name)
    if position not in variant.positions:
        raise UnsupportedPosition(
            f"attention={name} does not support model.position={position}: {variant.refuses}. "
            f"Use model.position={' / '.join(variant.positions)}."
        )


def build_attention(
    name: str,
    d_model: int,
    context_length: int,
    *,
    position: str = "learned",
    rope_base: float = 10000.0,
    **knobs: Any,
) -> nn.Module:
    """Build one attention layer of width `d_model` for a model trained on `context_length` tokens.

    `position` is the model's scheme: rope and alibi are attached to the layer; learned, sinusoidal and none
    act outside attention (or not at all) and leave it as it is."""
    check_position(name, position)
    module = get_variant(name).build(d_model, context_length, **resolve_knobs(name, knobs))
    if position in ("rope", "alibi"):
        module.use_positions(position, rope_base)
    return module
