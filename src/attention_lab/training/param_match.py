"""`model.match_params=<variant>`: widen or narrow this run's MLP until its non-embedding parameters match a
baseline variant's, so "gqa vs multihead at equal parameters" is one override.

The baseline is this run's model with its attention swapped for the named variant: the same model settings
(width, layers, MLP width from `model.mlp_hidden` or `model.mlp_ratio`), the baseline variant's registry
defaults, and every attention setting the two variants share taken from this run (`num_heads`, `dropout`,
`qkv_bias`, ...). Only this run's MLP hidden width changes: each hidden unit adds the same number of parameters
per layer (2 x d_model weights + 1 bias), so the closest width is one division, measured on the real model
rather than assumed. The resolved width goes into the model's settings as `mlp_hidden`, so checkpoints,
generation and resumes rebuild exactly that model; metrics.json reports the match (`param_match`).

Counting builds the GPT on PyTorch's meta device: shapes without memory or random numbers, milliseconds even for
GPT-2 small.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from ..attention import available, get_variant
from ..config import ConfigError
from ..errors import UserError
from ..model import GPT

log = logging.getLogger(__name__)

TOLERANCE = 0.01  # the largest relative difference a match may leave


@dataclass(frozen=True)
class ParamMatch:
    """The outcome of a match: both non-embedding parameter counts and the MLP width that gave them."""

    baseline: str
    baseline_non_embedding: int
    non_embedding: int
    mlp_hidden: int

    @property
    def relative_diff(self) -> float:
        """(this run - baseline) / baseline: positive when this run has more parameters."""
        return (self.non_embedding - self.baseline_non_embedding) / self.baseline_non_embedding

    def record(self, non_embedding: int | None = None) -> dict[str, Any]:
        """The `param_match` field of metrics.json (non_embedding: the built model's own count, when given)."""
        achieved = self.non_embedding if non_embedding is None else non_embedding
        diff = (achieved - self.baseline_non_embedding) / self.baseline_non_embedding
        return {
            "baseline": self.baseline,
            "baseline_non_embedding": self.baseline_non_embedding,
            "non_embedding": achieved,
            "relative_diff": diff,
            "mlp_hidden": self.mlp_hidden,
        }


def non_embedding_params(kwargs: dict[str, Any]) -> int:
    """GPT(**kwargs).num_params()["non_embedding"], counted on the meta device (no memory, no random numbers)."""
    with torch.device("meta"):
        return GPT(**kwargs).num_params()["non_embedding"]


def baseline_attention(baseline: str, attention: dict[str, Any]) -> dict[str, Any]:
    """The baseline's attention settings: its registry defaults, overridden by the settings it shares with
    this run's attention (so a num_heads or qkv_bias override applies to both sides of the comparison)."""
    knobs = get_variant(baseline).knobs
    shared = {key: value for key, value in attention.items() if key in knobs}
    return {"name": baseline, **knobs, **shared}


def _baseline_count(baseline: str, model: dict[str, Any]) -> int:
    attention = baseline_attention(baseline, model["attention"])
    try:
        return non_embedding_params({**model, "attention": attention})
    except (UserError, ValueError) as err:  # e.g. the baseline cannot use this position scheme
        raise ConfigError(
            f"model.match_params={baseline}: the baseline cannot be built with this model's settings ({err}); "
            "match to another variant, or set model.match_params=null."
        ) from err


def match_mlp_hidden(model: dict[str, Any], baseline: str, check_tolerance: bool = True) -> ParamMatch:
    """The MLP hidden width that brings `model` (GPT kwargs, attention included) closest to `baseline`'s
    non-embedding parameters. Raises ConfigError for an unknown variant or a match that cannot come within 1%
    (check_tolerance=False skips the 1% check: the task's first check, before the real vocabulary is known)."""
    if baseline not in available():
        raise ConfigError(
            f"model.match_params={baseline} is not an attention variant: set it to one of "
            f"{', '.join(available())} (e.g. model.match_params=multihead), or null."
        )
    model = {"vocab_size": 1, **model}  # the vocabulary adds the same to both sides; any size will do
    target = _baseline_count(baseline, model)
    start = model.get("mlp_hidden") or model.get("mlp_ratio", 4) * model["d_model"]
    at_start = non_embedding_params({**model, "mlp_hidden": start})
    per_unit = non_embedding_params({**model, "mlp_hidden": start + 1}) - at_start  # n_layers x (2 d_model + 1)
    hidden = start + round((target - at_start) / per_unit)
    variant = model["attention"]["name"]
    if hidden < 1:
        raise ConfigError(
            f"model.match_params={baseline}: attention={variant} has {at_start - target:,} more non-embedding "
            f"parameters than {baseline} at the same MLP width, more than the whole MLP of {start} hidden units "
            f"holds, so no MLP width can match: match to a larger baseline, raise model.mlp_ratio (or "
            f"model.mlp_hidden, the baseline's MLP width), or set model.match_params=null."
        )
    match = ParamMatch(baseline, target, non_embedding_params({**model, "mlp_hidden": hidden}), hidden)
    if check_tolerance and abs(match.relative_diff) > TOLERANCE:
        raise ConfigError(
            f"model.match_params={baseline}: the closest MLP width ({hidden}) gives attention={variant} "
            f"{match.non_embedding:,} non-embedding parameters against {baseline}'s {target:,} "
            f"({match.relative_diff:+.2%}, more than {TOLERANCE:.0%}): use a wider model (model.d_model), "
            "match to another variant, or set model.match_params=null."
        )
    return match


def resolve_match(kwargs: dict[str, Any]) -> tuple[dict[str, Any], ParamMatch | None]:
    """The GPT's kwargs with `match_params` resolved into `mlp_hidden` (and removed), and the match (or None).

    Without `vocab_size` in `kwargs` (a check before the tokenizer exists) the width is the same, since the
    vocabulary adds as much to both sides, but the 1% check waits for the real vocabulary (an untied head
    counts as non-embedding)."""
    kwargs = dict(kwargs)
    baseline = kwargs.pop("match_params", None)
    if baseline is None:
        return kwargs, None
    match = match_mlp_hidden(kwargs, baseline, check_tolerance="vocab_size" in kwargs)
    kwargs["mlp_hidden"] = match.mlp_hidden
    return kwargs, match


class ParamMatchReport(L.Callback):
    """Puts the match into metrics.json (`param_match`), counted on the model that was built and trained."""

    def __init__(self, match: ParamMatch) -> None:
        self.match = match

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = self.summary_fields(trainer, pl_module)["param_match"]
        log.info(
            "model.match_params=%s: mlp_hidden=%d gives %s non-embedding parameters, %s for %s (%+.3f%%)",
            record["baseline"],
            record["mlp_hidden"],
            f"{record['non_embedding']:,}",
            f"{record['baseline_non_embedding']:,}",
            record["baseline"],
            100 * record["relative_diff"],
        )

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {"param_match": self.match.record(pl_module.model.num_params()["non_embedding"])}
