"""The Hydra task: validate the config, build data/model/trainer from it, fit, and record how the run ended.

Order matters for the user: every check that can fail cheaply (settings, hardware, paths, the checkpoint)
runs before the corpus is tokenized, and the corpus is checked before the model is built. Each way a run can
end leaves `metrics.json` with its `status`:
- ok: trained to `trainer.max_steps`;
- interrupted: SIGINT/SIGTERM; a checkpoint at the last finished step and the command that resumes it (exit 130/143);
- diverged: the loss or the weights went non-finite; the last good checkpoint is kept (exit 3);
- failed: a programming error, with error.txt (the traceback is printed as well);
- invalid (sweeps only): a user's mistake in one job; a single run instead prints it and removes its folder (exit 2);
- unsupported (sweeps only): a variant x position scheme pair that cannot exist (linear + alibi), a hole in a grid.
In a sweep a failed, invalid or diverged job is recorded and the sweep goes on; a signal stops the sweep.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from .. import config
from ..attention import UnsupportedPosition
from ..checkpoint import (
    CheckpointError,
    PreloadedCheckpointIO,
    check_same_model,
    check_same_optim,
    check_same_tokenizer,
    checkpoint_step,
    read_checkpoint,
)
from ..errors import USAGE_EXIT, UserError
from . import parallel, sweep
from .callbacks import HParams
from .guards import LastCheckpoint, RunDiverged, RunGuard, RunInterrupted, SignalFlag, StopNow
from .hparams import attention_hparams
from .length_eval import LengthEval
from .lit_module import GPTLitModule
from .optim import effective_warmup
from .param_match import ParamMatch, ParamMatchReport, resolve_match
from .progress import quiet_library_noise
from .run_dir import earlier_attempt, register_resolvers, release_unused
from .summary import RunSummary, write_metrics
from .sweep import format_stopped_sweep, stopped_sweep_report
from .tuning import apply_tuned

log = logging.getLogger(__name__)
DIVERGED_EXIT = 3

register_resolvers()


def model_settings(cfg: DictConfig, vocab_size: int | None) -> tuple[dict[str, Any], ParamMatch | None]:
    """GPT(**kwargs) and the parameter match: `model.match_params` becomes the `mlp_hidden` it resolves to, so a
    checkpoint holds the width itself. vocab_size None leaves it out (a check before the tokenizer exists)."""
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs["attention"] = OmegaConf.to_container(cfg.attention, resolve=True)
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    return resolve_match(kwargs)


def model_kwargs(cfg: DictConfig, vocab_size: int | None) -> dict[str, Any]:
    """GPT(**kwargs) (see model_settings)."""
    return model_settings(cfg, vocab_size)[0]


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def _configured_plugins(trainer_cfg: DictConfig) -> list[Any]:
    """`trainer.plugins` as a list of objects. The task passes its own plugins as a keyword, which would
    otherwise replace the configured ones (e.g. a SLURMEnvironment with its requeue signal) instead of adding."""
    configured = trainer_cfg.get("plugins")
    if configured is None:
        return []
    items = list(configured) if OmegaConf.is_list(configured) else [configured]
    return [instantiate(item) if OmegaConf.is_config(item) else item for item in items]


def _take_over_save_last(callbacks: list[Any]) -> list[LastCheckpoint]:
    """Every ModelCheckpoint's `save_last=True` becomes a LastCheckpoint that rewrites last.ckpt at each validation
    (see LastCheckpoint: Lightning 2.6 would rewrite it only when the val loss improved)."""
    savers = []
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last is True and callback.dirpath is not None:
            callback.save_last = False  # one writer of last.ckpt, not two on the validations that improve
            name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
            savers.append(LastCheckpoint(Path(callback.dirpath) / name))
    return savers


def _length_eval(cfg: DictConfig, flag: SignalFlag) -> list[LengthEval]:
    """The final model's loss at each of `eval.lengths` x context_length; none when the list is empty or the
    config predates the `eval` section."""
    section = cfg.get("eval") or {}
    lengths = list(section.get("lengths") or [])
    return [LengthEval(lengths, section.get("position_buckets", 16), flag)] if lengths else []


def flat_hparams(cfg: DictConfig, module: GPTLitModule) -> dict[str, Any]:
    sections = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in ("attention", "model", "data", "trainer", "optim", "seed", "compile")
    }
    flat = {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in config.flatten(sections).items()
    }
    flat["model.layers"] = config.attention_label(cfg) if cfg.model.get("layers") is not None else "none"
    # every variant's settings in every run, with effective values (the HParams tab drops runs missing a column)
    flat.update(
        attention_hparams(
            cfg.attention.name, config.attention_settings(cfg), cfg.model.d_model, cfg.model.context_length
        )
    )
    flat.update({f"params/{key}": value for key, value in module.model.num_params().items()})
    flat["kv_cache_bytes_per_token"] = module.model.kv_cache_bytes_per_token()
    return flat


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def check_resumable(checkpoint: dict[str, Any], cfg: DictConfig) -> None:
    """Everything about a resume that can be checked before the data is read."""
    path = cfg.ckpt_path
    check_same_model(checkpoint, model_kwargs(cfg, None), path)
    check_same_optim(checkpoint, OmegaConf.to_container(cfg.optim, resolve=True), path)
    step, max_steps = checkpoint_step(checkpoint), cfg.trainer.max_steps
    if step >= max_steps:
        raise CheckpointError(
            f"ckpt_path={path} is a finished run: it stopped at step {step} and trainer.max_steps={max_steps}, so "
            f"there is nothing left to train. To train further, raise trainer.max_steps (e.g. "
            f"trainer.max_steps={2 * max(step, 1)}) with the same ckpt_path; the cosine schedule then stretches "
            "to the new total."
        )


class ValidateAtLastStep(L.Callback):
    """Validate (and so checkpoint) at the last step even when it is not a multiple of val_check_interval,
    so metrics.json, last.ckpt and best.ckpt all describe the final weights. `should_stop` is Lightning's
    own way to ask for a validation before stopping; every rank computes the same condition."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def train(cfg: DictConfig, multirun: bool = False) -> dict[str, Any]:
    """Validate, build and fit; returns the metrics. From the first line a signal stops the run cleanly."""
    quiet_library_noise()  # Lightning's adverts and repeated device lines, warnings about its own internals
    flag = SignalFlag()
    flag.install()
    try:
        return _train(cfg, multirun, flag)
    finally:
        flag.restore()


