"""Run folders that are never shared: named by time and overrides, created exclusively.

Two runs started in the same second (or two sweeps, or parallel launcher jobs) would otherwise get the same
`<time>_<overrides>` folder and mix their checkpoints, events and metrics. The `unique_dir` resolver creates
the folder itself with an exclusive mkdir and, when the name is taken, tries `-2`, `-3`, ... Hydra caches a
resolver's value per config and copies that cache to every job of a sweep, so one run or sweep resolves to
one folder, and a later `mkdir(exist_ok=True)` by Hydra finds it in place.

Under SLURM the folder is named by the job id instead of the time (`slurm_or`). A job that SLURM requeues
(Lightning's SIGUSR1 handler saves `hpc_ckpt_<n>.ckpt` and calls `scontrol requeue`) starts again with
`SLURM_RESTART_COUNT` > 0: it reuses that folder instead of reserving a new one. Ranks started by srun
(`SLURM_PROCID` > 0) join the folder of rank 0 the same way. (A job of a sweep submitted with
`hydra/launcher=slurm` is in the sweep folder the login node made, whatever its job id.)

`earlier_attempt()` says what an earlier attempt of the job left in its folder: a finished record to keep, or the
newest checkpoint (`hpc_ckpt_<n>.ckpt` or `checkpoints/last.ckpt`) to resume from. That is a requeued SLURM job,
or a job of a sweep resumed in its own folder (`hydra.sweep.dir=<its folder>` with the command that made it,
see sweep.py), which puts each job into its old folder.

Hydra also resolves the *default* folder expression while composing configs whose `hydra.sweep.dir` is
overridden (the experiment presets, a command-line override), on config objects that do not share that cache.
Those reservations stay empty; `release_unused()` removes every folder this process reserved that is still
empty and is not the one in use, at the start of each job and when the command ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..errors import USAGE_EXIT
from . import parallel

_AWKWARD = re.compile(r"""[/'"\\$\s]""")  # characters a folder name must not hold (see run_suffix)
MAX_SUFFIX = 120  # folder names are capped at 255 bytes; the full overrides are in .hydra/overrides.yaml
MAX_TRIES = 1000
_reserved: list[Path] = []  # folders unique_dir created in this process


def run_suffix(overrides: str) -> str:
    """ "_attention=gqa,..." after the timestamp in run folder names; shortened (with a hash) when too long.

    Slashes, quotes, backslashes, `$` and whitespace become `_`: a folder name holding them could not be passed back as
    `ckpt_path='<folder>/...'` (the quoting of the resume command we print) without breaking Hydra's grammar or
    starting an interpolation, and would need quoting in a shell.
    """
    if not overrides:
        return ""
    overrides = _AWKWARD.sub("_", overrides)
    if len(overrides) > MAX_SUFFIX:
        digest = hashlib.sha1(overrides.encode()).hexdigest()[:8]
        overrides = f"{overrides[: MAX_SUFFIX - 9]}-{digest}"
    return f"_{overrides}"


def _slurm_int(name: str) -> int:
    try:
        return int(os.environ.get(name) or 0)
    except ValueError:
        return 0


def slurm_or(stamp: str) -> str:
    """`slurm-<job id>` inside a SLURM job, else `stamp` (the time)."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else stamp


def joins_existing_folder() -> bool:
    """A requeued SLURM job, or a rank other than 0 that srun started: the folder is rank 0's first one."""
    return bool(os.environ.get("SLURM_JOB_ID")) and (
        _slurm_int("SLURM_RESTART_COUNT") > 0 or _slurm_int("SLURM_PROCID") > 0
    )


def requeued() -> bool:
    """This process is a SLURM job that SLURM requeued (after a preemption, or Lightning's requeue on SIGUSR1)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and _slurm_int("SLURM_RESTART_COUNT") >= 1


def newest_checkpoint(output_dir: Path) -> Path | None:
    """The newest of Lightning's `hpc_ckpt_*.ckpt` (its SLURM requeue) and our `checkpoints/last.ckpt`."""
    candidates = [*output_dir.glob("hpc_ckpt_*.ckpt"), output_dir / "checkpoints" / "last.ckpt"]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime) if existing else None


# How an earlier attempt of a sweep job ended that a resumed sweep keeps as it is: ok, and the outcomes that the
# same settings would only repeat (a diverged run diverges again with the same optim.lr: start a new sweep).
KEPT = ("ok", "unsupported", "invalid", "diverged")


