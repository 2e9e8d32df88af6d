"""metrics.json: one record per run, whatever the outcome (ok, interrupted, diverged, failed, invalid).

Written by rank 0 where training ran (inside the worker under ddp_spawn), and always through a temporary file
and a rename, so a reader never sees half a record.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import lightning as L
from omegaconf import DictConfig, OmegaConf

from .. import config
from .callbacks import Throughput
from .length_eval import LengthEval
from .memory import PeakMemory

METRICS_FILE = "metrics.json"


def _json_safe(value: Any) -> Any:
    """NaN and inf are not JSON: a diverged loss is recorded as null (the status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def perplexity(loss: float | None) -> float | None:
    """exp(loss), None for a missing or non-finite loss; inf (written as null) where exp overflows: a loss of
    1e4 is finite but its perplexity is not a float, and math.exp would raise OverflowError."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(loss) if loss < 709.0 else math.inf


def write_metrics(folder: Path, metrics: dict[str, Any]) -> Path:
    metrics = _json_safe(metrics)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / METRICS_FILE
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".metrics-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def resume_command(overrides: list[str], checkpoint: Path, extra: list[str] | None = None, **replace: Any) -> str:
    """The exact command that resumes a run: its own overrides (with `replace`d values), `extra`, and ckpt_path."""
    replaced = {key.replace("__", "."): value for key, value in replace.items()}
    kept = [
        shlex.quote(o)
        for o in overrides
        if not o.startswith(("ckpt_path=", "hydra.")) and o.split("=", 1)[0].lstrip("+~") not in replaced
    ]
    kept += [shlex.quote(f"{key}={value}") for key, value in replaced.items()]
    kept += [shlex.quote(item) for item in extra or []]
    # Hydra's grammar rejects the = and , of run folder names unless quoted; the double quotes are the shell's
    return " ".join(["attention-lab", "train", *kept, f"\"ckpt_path='{checkpoint}'\""])


class RunSummary(L.Callback):
    """Collects metrics.json where training ran; rank 0 writes it at the end of fit.

    Other callbacks add fields by defining `summary_fields(trainer, pl_module) -> dict` (called for every
    outcome, so it must cope with a run that stopped early); the fields are merged into the record as they are.
    """

    def __init__(
        self, cfg: DictConfig, overrides: list[str], started: float, warmup_steps: int, sweep_job: bool = False
    ):
        # resolved here: a spawned worker has no Hydra context to resolve ${hydra:...} paths
        self.cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        self.overrides, self.started, self.warmup_steps = overrides, started, warmup_steps
        # a sweep job resumes as a single run into a new folder beside it (a preset would start the whole sweep)
        self.resume_extra = ["hydra.mode=RUN", f"hydra.run.dir={self.output_dir}-resumed"] if sweep_job else []
        self.metrics: dict[str, Any] | None = None
        self.memory: PeakMemory | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.paths.output_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.memory = PeakMemory(pl_module.device)
        self.memory.reset()

    def collect(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, **extra: Any) -> dict[str, Any]:
        def scalar(name: str) -> float | None:
            value = trainer.callback_metrics.get(name)
            return None if value is None else float(value)

        cfg = self.cfg
        checkpoint = trainer.checkpoint_callback
        best = None if checkpoint is None or checkpoint.best_model_score is None else float(checkpoint.best_model_score)
        throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
        final = scalar("val/loss") if status == "ok" else None
        last = self.output_dir / "checkpoints" / "last.ckpt"
        metrics = {
            "status": status,
            "attention": config.attention_label(cfg),
            "val_loss": final,
            "val_ppl": perplexity(final),
            "last_val_loss": scalar("val/loss"),
            "best_val_loss": best,
            "best_val_ppl": perplexity(best),
            "train_loss": scalar("train/loss"),
            "global_step": trainer.global_step,
            "max_steps": trainer.max_steps,
            "warmup_steps_used": self.warmup_steps,
            "tokens_seen": trainer.global_step
            * cfg.data.batch_size
            * cfg.model.context_length
            * trainer.accumulate_grad_batches
            * trainer.world_size,
            "tokens_per_sec": None if throughput is None else throughput.tokens_per_sec,
            "params": pl_module.model.num_params(),
            "kv_cache_bytes_per_token": pl_module.model.kv_cache_bytes_per_token(),
            "peak_memory_mb": None if self.memory is None else self.memory.read(),
            "peak_memory_source": None if self.memory is None else self.memory.source,
            "wall_time_sec": time.time() - self.started,
            "device": str(trainer.strategy.root_device),  # the module is back on the CPU after teardown
            "output_dir": str(self.output_dir),
            "overrides": self.overrides,
            "checkpoint": str(last) if last.is_file() else None,
            **extra,
        }
        lengths = next((c for c in trainer.callbacks if isinstance(c, LengthEval)), None)
        if lengths is not None and lengths.results is not None:  # eval.lengths: the final model at each length
            metrics.update(lengths.results.metrics())
        for callback in trainer.callbacks:  # any callback can add its own fields (probes, telemetry, FLOPs)
            fields = getattr(callback, "summary_fields", None)
            if callable(fields):
                metrics.update(fields(trainer, pl_module))
        if extra.get("stopped_during"):  # training had finished: there is nothing to resume
            metrics["note"] = (
                f"training finished (checkpoints/last.ckpt holds the final weights); the signal stopped the "
                f"{extra['stopped_during']} evaluation after it, whose results are missing"
            )
        elif status == "interrupted" and metrics["checkpoint"]:  # a diverged run would diverge again: no resume
            metrics["resume"] = resume_command(self.overrides, last, self.resume_extra)
        return metrics

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, **extra: Any) -> dict[str, Any]:
        self.metrics = self.collect(trainer, pl_module, status, **extra)
        if trainer.is_global_zero:
            write_metrics(self.output_dir, self.metrics)
        return self.metrics

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.finish(trainer, pl_module, "ok")
        if trainer.is_global_zero:
            print_summary(self.cfg, self.metrics)


def print_summary(cfg: DictConfig, metrics: dict[str, Any]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    out = Path(cfg.paths.output_dir)
    last = out / "checkpoints" / "last.ckpt"
    extend = resume_command(metrics["overrides"], last, trainer__max_steps=2 * metrics["max_steps"])
    accuracy = f"val acc {fmt(metrics['val_acc'], '.4f')}  " if "val_acc" in metrics else ""  # probes only
    print(
        f"\nattention={metrics['attention']}  val loss {fmt(metrics['val_loss'], '.4f')}  "
        f"val ppl {fmt(metrics['val_ppl'], '.2f')}  best val loss {fmt(metrics['best_val_loss'], '.4f')}  "
        f"{accuracy}{fmt(metrics['tokens_per_sec'], ',.0f')} tokens/s  {metrics['wall_time_sec']:.0f} s\n"
        f"run folder: {out}\n{tensorboard_hint(cfg.paths.log_dir)}\n"
        f"{_by_length_line(metrics)}"
        f"to train further: {extend}\n",
        flush=True,
    )


# The Time Series dashboard's first cards: TensorBoard reads pinned cards and the smoothing from the page's URL.
PINNED_SCALARS = ("val/loss", "train/loss", "val/ppl")
TENSORBOARD_PORT = 6006


def _shown(path: str | Path) -> str:
    """A path as a user would type it: relative to the working directory when under it."""
    path = Path(path)
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def tensorboard_command(logdir: str | Path) -> str:
    """A TensorBoard command that works from this shell as it is: `tensorboard` when the venv is active (it is
    on PATH), else the venv's own script (`.venv/bin/tensorboard`), else this Python's `-m tensorboard.main`.
    A plain `tensorboard --logdir outputs` fails ("command not found") when the venv is not activated."""
    script = Path(sys.executable).with_name("tensorboard")
    on_path = shutil.which("tensorboard")
    if on_path and script.is_file() and Path(on_path).resolve() == script.resolve():
        exe = "tensorboard"
    elif script.is_file():
        exe = shlex.quote(_shown(script))
    else:
        exe = f"{shlex.quote(_shown(sys.executable))} -m tensorboard.main"
    # TensorBoard keeps 10 images per tag unless told otherwise: an attention map per validation needs more
    return f"{exe} --logdir {shlex.quote(_shown(logdir))} --samples_per_plugin images=100"


def tensorboard_url(port: int = TENSORBOARD_PORT) -> str:
    """The page with the loss and perplexity cards pinned on top and smoothing off: with a few validation points,
    the default smoothing (0.6) draws a final val loss that no validation measured."""
    cards = ",".join(f'{{"plugin":"scalars","tag":"{tag}"}}' for tag in PINNED_SCALARS)
    return f"http://localhost:{port}/?pinnedCards={quote(f'[{cards}]', safe='')}&smoothing=0#timeseries"


def tensorboard_hint(logdir: str | Path) -> str:
    return f"TensorBoard: {tensorboard_command(logdir)}\n  then open {tensorboard_url()}"


def _by_length_line(metrics: dict[str, Any]) -> str:
    """The line `val loss by length: 128: 1.9300  256: 1.9712  512: n/a`, or "" without eval.lengths."""
    by_length = metrics.get("val_loss_by_length")
    if not by_length:
        return ""
    parts = [f"{n}: {'n/a' if v is None else format(v, '.4f')}" for n, v in by_length.items()]
    return "val loss by length: " + "  ".join(parts) + "\n"
