"""Resuming a sweep in its own folder: `hydra.sweep.dir=<that folder>` with the command that made it keeps the
finished jobs as they are, resumes the interrupted ones from their checkpoints and runs the ones that never
started; any other sweep pointed at that folder is refused."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import lightning as L
import pytest
from omegaconf import DictConfig, OmegaConf

from attention_lab.training.run_dir import earlier_attempt
from attention_lab.training.sweep import BASIC_SWEEPER, resume_refusal
from tests.training.helpers import (
    LEAN_CALLBACKS,
    StartStepFile,
    callback_override,
    read_metrics,
    run_cli,
    run_folders,
    tiny,
)


# ------------------------------------------------------------------------------------------- quick checks
def _job_folder(tmp_path: Path, record: dict | None, checkpoints: list[str]) -> Path:
    folder = tmp_path / "0_seed=1"
    (folder / "checkpoints").mkdir(parents=True)
    if record is not None:
        (folder / "metrics.json").write_text(json.dumps(record))
    for name in checkpoints:
        (folder / name).write_bytes(b"not read here")
    return folder


@pytest.mark.parametrize(
    ("status", "keep"),
    [
        ("ok", True),
        ("unsupported", True),
        ("invalid", True),
        ("diverged", True),
        ("interrupted", False),
        ("failed", False),
    ],
)
def test_a_sweep_job_keeps_a_final_record_and_resumes_anything_else(tmp_path: Path, status: str, keep: bool) -> None:
    folder = _job_folder(tmp_path, {"status": status}, ["checkpoints/last.ckpt"])
    attempt = earlier_attempt(folder, sweep_job=True)
    assert attempt is not None and attempt.keep is keep and attempt.status == status
    assert attempt.checkpoint == folder / "checkpoints" / "last.ckpt"


def test_the_newest_checkpoint_is_resumed_and_a_fresh_folder_is_a_first_attempt(tmp_path: Path) -> None:
    folder = _job_folder(tmp_path, None, ["checkpoints/last.ckpt", "hpc_ckpt_1.ckpt"])
    os.utime(folder / "checkpoints" / "last.ckpt", (1, 1))  # hpc_ckpt_1 is newer (Lightning's SIGUSR1 save)
    attempt = earlier_attempt(folder, sweep_job=True)
    assert attempt is not None and not attempt.keep and attempt.checkpoint == folder / "hpc_ckpt_1.ckpt"
    assert attempt.status == "no record", "killed before it wrote a record: resumed"
    empty = tmp_path / "1_seed=2"
    empty.mkdir()
    assert earlier_attempt(empty, sweep_job=True) is None
    # a single run has an earlier attempt only when SLURM requeued it
    assert earlier_attempt(folder, sweep_job=False) is None


def test_training_finished_before_the_signal_keeps_the_record(tmp_path: Path) -> None:
    """Stopped during `eval.lengths` after the last step: the checkpoint is final and a resume would be refused as
    a finished run, so the record is kept."""
    folder = _job_folder(
        tmp_path, {"status": "interrupted", "stopped_during": "eval.lengths"}, ["checkpoints/last.ckpt"]
    )
    attempt = earlier_attempt(folder, sweep_job=True)
    assert attempt is not None and attempt.keep


def sweep_config(task: list[str], params: dict | None = None) -> DictConfig:
    """The part of a sweep's config (multirun.yaml) that says which jobs it runs and what names their folders."""
    return OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"_target_": BASIC_SWEEPER, "params": params},
                "overrides": {"task": task, "hydra": ["hydra.mode=MULTIRUN"]},
                "job": {"config": {"override_dirname": {"exclude_keys": ["paths.log_dir", "ckpt_path"]}}},
            }
        }
    )


def test_only_the_same_sweep_can_be_finished_in_a_folder(tmp_path: Path) -> None:
    old = tmp_path / "sweep"
    old.mkdir()
    OmegaConf.save(sweep_config(["seed=1,2", "attention=gqa", f"paths.log_dir={tmp_path}"]), old / "multirun.yaml")

    def refusal(task: list[str], params: dict | None = None) -> str | None:
        return resume_refusal(old, sweep_config([*task, f"paths.log_dir={tmp_path / 'other'}"], params))

    # the same jobs: paths.* differ (they do not name a job), the order of the overrides does not matter, and a
    # preset's sweeper params are the same jobs as typed ones
    assert refusal(["attention=gqa", "seed=1,2"]) is None
    assert refusal(["attention=gqa"], {"seed": "1,2"}) is None
    assert "its sweep has 2 jobs and this command makes 3" in refusal(["seed=1,2,3", "attention=gqa"])
    message = refusal(["seed=1,2", "attention=mqa"])
    assert "its job 0 is `attention=gqa seed=1`, this command's is `attention=mqa seed=1`" in message
    assert "no grid sweep" in resume_refusal(tmp_path / "other", sweep_config(["seed=1,2"]))
    optuna = sweep_config(["seed=1,2"])
    optuna.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert "no grid sweep" in resume_refusal(old, optuna), "a search picks its jobs as it goes: nothing to rebuild"


