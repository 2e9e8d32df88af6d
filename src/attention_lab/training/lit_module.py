"""LightningModule around the GPT: loss, AdamW with warmup + cosine, validation loss/perplexity (and accuracy).

Labels of -100 are not answers (a recall probe labels only its answers): the loss ignores them, `val/loss` is the
mean over answer tokens (for text, every token), and `val/acc` is logged when the data module reports accuracy.

The module takes plain dicts (not a built model) and saves them as hyper-parameters, so a checkpoint
describes itself: `attention-lab generate` rebuilds the exact model from it without Hydra or pickled objects.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import GPT
from .accuracy import IGNORE_INDEX, AnswerAccuracy, answer_counts, batch_mean, wants_accuracy
from .optim import build_adamw, effective_warmup, lr_lambda


class GPTLitModule(L.LightningModule):
    """The GPT as a LightningModule (named so it is not confused with the LitGPT project)."""

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        tokenizer: dict[str, Any] | None = None,
        compile: bool = False,
        warmup_steps: int | None = None,
        init_seed: int | None = None,
    ):
        """model: GPT kwargs (incl. `attention` and `vocab_size`); optim: lr, weight_decay, betas, warmup_steps,
        min_lr_ratio; tokenizer: the tokenizer's state, kept so a checkpoint can decode its own samples;
        init_seed: GPT's (every parameter seeded by its name, so variants share their common weights). Kept out
        of `model` on purpose: it says how the weights started, not what the model is, so a resume compares
        the same settings and a checkpoint rebuilds its model without it."""
        super().__init__()
        self.save_hyperparameters()
        self.model = GPT(**model, init_seed=init_seed)
        self.compile_model = compile
        # what forward() calls: the model, or its compiled wrapper (configure_model). Set with object.__setattr__
        # so it is not registered as a submodule: the checkpoint holds the weights once, under `model.`.
        object.__setattr__(self, "_forward", self.model)

    def configure_model(self) -> None:
        if self.compile_model and self._forward is self.model:
            object.__setattr__(self, "_forward", torch.compile(self.model))

    def forward(self, idx: Tensor) -> Tensor:
        return self._forward(idx)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch  # (B, T), (B, T)
        logits = self(x)  # (B, T, vocab)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)

    def on_fit_start(self) -> None:
        # Lightning warns on any mid-epoch resume unless the DataLoader itself is stateful; ours resume through
        # EpochShuffleSampler (order fixed by seed and epoch, each rank's trained batches skipped), tested for
        # equal losses on one device and under ddp and ddp_spawn. Set here, in the process that trains (a
        # ddp_spawn worker too); the caller's catch_warnings scopes it to the fit.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
        # Under DDP Lightning asks for sync_dist=True on epoch-level logs; ours are already reduced over the ranks
        # (on_validation_epoch_end), so that advice would only average identical values again.
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|hp)/")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        # Lightning writes these only every `log_every_n_steps`; no host sync is forced here.
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        # running sums on the device: no host sync per batch, and a NaN loss stays visible (no NaN filtering)
        self._val_sum = torch.zeros((), device=self.device)
        self._val_count = torch.zeros((), device=self.device)  # answer tokens (for text: every token)
        self._val_correct = torch.zeros((), device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch  # (B, T), (B, T)
        loss_sum, count, correct = answer_counts(self(x).detach(), y)
        self._val_sum += loss_sum
        self._val_count += count
        self._val_correct += correct
        # RunGuard checks its finiteness (on the device) before any callback samples from the model
        return batch_mean(loss_sum, count)

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")  # all ranks' batches
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        loss = total / count  # mean over the whole val split's answer tokens
        self.log("val/loss", loss, prog_bar=True)
        if wants_accuracy(self.trainer):  # a text run has no answers to be right about: no meaningless acc
            correct = self.trainer.strategy.reduce(self._val_correct, reduce_op="sum")
            self.log("val/acc", correct / count, prog_bar=True)
        self.log("val/ppl", torch.exp(loss))
        self.log("hp/val_loss", loss)  # the metric of TensorBoard's HParams tab

    def configure_callbacks(self) -> list[L.Callback]:
        return [AnswerAccuracy()]  # val_acc into metrics.json (nothing for text runs)

    def configure_optimizers(self):
        cfg = self.hparams.optim
        optimizer = build_adamw(self.model, cfg, self.device, str(self.trainer.precision))  # fused: CPU, CUDA
        total = int(self.trainer.estimated_stepping_batches)
        warmup = self.hparams.warmup_steps
        warmup = effective_warmup(cfg["warmup_steps"], total) if warmup is None else warmup
        factor = lr_lambda(warmup, total, cfg["min_lr_ratio"])
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # Resuming continues the same random stream (dropout), so the next losses match an uninterrupted run.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_state" in checkpoint and torch.cuda.is_available():
            states = checkpoint["cuda_rng_state"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
