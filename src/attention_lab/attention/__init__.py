"""Attention variants: the chapter's classic sequence and the modern ones, plus the name -> builder registry.

No Lightning or Hydra here: everything is a plain `nn.Module` usable on its own.
"""

from .base import HeadedAttention
from .classic import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    SimplifiedSelfAttention,
    simplified_self_attention,
)
from .differential import DifferentialAttention
from .functional import AttentionConfigError, count_params
from .fused import FusedAttention, SDPAAttention
from .grouped import GroupedQueryAttention
from .latent import LatentAttention
from .linear import LinearAttention
from .registry import (
    VARIANTS,
    UnsupportedPosition,
    Variant,
    available,
    build_attention,
    get_variant,
    resolve_knobs,
)
from .retention import RetentionAttention
from .sigmoid import SigmoidAttention
from .sliding_window import SlidingWindowAttention

__all__ = [
    "VARIANTS",
    "AttentionConfigError",
    "CausalAttention",
    "DifferentialAttention",
    "FusedAttention",
    "GroupedQueryAttention",
    "HeadedAttention",
    "LatentAttention",
    "LinearAttention",
    "MultiHeadAttention",
    "MultiHeadAttentionWrapper",
    "RetentionAttention",
    "SDPAAttention",
    "SelfAttentionV1",
    "SelfAttentionV2",
    "SigmoidAttention",
    "SimplifiedSelfAttention",
    "SlidingWindowAttention",
    "UnsupportedPosition",
    "Variant",
    "available",
    "build_attention",
    "count_params",
    "get_variant",
    "resolve_knobs",
    "simplified_self_attention",
]