# -------------------------------------------------------------------------------------- a real resumed sweep
class SignalForSeed(L.Callback):
    """Sends `signum` to this process at the end of step `step`, in the job whose seed is `when_seed` only."""

    def __init__(self, seed: int, when_seed: int, step: int, signum: int) -> None:
        self.stop = seed == when_seed
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.stop and trainer.global_step == self.step:
            assert signal.getsignal(self.signum) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            os.kill(os.getpid(), self.signum)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # four tiny trainings in one process
def test_a_resumed_sweep_keeps_finished_jobs_resumes_interrupted_ones_and_runs_the_rest(
    tmp_path: Path, corpus: Path, capsys
) -> None:
    """Job 0 (seed 1) finishes; job 1 (seed 2) is stopped by SIGTERM at step 2, which stops the sweep, so job 2
    (seed 3) never starts. The printed command finishes the sweep in its folder: job 0's files are untouched,
    job 1 continues from its step-2 checkpoint, job 2 trains from the start."""
    log_dir = tmp_path / "outputs"
    args = [
        "-m",
        *tiny(corpus=corpus),
        *LEAN_CALLBACKS,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        callback_override("start", StartStepFile),
        callback_override("stop", SignalForSeed),
        "+callbacks.stop.seed=${seed}",
        "+callbacks.stop.when_seed=2",
        "+callbacks.stop.step=2",
        f"+callbacks.stop.signum={int(signal.SIGTERM)}",
        "seed=1,2,3",
    ]
    assert run_cli(args, log_dir) == 143
    (sweep,) = run_folders(log_dir, "sweeps")
    report = json.loads((sweep / "sweep_status.json").read_text())
    assert [job["status"] for job in report["jobs"]] == ["ok", "interrupted", "not run"]
    assert "finish the sweep" in capsys.readouterr().err
    jobs = {p.name[0]: p for p in sweep.iterdir() if p.is_dir()}
    assert sorted(jobs) == ["0", "1"], "job 2 never started"
    finished = _mtimes(jobs["0"] / "checkpoints") | {"metrics.json": (jobs["0"] / "metrics.json").stat().st_mtime_ns}

    # the recorded command, as a user would paste it (run_cli adds the same paths.* again)
    command = shlex.split(report["resume_sweep"])
    assert command[:2] == ["attention-lab", "train"] and command[-1] == f"hydra.sweep.dir={sweep}"
    finish = [w for w in command[2:] if not w.startswith("paths.")]
    assert run_cli(finish, log_dir) == 0, capsys.readouterr().err[-3000:]

    assert run_folders(log_dir, "sweeps") == [sweep], "finished in its own folder, no new sweep"
    jobs = {p.name[0]: p for p in sweep.iterdir() if p.is_dir()}
    assert sorted(jobs) == ["0", "1", "2"]
    after = _mtimes(jobs["0"] / "checkpoints") | {"metrics.json": (jobs["0"] / "metrics.json").stat().st_mtime_ns}
    assert after == finished, "the finished job was not trained again"
    assert (jobs["0"] / "start_step.txt").read_text() == "0"
    assert (jobs["1"] / "start_step.txt").read_text() == "2", "resumed from its step-2 checkpoint"
    assert (jobs["2"] / "start_step.txt").read_text() == "0"
    for job, seed in zip("012", (1, 2, 3), strict=True):
        metrics = read_metrics(jobs[job])
        assert metrics["status"] == "ok" and metrics["global_step"] == 4 and f"seed={seed}" in metrics["overrides"]
    assert not (sweep / "sweep_status.json").exists(), "the stopped sweep's report is out of date once it finished"
    capsys.readouterr()

    # another sweep pointed at this folder is refused before anything is written into it
    before = _mtimes(sweep)
    other = list(finish)
    other[other.index("seed=1,2,3")] = "seed=1,2,4"
    assert run_cli(other, log_dir) == 2
    err = capsys.readouterr().err
    assert "already holds a run or sweep (its job 2 is" in err and "Traceback" not in err
    assert _mtimes(sweep) == before
