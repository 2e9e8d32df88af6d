"""How much does the Lightning training loop cost? tokens/s of `Trainer.fit` vs a minimal hand-written loop.

Both train the same GPT on the same batches (same datamodule, seed, optimizer groups, schedule, clipping: the
groups and the schedule come from `training.optim`, exactly what `GPTLitModule.configure_optimizers` uses);
the Lightning side runs with the project's real logging (TensorBoard, throughput callback, progress bar) but
without validation, since the hand loop has none. Each repeat runs both, the one that goes first alternating
(`timing.round_robin`), so the machine's load hits both alike; each run times `steps` steps after `warmup`
untimed ones.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ..data import TextDataModule
from ..errors import UserError
from ..training.callbacks import Throughput
from ..training.lit_module import GPTLitModule
from ..training.optim import adamw_param_groups, effective_warmup, lr_lambda
from .machine import describe_machine, finish_machine
from .timing import round_robin

MODEL = {"context_length": 128, "d_model": 128, "n_layers": 4, "emb_dropout": 0.0, "resid_dropout": 0.0}
ATTENTION = {"name": "sdpa", "num_heads": 4, "dropout": 0.0}
OPTIM = {"lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 10, "min_lr_ratio": 0.1}
CONTENDERS = ("hand", "lightning")


@dataclass
class LoopBenchmark:
    """What `run_loop_benchmark` measures; stored next to the numbers."""

    repeats: int = 5
    warmup: int = 10
    steps: int = 60
    batch_size: int = 16
    seed: int = 0
    cache_dir: str | None = ".cache/attention-lab"  # the token cache of the built-in corpus


def _datamodule(spec: LoopBenchmark) -> TextDataModule:
    dm = TextDataModule(
        tokenizer="char",
        context_length=MODEL["context_length"],
        batch_size=spec.batch_size,
        cache_dir=spec.cache_dir,
        seed=spec.seed,
    )
    dm.setup("fit")
    return dm


def _lit_module(dm: TextDataModule, seed: int) -> GPTLitModule:
    torch.manual_seed(seed)
    return GPTLitModule(model={**MODEL, "attention": ATTENTION, "vocab_size": dm.vocab_size}, optim=OPTIM)


def hand_loop(dm: TextDataModule, warmup: int, steps: int, seed: int = 0) -> float:
    """forward, backward, clip, AdamW step, schedule step: tokens/s over `steps` steps after `warmup`."""
    model = _lit_module(dm, seed).model.train()
    optimizer = torch.optim.AdamW(
        adamw_param_groups(model, OPTIM["weight_decay"]), lr=OPTIM["lr"], betas=tuple(OPTIM["betas"])
    )
    total = warmup + steps  # the schedule GPTLitModule.configure_optimizers builds for a run of this length
    factor = lr_lambda(effective_warmup(OPTIM["warmup_steps"], total), total, OPTIM["min_lr_ratio"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    batches = iter(dm.train_dataloader())
    start, tokens = 0.0, 0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        try:
            x, y = next(batches)  # (B, T), (B, T)
        except StopIteration:
            batches = iter(dm.train_dataloader())
            x, y = next(batches)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())  # logits (B, T, V) -> (B*T, V)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        tokens += x.numel() if step >= warmup else 0
    return tokens / (time.perf_counter() - start)


class _StepClock(L.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.tokens = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if trainer.global_step == self.warmup and self.start == 0.0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        if self.start:
            self.tokens += batch[0].numel()
            self.end = time.perf_counter()


def lightning_loop(dm: TextDataModule, warmup: int, steps: int, log_dir: str, seed: int = 0) -> float:
    """`Trainer.fit` with TensorBoard, the throughput callback and a progress bar: tokens/s after `warmup`."""
    module = _lit_module(dm, seed)
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


def run_loop_benchmark(spec: LoopBenchmark | None = None, command: str | None = None) -> dict[str, Any]:
    """`repeats` pairs of a hand loop and Lightning on the CPU; tokens/s of each and their ratio per pair."""
    spec = spec or LoopBenchmark()
    if spec.repeats < 1 or spec.steps < 1 or spec.batch_size < 1 or spec.warmup < 0:
        raise UserError("repeats, steps and batch_size must be >= 1, and warmup >= 0")
    dm = _datamodule(spec)
    machine = describe_machine("cpu", "float32")
    runs: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as tmp:
        for r, order in round_robin(CONTENDERS, spec.repeats):
            for name in order:
                if name == "hand":
                    runs[name].append(hand_loop(dm, spec.warmup, spec.steps, spec.seed))
                else:
                    log_dir = str(Path(tmp) / str(r))
                    runs[name].append(lightning_loop(dm, spec.warmup, spec.steps, log_dir, spec.seed))
    finish_machine(machine)
    hand, lightning = runs["hand"], runs["lightning"]
    ratios = [lt / h for lt, h in zip(lightning, hand, strict=True)]
    return {
        "what": "tokens/s of Trainer.fit (TensorBoard logging, throughput callback, progress bar) vs a hand loop",
        "command": command,
        "config": asdict(spec),
        "model": {
            **MODEL,
            "attention": ATTENTION,
            "tokenizer": "char",
            "batch_size": spec.batch_size,
            "dtype": "float32",
        },
        "warmup_steps": spec.warmup,
        "timed_steps": spec.steps,
        "hand_tokens_per_sec": hand,
        "lightning_tokens_per_sec": lightning,
        "ratio_per_pair": ratios,
        "median_ratio": statistics.median(ratios),
        "median_hand": statistics.median(hand),
        "median_lightning": statistics.median(lightning),
        "machine": machine,
    }


def format_loop_benchmark(result: dict[str, Any]) -> str:
    """One line per pair and the medians, for the terminal."""
    lines = [
        f"hand {hand:9,.0f} tok/s   lightning {lit:9,.0f} tok/s   ratio {ratio:.3f}"
        for hand, lit, ratio in zip(
            result["hand_tokens_per_sec"], result["lightning_tokens_per_sec"], result["ratio_per_pair"], strict=True
        )
    ]
    lines.append(
        f"median ratio {result['median_ratio']:.3f} (median hand {result['median_hand']:,.0f}, "
        f"lightning {result['median_lightning']:,.0f} tokens/s)"
    )
    return "\n".join(lines)
