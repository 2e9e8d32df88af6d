"""The Hydra task: validate the config, build data/model/trainer from it, fit, write metrics.json.

Order matters for the user: every check that can fail cheaply (names, knobs, shapes, hardware, paths) runs
before the corpus is tokenized, and the corpus is checked against the context length before the model is
built. In a sweep (-m) a failing job is recorded in its folder and the sweep goes on.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from .attention import build_attention, resolve_knobs
from .callbacks import HParams, Throughput, peak_memory_mb
from .checkpoint import check_same_model, read_checkpoint
from .module import LitGPT

log = logging.getLogger(__name__)

MAX_SUFFIX = 120  # folder names are capped at 255 bytes; the full overrides are in .hydra/overrides.yaml


def run_suffix(overrides: str) -> str:
    """ "_attention=gqa,..." after the timestamp in run folder names; shortened (with a hash) when too long."""
    if not overrides:
        return ""
    overrides = overrides.replace("/", "_")
    if len(overrides) > MAX_SUFFIX:
        digest = hashlib.sha1(overrides.encode()).hexdigest()[:8]
        overrides = f"{overrides[: MAX_SUFFIX - 9]}-{digest}"
    return f"_{overrides}"


OmegaConf.register_new_resolver("run_suffix", run_suffix, replace=True)


class ConfigError(ValueError):
    """The composed config cannot work; the message names the setting and the fix."""


# --------------------------------------------------------------------------------------------- validation
def _validate_attention_and_model(cfg: DictConfig) -> None:
    m = cfg.model
    for key in ("context_length", "d_model", "n_layers"):
        if not isinstance(m[key], int) or m[key] < 1:
            raise ConfigError(f"model.{key}={m[key]!r} must be a positive integer.")
    for key in ("emb_dropout", "resid_dropout"):
        if not 0.0 <= m[key] < 1.0:
            raise ConfigError(f"model.{key}={m[key]} must be in [0, 1).")
    knobs = attention_knobs(cfg)
    resolve_knobs(cfg.attention.name, knobs)
    # one layer with a short context: checks shapes and knobs without allocating a (T, T) mask for a huge T
    build_attention(cfg.attention.name, m.d_model, min(m.context_length, 16), **knobs)


def _validate_data(cfg: DictConfig) -> None:
    d = cfg.data
    if OmegaConf.is_missing(d, "path"):
        raise ConfigError("data=text needs a corpus: add data.path=<file, folder or glob> (or use data=default).")
    path = d.get("path")
    if path is not None and not (os.path.exists(path) or glob.glob(str(path), recursive=True)):
        raise ConfigError(
            f"data.path={path} does not exist: point it at a text file, a folder of .txt files or a glob "
            "(quote globs), or drop data.path to use the built-in corpus."
        )
    if d.tokenizer not in ("gpt2", "char"):
        raise ConfigError(f"data.tokenizer={d.tokenizer!r} is unknown: use data.tokenizer=gpt2 or data.tokenizer=char.")


def _validate_trainer(cfg: DictConfig, multirun: bool) -> None:
    t = cfg.trainer
    accelerator, precision, strategy = str(t.accelerator), str(t.precision), str(t.strategy)
    cuda = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible: use trainer=cpu (or trainer=default, "
            "which picks the GPU when there is one)."
        )
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda)
    if precision.startswith("16") and not on_gpu:
        raise ConfigError(
            f"trainer.precision={precision} needs a GPU: on the CPU use trainer.precision=32-true or bf16-mixed."
        )
    if precision.startswith("bf16") and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision={precision}: this GPU has no bfloat16; use 16-mixed or 32-true.")
    if strategy.startswith("fsdp") and not on_gpu:
        raise ConfigError("trainer=fsdp needs GPUs: use trainer=ddp with trainer.accelerator=cpu on the CPU.")
    if strategy == "ddp" and multirun and t.devices not in (1, "1"):
        raise ConfigError(
            "trainer=ddp cannot run inside a sweep (-m): Lightning re-launches every rank with the original "
            "command line, so each rank would start the whole sweep again. Use trainer=ddp_spawn for sweeps, "
            "or run the ddp job on its own without -m."
        )
    if not isinstance(t.max_steps, int) or t.max_steps < 1:
        raise ConfigError(
            f"trainer.max_steps={t.max_steps}: runs here are step-based (warmup and cosine schedule over max_steps); "
            "set trainer.max_steps to a positive number of optimizer steps, e.g. trainer.max_steps=300."
        )
    if cfg.optim.warmup_steps >= t.max_steps:
        raise ConfigError(
            f"optim.warmup_steps={cfg.optim.warmup_steps} >= trainer.max_steps={t.max_steps}: the lr would never "
            "reach its peak; lower optim.warmup_steps or raise trainer.max_steps."
        )


def validate_config(cfg: DictConfig, multirun: bool = False) -> None:
    """Every cheap check, before any tokenizing, model building or trainer start."""
    _validate_attention_and_model(cfg)
    _validate_data(cfg)
    _validate_trainer(cfg, multirun)
    if cfg.ckpt_path is not None:
        check_same_model(read_checkpoint(cfg.ckpt_path), model_kwargs(cfg, None), cfg.ckpt_path)


# ---------------------------------------------------------------------------------------------- building
def attention_knobs(cfg: DictConfig) -> dict[str, Any]:
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    return {k: v for k, v in attention.items() if k != "name"}


def model_kwargs(cfg: DictConfig, vocab_size: int | None) -> dict[str, Any]:
    """GPT(**kwargs); vocab_size None means "whatever the checkpoint says" (only used for comparison)."""
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs["attention"] = OmegaConf.to_container(cfg.attention, resolve=True)
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    return kwargs


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def flat_hparams(cfg: DictConfig, module: LitGPT) -> dict[str, Any]:
    container = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in ("attention", "model", "data", "trainer", "optim", "seed", "compile")
    }
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not key.startswith("_"):
                    walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", container)
    for key, value in module.model.num_params().items():
        flat[f"params/{key}"] = value
    flat["kv_cache_bytes_per_token"] = module.model.kv_cache_bytes_per_token()
    return flat


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------- training
def train(cfg: DictConfig, multirun: bool = False) -> dict[str, Any]:
    started = time.time()  # wall clock: comparable across the spawned workers of ddp_spawn
    validate_config(cfg, multirun)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")  # raises before the model exists if the corpus is shorter than the context

    model = model_kwargs(cfg, datamodule.vocab_size)
    if cfg.ckpt_path is not None:  # now with vocab_size: a resume with another tokenizer fails here
        check_same_model(read_checkpoint(cfg.ckpt_path), model, cfg.ckpt_path)
    module = LitGPT(
        model=model,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        tokenizer=datamodule.tokenizer.state(),
        compile=cfg.compile,
    )
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    callbacks.append(HParams(flat_hparams(cfg, module), initial_loss=math.log(datamodule.vocab_size)))
    summary = RunSummary(cfg, started)
    callbacks += [ValidateAtLastStep(), summary]
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    with warnings.catch_warnings():
        if trainer.world_size == 1:
            # Lightning warns on any mid-epoch resume unless the DataLoader itself is stateful; ours resumes
            # through EpochShuffleSampler (order fixed by seed and epoch, trained batches skipped), tested for
            # equal losses. Under DDP that skip is not applied, so the warning stays.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    if summary.metrics is None:  # ddp_spawn: the summary was written by rank 0 of the spawned workers
        return json.loads((_output_dir(cfg) / "metrics.json").read_text())
    return summary.metrics


class ValidateAtLastStep(L.Callback):
    """Validate (and so checkpoint) at the last step even when it is not a multiple of val_check_interval,
    so metrics.json, last.ckpt and best.ckpt all describe the final weights. `should_stop` is Lightning's
    own way to ask for a validation before stopping; every rank computes the same condition."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class RunSummary(L.Callback):
    """Collects metrics.json where training ran (in the worker under ddp_spawn); rank 0 writes and prints it."""

    def __init__(self, cfg: DictConfig, started: float):
        # resolved here: a spawned worker has no Hydra context to resolve ${hydra:...} paths or read overrides
        self.cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        self.overrides, self.started = _overrides(), started
        self.metrics: dict[str, Any] | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = {**collect_metrics(self.cfg, trainer, pl_module, self.started), "overrides": self.overrides}
        if trainer.is_global_zero:
            write_metrics(_output_dir(self.cfg) / "metrics.json", self.metrics)
            print_summary(self.cfg, self.metrics)


