"""Loss and accuracy over answer positions, and the callback that puts `val_acc` into metrics.json.

Labels of -100 (IGNORE_INDEX, cross-entropy's `ignore_index`) mark positions that are not answers: a recall
probe labels only the tokens the sequence determines. Text data labels every position, so for text the sums
here give exactly the per-token mean loss the project always logged. Everything stays on the device; the
validation loop adds the per-batch tensors and reads them once, at the end of the validation.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def answer_counts(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(summed loss over answers, number of answers, answers whose argmax is right), as 0-d device tensors.

    logits (B, T, V), y (B, T) with IGNORE_INDEX where there is no answer.
    """
    flat_y = y.flatten()  # (B*T,)
    answers = flat_y != IGNORE_INDEX  # (B*T,)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), flat_y, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((logits.argmax(dim=-1).flatten() == flat_y) & answers).sum()
    return loss, answers.sum(), correct


def val_acc(trainer: L.Trainer) -> float | None:
    value = trainer.callback_metrics.get("val/acc")
    return None if value is None else float(value)


class AnswerAccuracy(L.Callback):
    """Keeps the last and best `val/acc` of a run whose data reports accuracy (a recall probe) for metrics.json.

    `val_acc` is the accuracy of the final model (the validation at trainer.max_steps), None for a run that
    stopped before it, like `val_loss`; `last_val_acc` and `best_val_acc` are there for any run that validated.
    A text run logs no accuracy and gets none of these fields.
    """

    def __init__(self) -> None:
        self.last: float | None = None
        self.best: float | None = None
        self.last_step: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = val_acc(trainer)  # a float already reduced over the val split: one read per validation
        if acc is None:
            return
        self.last, self.last_step = acc, trainer.global_step
        self.best = acc if self.best is None else max(self.best, acc)

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if self.last is None:
            return {}
        final = self.last if 0 < trainer.max_steps <= (self.last_step or 0) else None
        return {"val_acc": final, "last_val_acc": self.last, "best_val_acc": self.best}


def wants_accuracy(trainer: L.Trainer | None) -> bool:
    """Whether the run's data module labels answers (`reports_accuracy`, set by the probes)."""
    datamodule = None if trainer is None else getattr(trainer, "datamodule", None)
    return bool(getattr(datamodule, "reports_accuracy", False))


def batch_mean(loss_sum: Tensor, count: Tensor) -> Tensor:
    """The batch's mean loss over its answers (0 for a batch without answers, never NaN: a NaN means divergence)."""
    return loss_sum / count.clamp_min(1)


def zeros(device: torch.device) -> Tensor:
    return torch.zeros((), device=device)
