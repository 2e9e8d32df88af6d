"""Gradient accumulation with GPTLitModule: the micro-batches of one cycle add up to the gradient of the whole
batch (Lightning zeroes the gradients once per cycle, before the first micro-batch's backward)."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attention_lab.training.lit_module import GPTLitModule

# the module has a validation_step; these tests train without validation data on purpose
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step`")

VOCAB, T = 11, 8
MODEL = {
    "vocab_size": VOCAB,
    "context_length": T,
    "d_model": 16,
    "n_layers": 2,
    "emb_dropout": 0.0,
    "resid_dropout": 0.0,
    "attention": {"name": "sdpa", "num_heads": 2, "dropout": 0.0},
}
OPTIM = {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 0, "min_lr_ratio": 0.1}


class GradientWatch(L.Callback):
    """Records, at each step, whether any gradient is held at the start of the batch, and the gradients the
    optimizer is about to apply."""

    def __init__(self) -> None:
        self.held_at_batch_start: list[bool] = []
        self.applied: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.held_at_batch_start.append(any(p.grad is not None for p in pl_module.parameters()))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.applied.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def _fit(batches: torch.Tensor, batch_size: int, accumulate: int, max_steps: int) -> GradientWatch:
    """Train a fresh module (same initial weights every time) on `batches` rows in order; watch its gradients."""
    torch.manual_seed(0)
    module = GPTLitModule(model=MODEL, optim=OPTIM)
    data = DataLoader(TensorDataset(batches[:, :-1], batches[:, 1:]), batch_size=batch_size, shuffle=False)
    watch = GradientWatch()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch],
    )
    trainer.fit(module, train_dataloaders=data)
    return watch


@pytest.fixture
def rows() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, T + 1), generator=torch.Generator().manual_seed(1))  # (N, T + 1)


def test_accumulated_micro_batches_give_the_gradient_of_the_whole_batch(rows: torch.Tensor) -> None:
    """Two micro-batches of 2 rows, accumulated, are one step on the 4 rows: nothing is freed between them."""
    accumulated = _fit(rows[:4], batch_size=2, accumulate=2, max_steps=1)
    whole = _fit(rows[:4], batch_size=4, accumulate=1, max_steps=1)
    (got,), (expected,) = accumulated.applied, whole.applied
    assert got.keys() == expected.keys() and len(got) > 0
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert accumulated.held_at_batch_start == [False, True], "the first micro-batch's gradient is kept for the second"
