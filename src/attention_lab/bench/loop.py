"""What does our training step cost? tokens/s of `Trainer.fit` against plain loops and a minimal reference GPT.

Every contender trains on the same batches (same datamodule and seed) with the same optimizer, schedule and
clipping: `training.optim.build_adamw` and `lr_lambda`, exactly what `GPTLitModule.configure_optimizers` uses.
The contenders (`CONTENDERS`):
- `hand` / `lightning`: our GPT (biases on, the chapter's model) in a plain loop / under `Trainer.fit` with the
  project's real logging (TensorBoard, throughput callback, progress bar; no validation, the plain loop has none);
  their ratio is what the Lightning loop costs;
- `reference` / `ours`: a minimal nanoGPT-style GPT written in `reference_gpt.py` (no biases) in the plain loop,
  and our full step with `model.bias=false` under `Trainer.fit`: the same parameters, so their ratio is what our
  model code, hooks and Lightning cost together (the target: at least 1.0);
- `ours_compiled`: `ours` with `compile=true`. Each compiled run starts from a reset dynamo; inductor's on-disk
  cache is a fresh folder per benchmark, so the first compiled run compiles from scratch (cold) and the later
  ones find its kernels (warm, as a user's second run would).

Each repeat runs every contender once, the one that goes first rotating (`timing.round_robin`), so the machine's
load hits all alike; a ratio is taken within a repeat, then the median over repeats. Each run times `steps`
steps after `warmup` untimed ones, and records how long those warm-up steps took (compilation included).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..data import TextDataModule
from ..errors import UserError
from ..training.callbacks import Throughput
from ..training.lit_module import GPTLitModule
from ..training.optim import build_adamw, effective_warmup, lr_lambda
from .machine import describe_machine, finish_machine
from .reference_gpt import ReferenceGPT
from .timing import round_robin

MODEL = {"context_length": 128, "d_model": 128, "n_layers": 4, "emb_dropout": 0.0, "resid_dropout": 0.0}
ATTENTION = {"name": "sdpa", "num_heads": 4, "dropout": 0.0}
OPTIM = {"lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 10, "min_lr_ratio": 0.1}


@dataclass(frozen=True)
class Contender:
    what: str
    loop: str  # "plain" or "lightning"
    model: str = "ours"  # or "reference"
    bias: bool = True
    compile: bool = False


CONTENDERS = {
    "hand": Contender("our GPT (biases on) in a plain loop", "plain"),
    "lightning": Contender("our GPT (biases on) under Trainer.fit with the project's logging", "lightning"),
    "reference": Contender("a minimal nanoGPT-style GPT without biases in a plain loop", "plain", "reference", False),
    "ours": Contender(
        "our GPT with model.bias=false under Trainer.fit with the project's logging", "lightning", bias=False
    ),
    "ours_compiled": Contender("`ours` with compile=true", "lightning", bias=False, compile=True),
}
DEFAULT_CONTENDERS = ("hand", "lightning", "reference", "ours")
RATIOS = (("lightning", "hand"), ("ours", "reference"), ("ours_compiled", "ours"))  # numerator, denominator


@dataclass
class LoopBenchmark:
    """What `run_loop_benchmark` measures; stored next to the numbers."""

    repeats: int = 5
    warmup: int = 10
    steps: int = 60
    batch_size: int = 16
    seed: int = 0
    cache_dir: str | None = ".cache/attention-lab"  # the token cache of the built-in corpus
    contenders: list[str] = field(default_factory=lambda: list(DEFAULT_CONTENDERS))


@dataclass
class Run:
    tokens_per_sec: float  # over the timed steps, wall clock
    warmup_seconds: float  # the `warmup` untimed steps before them; the first step compiles a compiled model
    tokens_per_cpu_sec: float  # over the timed steps' process CPU time: moves less with the machine's load


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


def _lit_module(dm: TextDataModule, seed: int, bias: bool = True, compile: bool = False) -> GPTLitModule:
    torch.manual_seed(seed)
    model = {**MODEL, "attention": ATTENTION, "vocab_size": dm.vocab_size, "bias": bias}
    return GPTLitModule(model=model, optim=OPTIM, compile=compile)


def reference_model(vocab_size: int, seed: int = 0) -> ReferenceGPT:
    """The reference GPT at the benchmark's shape."""
    torch.manual_seed(seed)
    shape = {k: MODEL[k] for k in ("context_length", "d_model", "n_layers")}
    return ReferenceGPT(vocab_size, num_heads=ATTENTION["num_heads"], **shape)


