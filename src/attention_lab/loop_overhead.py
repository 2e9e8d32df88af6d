"""How much does the Lightning training loop cost? tokens/s of `Trainer.fit` vs a minimal hand-written loop.

Both train the same GPT on the same batches (same datamodule, seed, optimizer groups, schedule, clipping);
the Lightning side runs with the project's real logging (TensorBoard, throughput callback, progress bar)
but without validation, since the hand loop has none. The runs alternate (hand, lightning, hand, ...) so the
machine's load hits both alike; each run times `steps` steps after `warmup` untimed ones.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from .callbacks import Throughput
from .data import TextDataModule
from .module import LitGPT, lr_lambda

MODEL = {"context_length": 128, "d_model": 128, "n_layers": 4, "emb_dropout": 0.0, "resid_dropout": 0.0}
ATTENTION = {"name": "sdpa", "num_heads": 4, "dropout": 0.0}
OPTIM = {"lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 10, "min_lr_ratio": 0.1}


def _datamodule(batch_size: int, cache_dir: str | None) -> TextDataModule:
    dm = TextDataModule(
        tokenizer="char", context_length=MODEL["context_length"], batch_size=batch_size, cache_dir=cache_dir, seed=0
    )
    dm.setup("fit")
    return dm


def hand_loop(dm: TextDataModule, warmup: int, steps: int, seed: int = 0) -> float:
    """forward, backward, clip, AdamW step: tokens/s over `steps` steps after `warmup`."""
    torch.manual_seed(seed)
    module = LitGPT(model={**MODEL, "attention": ATTENTION, "vocab_size": dm.vocab_size}, optim=OPTIM)
    model = module.model.train()
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": OPTIM["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=OPTIM["lr"], betas=tuple(OPTIM["betas"]))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(OPTIM["warmup_steps"], warmup + steps, OPTIM["min_lr_ratio"])
    )
    batches = iter(dm.train_dataloader())
    start, tokens = 0.0, 0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(dm.train_dataloader())
            x, y = next(batches)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        tokens += x.numel() if step >= warmup else 0
    return tokens / (time.perf_counter() - start)


class _StepClock(L.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.tokens = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start == 0.0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start:
            self.tokens += batch[0].numel()
            self.end = time.perf_counter()


def lightning_loop(dm: TextDataModule, warmup: int, steps: int, log_dir: str, seed: int = 0) -> float:
    torch.manual_seed(seed)
    module = LitGPT(model={**MODEL, "attention": ATTENTION, "vocab_size": dm.vocab_size}, optim=OPTIM)
    clock = _StepClock(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warmup + steps,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        logger=L.pytorch.loggers.TensorBoardLogger(log_dir, name="", version="", default_hp_metric=False),
        callbacks=[clock, Throughput(log_every_n_steps=10), L.pytorch.callbacks.TQDMProgressBar(refresh_rate=5)],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    return clock.tokens / (clock.end - clock.start)


def compare(
    repeats: int = 5,
    warmup: int = 10,
    steps: int = 60,
    batch_size: int = 16,
    out: str | None = None,
    cache_dir: str | None = ".cache/attention-lab",
) -> dict[str, Any]:
    torch.set_num_threads(torch.get_num_threads())
    dm = _datamodule(batch_size, cache_dir)
    hand, lightning = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            hand.append(hand_loop(dm, warmup, steps))
            lightning.append(lightning_loop(dm, warmup, steps, os.path.join(tmp, str(r))))
    ratios = [lt / h for lt, h in zip(lightning, hand, strict=True)]
    result = {
        "what": "tokens/s of Trainer.fit (TensorBoard logging, throughput callback, progress bar) vs a hand loop",
        "model": {**MODEL, "attention": ATTENTION, "tokenizer": "char", "batch_size": batch_size, "dtype": "float32"},
        "warmup_steps": warmup,
        "timed_steps": steps,
        "hand_tokens_per_sec": hand,
        "lightning_tokens_per_sec": lightning,
        "ratio_per_pair": ratios,
        "median_ratio": statistics.median(ratios),
        "median_hand": statistics.median(hand),
        "median_lightning": statistics.median(lightning),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
        },
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
