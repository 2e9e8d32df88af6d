"""The optimizer and the learning-rate schedule: one definition, used by training and the loop benchmark."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups that decay matrices and embeddings only; biases and LayerNorm parameters are left alone,
    because shrinking a gain or an offset towards zero regularises nothing useful."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def lr_lambda(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Multiplier on the base lr: linear warmup to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def effective_warmup(warmup_steps: int, max_steps: int) -> int:
    """Warmup that fits the run: a smoke run (`trainer.max_steps=10`) must not fail on the default warmup.

    When the configured warmup would last the whole run, it is cut to a tenth of the run (at least 1 step),
    so the lr still reaches its peak and decays; the task logs and records the value it used.
    """
    return warmup_steps if warmup_steps < max_steps else max(1, max_steps // 10)