def plain_loop(model: nn.Module, dm: TextDataModule, warmup: int, steps: int) -> Run:
    """forward, backward, clip, AdamW step, schedule step, nothing else: tokens/s over `steps` after `warmup`."""
    model.train()
    optimizer = build_adamw(model, OPTIM, "cpu")
    total = warmup + steps  # the schedule GPTLitModule.configure_optimizers builds for a run of this length
    factor = lr_lambda(effective_warmup(OPTIM["warmup_steps"], total), total, OPTIM["min_lr_ratio"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    batches = iter(dm.train_dataloader())
    begin = start = time.perf_counter()
    cpu_start, tokens = time.process_time(), 0
    for step in range(warmup + steps):
        if step == warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
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
    return Run(tokens / (time.perf_counter() - start), start - begin, tokens / (time.process_time() - cpu_start))


class _StepClock(L.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch, and of the warm-up batches."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.tokens = warmup, 0.0, 0.0, 0
        self.cpu_start = self.cpu_end = 0.0  # process CPU time at the same two moments
        self.begin: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if self.begin is None:
            self.begin = time.perf_counter()
        if trainer.global_step == self.warmup and self.start == 0.0:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        if self.start:
            self.tokens += batch[0].numel()
            self.end, self.cpu_end = time.perf_counter(), time.process_time()


def lightning_run(module: GPTLitModule, dm: TextDataModule, warmup: int, steps: int, log_dir: str) -> Run:
    """`Trainer.fit` with TensorBoard, the throughput callback and a progress bar: tokens/s after `warmup`."""
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
    warmup_seconds = clock.start - (clock.begin or clock.start)
    return Run(
        clock.tokens / (clock.end - clock.start), warmup_seconds, clock.tokens / (clock.cpu_end - clock.cpu_start)
    )


def run_contender(name: str, dm: TextDataModule, spec: LoopBenchmark, log_dir: str) -> Run:
    """One run of contender `name` (a key of CONTENDERS)."""
    c = CONTENDERS[name]
    if c.model == "reference":
        model: nn.Module = reference_model(dm.vocab_size, spec.seed)
    else:
        module = _lit_module(dm, spec.seed, bias=c.bias, compile=c.compile)
        model = module.model
    if c.compile:
        torch._dynamo.reset()  # trace and compile again, as a new process would
    if c.loop == "plain":
        return plain_loop(model, dm, spec.warmup, spec.steps)
    return lightning_run(module, dm, spec.warmup, spec.steps, log_dir)


def _inductor_cache(folder: str, wanted: bool):
    """A fresh inductor cache for the compiled runs (the first compiles cold); nothing when none is compiled."""
    if not wanted:
        return nullcontext()
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    return temporary_cache_dir(folder)


def check_spec(spec: LoopBenchmark) -> None:
    if spec.repeats < 1 or spec.steps < 1 or spec.batch_size < 1 or spec.warmup < 0:
        raise UserError("repeats, steps and batch_size must be >= 1, and warmup >= 0")
    unknown = [name for name in spec.contenders if name not in CONTENDERS]
    if unknown or not spec.contenders:
        raise UserError(f"--contenders {' '.join(unknown)}: choose from {', '.join(CONTENDERS)}")


def run_loop_benchmark(spec: LoopBenchmark | None = None, command: str | None = None) -> dict[str, Any]:
    """`repeats` rounds of every contender on the CPU; tokens/s of each and the ratios within each round."""
    spec = spec or LoopBenchmark()
    check_spec(spec)
    names = list(dict.fromkeys(spec.contenders))
    dm = _datamodule(spec)
    machine = describe_machine("cpu", "float32")
    runs: dict[str, list[Run]] = {name: [] for name in names}
    compiled = any(CONTENDERS[n].compile for n in names)
    with tempfile.TemporaryDirectory() as tmp, _inductor_cache(str(Path(tmp) / "inductor"), compiled):
        for r, order in round_robin(names, spec.repeats):
            for name in order:
                runs[name].append(run_contender(name, dm, spec, str(Path(tmp) / f"{name}-{r}")))
    finish_machine(machine)
    return summarize_runs(runs, spec, machine, command)


def _ratio(runs: dict[str, list[Run]], top: str, bottom: str) -> dict[str, Any]:
    pairs = list(zip(runs[top], runs[bottom], strict=True))
    per_pair = [a.tokens_per_sec / b.tokens_per_sec for a, b in pairs]
    per_pair_cpu = [a.tokens_per_cpu_sec / b.tokens_per_cpu_sec for a, b in pairs]
    return {
        "per_pair": per_pair,
        "median": statistics.median(per_pair),
        "per_pair_cpu": per_pair_cpu,  # the same ratio in tokens per CPU second
        "median_cpu": statistics.median(per_pair_cpu),
    }


def summarize_runs(
    runs: dict[str, list[Run]], spec: LoopBenchmark, machine: dict[str, Any], command: str | None
) -> dict[str, Any]:
    """The result file: per contender its runs and medians, the ratios whose both sides ran, and (when the
    hand loop and Lightning both ran) the keys of the earlier hand-vs-Lightning file, unchanged."""
    contenders = {}
    for name, done in runs.items():
        tokens, warmups = [r.tokens_per_sec for r in done], [r.warmup_seconds for r in done]
        contenders[name] = {
            "what": CONTENDERS[name].what,
            "tokens_per_sec": tokens,
            "median_tokens_per_sec": statistics.median(tokens),
            "warmup_seconds": warmups,  # in run order: a compiled contender's first is the cold compile
            "median_warmup_seconds": statistics.median(warmups),
            "tokens_per_cpu_sec": [r.tokens_per_cpu_sec for r in done],
            "median_tokens_per_cpu_sec": statistics.median(r.tokens_per_cpu_sec for r in done),
        }
    result: dict[str, Any] = {
        "what": "tokens/s of our training step (Trainer.fit, real logging) vs plain loops and a minimal reference GPT",
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
        "contenders": contenders,
        "ratios": {f"{a}/{b}": _ratio(runs, a, b) for a, b in RATIOS if a in runs and b in runs},
    }
    if "ours_compiled" in runs:
        warm = contenders["ours_compiled"]["warmup_seconds"]
        result["compile"] = {
            "warmup_seconds_cold_cache": warm[0],
            "warmup_seconds_warm_cache": statistics.median(warm[1:]) if len(warm) > 1 else None,
            "eager_warmup_seconds": contenders["ours"]["median_warmup_seconds"] if "ours" in runs else None,
            "speedup": result["ratios"].get("ours_compiled/ours", {}).get("median"),
        }
    if "hand" in runs and "lightning" in runs:  # the keys loop_overhead.json has always had
        ratio = result["ratios"]["lightning/hand"]
        result |= {
            "hand_tokens_per_sec": contenders["hand"]["tokens_per_sec"],
            "lightning_tokens_per_sec": contenders["lightning"]["tokens_per_sec"],
            "ratio_per_pair": ratio["per_pair"],
            "median_ratio": ratio["median"],
            "median_hand": contenders["hand"]["median_tokens_per_sec"],
            "median_lightning": contenders["lightning"]["median_tokens_per_sec"],
        }
    result["machine"] = machine
    return result


def format_loop_benchmark(result: dict[str, Any]) -> str:
    """One line per repeat (every contender's tokens/s), then the medians and the median ratios."""
    contenders: dict[str, Any] = result["contenders"]
    names: Sequence[str] = list(contenders)
    lines = []
    for r in range(len(next(iter(contenders.values()))["tokens_per_sec"])):
        lines.append("   ".join(f"{n} {contenders[n]['tokens_per_sec'][r]:9,.0f}" for n in names) + "  tok/s")
    lines.append("median  " + "   ".join(f"{n} {contenders[n]['median_tokens_per_sec']:,.0f}" for n in names))
    for key, ratio in result["ratios"].items():
        spread = ", ".join(f"{v:.3f}" for v in ratio["per_pair"])
        lines.append(
            f"{key}: median {ratio['median']:.3f} (per repeat {spread}); per CPU second {ratio['median_cpu']:.3f}"
        )
    if "compile" in result:
        c = {k: float("nan") if v is None else v for k, v in result["compile"].items()}
        lines.append(
            f"compile warm-up {c['warmup_seconds_cold_cache']:.1f} s (cold cache), "
            f"{c['warmup_seconds_warm_cache']:.1f} s (warm); eager {c['eager_warmup_seconds']:.1f} s"
        )
    return "\n".join(lines)