@dataclass(frozen=True)
class EarlierAttempt:
    """What an earlier attempt of this job left in its folder: its record (metrics.json) and newest checkpoint."""

    record: dict[str, Any] | None
    checkpoint: Path | None
    keep: bool  # the record stands: the job is not trained again

    @property
    def status(self) -> str:
        return str((self.record or {}).get("status", "no record"))


def earlier_attempt(output_dir: Path, sweep_job: bool) -> EarlierAttempt | None:
    """None for a first attempt. A sweep job keeps an earlier record whose status is in KEPT (or one whose
    training had finished, `stopped_during` an evaluation after it) and otherwise resumes from the newest
    checkpoint there, if any (interrupted, failed, or killed without a record). A single run has an earlier
    attempt only when SLURM requeued it, and keeps only an `ok` record."""
    if not sweep_job and not requeued():
        return None
    record = None
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((output_dir / "metrics.json").read_text())
    checkpoint = newest_checkpoint(output_dir)
    if record is None and checkpoint is None:
        return None
    status = (record or {}).get("status")
    keep = status == "ok" or (sweep_job and (status in KEPT or bool((record or {}).get("stopped_during"))))
    return EarlierAttempt(record, checkpoint, keep)


def unique_dir(base: str) -> str:
    """Create `base` (or `base-2`, `base-3`, ...) exclusively and return the path that was created."""
    if joins_existing_folder():
        Path(base).mkdir(parents=True, exist_ok=True)
        return base
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, MAX_TRIES + 1):
        candidate = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        _reserved.append(Path(candidate).resolve())
        return candidate
    raise RuntimeError(f"{MAX_TRIES} folders named {base}[-N] exist already: clean up {Path(base).parent}")


def release_unused(in_use: str | os.PathLike[str] | None = None) -> None:
    """Remove the empty folders unique_dir reserved in this process, except `in_use` and its parents."""
    keep = Path(in_use).resolve() if in_use is not None else None
    for path in list(_reserved):
        if keep is not None and (path == keep or path in keep.parents):
            continue
        try:
            path.rmdir()  # only succeeds on an empty folder: nothing written is ever removed
        except OSError:
            continue
        _reserved.remove(path)


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _refuse_used_folder(setting: str, folder: Path, why: str | None = None) -> None:
    resume = f" ({why}; the command that made a sweep, with {setting}={folder}, finishes it there)" if why else ""
    print(
        f"error: {setting}={folder} already holds a run or sweep{resume}: a second one there would mix their "
        f"checkpoints, events and records. Choose a new folder, or drop {setting} to get a unique one.",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(USAGE_EXIT)


class FreshFolders(Callback):
    """Refuses a `hydra.run.dir` / `hydra.sweep.dir` override that points at a folder already in use, before
    Hydra writes into it. The folders unique_dir makes are new and empty; the exceptions are the processes that
    must join an existing folder: Lightning's re-launched DDP ranks, a requeued SLURM job, and a sweep resumed in
    its own folder by the command that made it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK") or joins_existing_folder():
            return
        folder = Path(config.hydra.run.dir)
        if _holds_files(folder):
            _refuse_used_folder("hydra.run.dir", folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if joins_existing_folder():
            return
        folder = Path(config.hydra.sweep.dir)
        if not _holds_files(folder):
            return
        from .sweep import resume_refusal

        refusal = resume_refusal(folder, config)
        if refusal is None:  # the same sweep: finish it there (sweep.py)
            print(f"resuming the sweep in {folder}", file=sys.stderr, flush=True)
            return
        _refuse_used_folder("hydra.sweep.dir", folder, refusal)


def register_resolvers() -> None:
    from .job_names import job_suffix  # imports sweep.py, which needs this module's neighbours first

    OmegaConf.register_new_resolver("run_suffix", run_suffix, replace=True)
    OmegaConf.register_new_resolver("job_suffix", job_suffix, replace=True)  # sweep job folders
    OmegaConf.register_new_resolver("slurm_or", slurm_or, replace=True)
    OmegaConf.register_new_resolver("parallel_jobs", parallel.parallel_jobs, replace=True)  # hydra/launcher=parallel
    # use_cache: resolved once per run or sweep (Hydra copies the cache into each job's config)
    OmegaConf.register_new_resolver("unique_dir", unique_dir, replace=True, use_cache=True)