def _train(cfg: DictConfig, multirun: bool, flag: SignalFlag) -> dict[str, Any]:
    started = time.time()  # wall clock: comparable across the spawned workers of ddp_spawn
    output_dir = Path(cfg.paths.output_dir)
    earlier = earlier_attempt(output_dir, multirun)  # a job of a resumed sweep, or a job SLURM requeued
    if earlier is not None and earlier.keep:
        log.warning("%s ended %s in an earlier attempt: kept as it is, not trained again", output_dir, earlier.status)
        return earlier.record or {}
    if earlier is not None and earlier.checkpoint is not None:  # the folder's newest checkpoint wins over ckpt_path
        log.warning("resuming %s (earlier attempt: %s) from %s", output_dir, earlier.status, earlier.checkpoint)
        with open_dict(cfg):
            cfg.ckpt_path = str(earlier.checkpoint)
    tuned = apply_tuned(cfg)  # tuned=<file>: this variant's optim settings, validated below like typed ones
    config.validate(cfg, multirun)
    model_settings(cfg, None)  # model.match_params: a match no MLP width can reach fails before the corpus is read
    checkpoint = None
    if cfg.ckpt_path is not None:
        checkpoint = read_checkpoint(cfg.ckpt_path)  # the one read of the file, weights_only=True
        check_resumable(checkpoint, cfg)
    warmup = effective_warmup(cfg.optim.warmup_steps, cfg.trainer.max_steps)
    if checkpoint is not None:  # extending a run keeps its warmup; recomputing it could restart the warmup mid-run
        warmup = checkpoint["hyper_parameters"].get("warmup_steps", warmup)
    elif warmup != cfg.optim.warmup_steps:
        log.warning(
            "optim.warmup_steps=%d >= trainer.max_steps=%d: warming up for %d steps instead (a tenth of the run)",
            cfg.optim.warmup_steps,
            cfg.trainer.max_steps,
            warmup,
        )
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")  # raises before the model exists if the corpus is shorter than the context
    model, match = model_settings(cfg, datamodule.vocab_size)
    if checkpoint is not None:
        check_same_model(checkpoint, model, cfg.ckpt_path)
        check_same_tokenizer(checkpoint, datamodule.tokenizer.state(), cfg.ckpt_path)
    module = GPTLitModule(
        model=model,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        tokenizer=datamodule.tokenizer.state(),
        compile=cfg.compile,
        warmup_steps=warmup,
        init_seed=cfg.seed,  # common random numbers: every variant starts its shared weights from the same numbers
    )
    # the model was built on a fork of the global stream; re-seeding makes it certain that dropout starts from
    # the same state whatever attention (or anything else) was built
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    guard = RunGuard(flag, output_dir / "checkpoints", check_every=cfg.trainer.log_every_n_steps)
    summary = RunSummary(cfg, _overrides(), started, warmup, sweep_job=multirun)
    # the guard first: its validation-loss check must run before the configured callbacks sample from the model
    callbacks = [
        guard,
        *callbacks,
        *_take_over_save_last(callbacks),
        HParams(flat_hparams(cfg, module), initial_loss=math.log(datamodule.vocab_size)),
        ValidateAtLastStep(),
        *([ParamMatchReport(match)] if match is not None else []),  # metrics.json's param_match
        *([tuned] if tuned is not None else []),  # metrics.json's tuned
        *_length_eval(cfg, flag),  # at on_train_end, so its results are there when the summary collects at on_fit_end
        summary,
    ]
    loggers = _instantiate_group(cfg.get("logger"))
    plugins = _configured_plugins(cfg.trainer)  # e.g. SLURMEnvironment(auto_requeue=...): kept, not replaced
    if checkpoint is not None:
        plugins.append(PreloadedCheckpointIO(cfg.ckpt_path, checkpoint))
    # our loaders shard themselves per rank (data/loading.py): Lightning must not wrap their samplers again
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, use_distributed_sampler=False
    )

    flag.deferred = True  # training: a signal now stops at the next step boundary, with a checkpoint
    try:
        with warnings.catch_warnings():  # filters set during fit (GPTLitModule.on_fit_start) end with it
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except RunInterrupted as stop:
        during = {"stopped_during": stop.during} if stop.during else {}
        summary.finish(trainer, module, "interrupted", signal=stop.signum, stopped_at_step=stop.step, **during)
        raise
    except (SIGTERMException, KeyboardInterrupt, StopNow) as exc:  # a signal off a step boundary (e.g. validation)
        signum = flag.signum or (15 if isinstance(exc, SIGTERMException) else 2)
        summary.finish(trainer, module, "interrupted", signal=signum, stopped_at_step=trainer.global_step)
        raise RunInterrupted(signum, trainer.global_step, guard.saved) from exc
    except RunDiverged as exc:
        summary.finish(
            trainer,
            module,
            "diverged",
            diverged_at_step=exc.step,
            error=str(exc),
            fix="lower optim.lr (or raise optim.warmup_steps) and start a new run; checkpoint is the last good one",
        )
        raise

    if summary.metrics is None:  # ddp_spawn: the summary was written by rank 0 of the spawned workers
        return json.loads((output_dir / "metrics.json").read_text())
    return summary.metrics


