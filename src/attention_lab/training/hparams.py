"""The attention columns of TensorBoard's HParams tab: the same keys for every run, whatever the variant.

A sweep over variants logs different settings per variant (gqa has `num_kv_heads`, multihead has not), and
the HParams tab then drops runs: its parallel-coordinates view leaves out the runs that have no value for a
shown column, and the columns themselves come from one run's record (TensorBoard's backend takes the first
run's `_hparams_/experiment`, which Lightning writes in every run). So every run logs every setting of every
variant (`attention.VARIANTS`), each with the value its attention effectively has: a multihead run has
`num_kv_heads = num_heads` (each query head its own K/V head), full attention has `window =
model.context_length`, mqa has `num_kv_heads = 1`.

Types: never a placeholder string such as "n/a". A column's type is that first run's, and where TensorBoard
infers it from the runs instead, one string among numbers makes the whole column a string: either way a
string in a numeric column (or a number in a string column) is a value of the wrong type, left out again.
Integers and floats are written as numbers (TensorBoard stores every number as a float64: `num_heads` shows
as 4, sorts and filters as a number); booleans as well, since torch's writer tests for a number before a
bool, so they show as 1 / 0 (MLflow and W&B receive the Python values as they are).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..attention.registry import VARIANTS, get_variant

# What a variant without the setting effectively has, from (num_heads, d_model, context_length).
EFFECTIVE: dict[str, Callable[[int, int, int], Any]] = {
    "causal": lambda heads, d, ctx: True,  # every variant without the setting is causal
    "qkv_bias": lambda heads, d, ctx: False,  # simplified has no projections, self_attention_v1 bias-free matrices
    "num_heads": lambda heads, d, ctx: 1,  # the single-head variants
    "dropout": lambda heads, d, ctx: 0.0,  # no dropout on the attention weights
    "num_kv_heads": lambda heads, d, ctx: heads,  # each query head has its own K/V head
    "window": lambda heads, d, ctx: ctx,  # full causal attention: every earlier key of the context
    "latent_dim": lambda heads, d, ctx: d,  # K and V come from the full width, not from a narrower latent
    "qk_norm": lambda heads, d, ctx: False,
    "logit_softcap": lambda heads, d, ctx: 0.0,  # 0 = off
    "sinks": lambda heads, d, ctx: False,
    "chunk_size": lambda heads, d, ctx: ctx,  # the whole context at once
}


def all_settings() -> list[str]:
    """Every setting of every registered variant."""
    return sorted({key for variant in VARIANTS.values() for key in variant.knobs})


def attention_hparams(name: str, settings: Mapping[str, Any], d_model: int, context_length: int) -> dict[str, Any]:
    """`attention.<setting>` for every setting of every variant: the configured value (its default when not
    configured) where the variant has the setting, else the value it effectively trains with."""
    variant = get_variant(name)
    configured = {**variant.knobs, **settings}
    heads = configured.get("num_heads", 1)
    implied = {key: effective(heads, d_model, context_length) for key, effective in EFFECTIVE.items()}
    implied.update(variant.fixed)
    return {f"attention.{key}": configured[key] if key in configured else implied[key] for key in all_settings()}