def collect_metrics(cfg: DictConfig, trainer: L.Trainer, module: LitGPT, started: float) -> dict[str, Any]:
    def scalar(name: str) -> float | None:
        value = trainer.callback_metrics.get(name)
        return None if value is None else float(value)

    checkpoint = trainer.checkpoint_callback
    best = None if checkpoint is None or checkpoint.best_model_score is None else float(checkpoint.best_model_score)
    throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
    final = scalar("val/loss")
    return {
        "status": "ok",
        "attention": cfg.attention.name,
        "val_loss": final,
        "val_ppl": None if final is None else math.exp(final),
        "best_val_loss": best,
        "best_val_ppl": None if best is None else math.exp(best),
        "train_loss": scalar("train/loss"),
        "global_step": trainer.global_step,
        "tokens_seen": trainer.global_step
        * cfg.data.batch_size
        * cfg.model.context_length
        * trainer.accumulate_grad_batches
        * trainer.world_size,
        "tokens_per_sec": None if throughput is None else throughput.tokens_per_sec,
        "params": module.model.num_params(),
        "kv_cache_bytes_per_token": module.model.kv_cache_bytes_per_token(),
        "peak_memory_mb": peak_memory_mb(module.device),
        "wall_time_sec": time.time() - started,
        "device": str(module.device),
        "output_dir": str(_output_dir(cfg)),
    }


def print_summary(cfg: DictConfig, metrics: dict[str, Any]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    out = _output_dir(cfg)
    print(
        f"\nattention={metrics['attention']}  val loss {fmt(metrics['val_loss'], '.4f')}  "
        f"val ppl {fmt(metrics['val_ppl'], '.2f')}  best val loss {fmt(metrics['best_val_loss'], '.4f')}  "
        f"{fmt(metrics['tokens_per_sec'], ',.0f')} tokens/s  {metrics['wall_time_sec']:.0f} s\n"
        f"run folder: {out}\nTensorBoard: tensorboard --logdir {Path(cfg.paths.log_dir)}\n"
        f"resume:     python scripts/train.py <same overrides> \"ckpt_path='{out / 'checkpoints' / 'last.ckpt'}'\"\n",
        flush=True,
    )


def main(cfg: DictConfig) -> float:
    """Hydra entry: returns the final val loss, the metric a sweeper optimises."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg, multirun)
    except Exception as exc:
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            out = _output_dir(cfg)
            write_metrics(
                out / "metrics.json",
                {
                    "status": "failed",
                    "attention": cfg.attention.get("name"),
                    "overrides": _overrides(),
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            (out / "error.txt").write_text(traceback.format_exc())
        if not multirun:
            raise
        log.error(
            "job failed, the sweep goes on: %s: %s (see %s/error.txt)", type(exc).__name__, exc, cfg.paths.output_dir
        )
        return float("inf")
    return metrics["val_loss"] if metrics["val_loss"] is not None else float("inf")