def _is_rank_zero() -> bool:
    ranks = ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # SLURM_PROCID: the ranks srun starts (multi-node jobs)
    return all(int(os.environ.get(name) or 0) == 0 for name in ranks)


def _record(out: Path, status: str, cfg: DictConfig, exc: BaseException) -> None:
    if _is_rank_zero():
        write_metrics(
            out,
            {
                "status": status,
                "attention": config.attention_label(cfg),
                "overrides": _overrides(),
                "error": f"{type(exc).__name__}: {exc}",
            },
        )
        (out / "error.txt").write_text(traceback.format_exc())


def _remove_new_run_folder(out: Path) -> None:
    """A single run that failed on a user's mistake leaves no half-made folder (only what Hydra put there)."""
    if out.is_dir() and not (out / "checkpoints").exists() and not (out / "metrics.json").exists():
        shutil.rmtree(out, ignore_errors=True)


def _recorded_resume(out: Path) -> str | None:
    """The resume command the run's metrics.json holds (RunSummary wrote it when the signal stopped the run)."""
    record = out / "metrics.json"
    return json.loads(record.read_text()).get("resume") if record.is_file() else None


def _stop_sweep(out: Path) -> None:
    hydra = HydraConfig.get()
    sweep_dir = Path(hydra.sweep.dir)
    report = stopped_sweep_report(sweep_dir, int(hydra.job.num), _recorded_resume(out))
    (sweep_dir / "sweep_status.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_stopped_sweep(report, sweep_dir), file=sys.stderr, flush=True)


def main(cfg: DictConfig) -> float:
    """Hydra entry: returns the final val loss, the metric a sweeper optimises."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    out = Path(cfg.paths.output_dir)
    release_unused(out)
    # every job was checked before the first started (sweep.SweepControl, in the launching process)
    kind = parallel.launcher_kind(HydraConfig.get().launcher.get("_target_")) if multirun else "in_process"
    worker = parallel.in_worker(kind)  # beside other jobs, in a process of its own: it must return, not raise
    sweep_dir = Path(HydraConfig.get().sweep.dir) if multirun else out
    if worker and parallel.stop_requested(sweep_dir) is not None:  # the sweep was stopped before this job began
        shutil.rmtree(out, ignore_errors=True)
        return float("inf")
    try:
        with parallel.job_devices(cfg, kind), parallel.stop_watch(sweep_dir) if worker else nullcontext():
            return train(cfg, multirun).get("val_loss") or float("inf")
    except UnsupportedPosition as err:
        if not multirun:
            _remove_new_run_folder(out)
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_EXIT) from None
        record = {"status": sweep.UNSUPPORTED, "attention": config.attention_label(cfg), "overrides": _overrides()}
        write_metrics(out, {**record, "position": cfg.model.get("position"), "reason": str(err)})
        log.warning("job skipped, the sweep goes on: %s", err)
    except UserError as err:
        if not multirun:
            _remove_new_run_folder(out)
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_EXIT) from None
        _record(out, "invalid", cfg, err)
        log.error("job has an invalid setting, the sweep goes on: %s", err)
    except RunInterrupted as stop:
        print(f"\nstopped by {signal.Signals(stop.signum).name} at step {stop.step}: {out}", file=sys.stderr)
        resume = _recorded_resume(out)
        if resume:
            print(f"resume: {resume}", file=sys.stderr, flush=True)
        # a one-process sweep stops here; local workers' launcher reports the stopped sweep itself, and the other
        # jobs of a SLURM array run on (this one is requeued, or the sweep is resumed later)
        if multirun and not worker and kind != "slurm":
            _stop_sweep(out)
        if not worker:
            raise
    except StopNow as stop:  # before training started: nothing trained, nothing to resume
        print(f"\nstopped before training started: nothing was trained (exit {stop.code})", file=sys.stderr)
        if not multirun:
            _remove_new_run_folder(out)
        if not worker:
            raise
    except RunDiverged as exc:
        last = out / "checkpoints" / "last.ckpt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written before it"
        print(f"\ndiverged: {exc}. Lower optim.lr and start a new run; {kept}.", file=sys.stderr)
        if not multirun:
            raise SystemExit(DIVERGED_EXIT) from None
    except Exception as exc:
        _record(out, "failed", cfg, exc)
        if not multirun:
            raise
        log.error("job failed, the sweep goes on: %s: %s (see %s/error.txt)", type(exc).__name__, exc, out)
    return float("inf")
