"""SIGINT and SIGTERM on a real `python scripts/train.py`: the run stops at a step boundary with exit 130/143, a
checkpoint and the command that resumes it, and that command continues from the saved step. A signal during
a sweep stops the sweep and says which jobs ran, which did not, and how to finish.

These start a subprocess (the signal must reach a real process with Hydra's and Lightning's handlers in place);
each waits for a first checkpoint (training is under way) instead of sleeping a guessed time."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import pytest
import torch

from tests.training.helpers import (
    LEAN_CALLBACKS,
    StartStepFile,
    callback_override,
    compose_with_hydra,
    read_metrics,
    run_cli,
    run_folders,
    signal_when,
    tiny,
)

FOREVER = "trainer.max_steps=100000"  # the run must still be training when the signal arrives
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def first_match(folder: Path, pattern: str) -> Path | None:
    return next(folder.glob(pattern), None) if folder.is_dir() else None


def stop_after_first_checkpoint(args: list[str], tmp_path: Path, pattern: str, signum: int) -> tuple[int, str]:
    """Start scripts/train.py, wait until `pattern` (a checkpoint under outputs/) exists, a little more so the
    run is mid-training, send `signum`; returns (exit status, stderr)."""
    found = lambda: first_match(tmp_path / "outputs", pattern)  # noqa: E731 (named for the line's length)
    return signal_when(args, tmp_path, found, f"a checkpoint ({pattern})", signum, timeout=120)


@pytest.mark.slow  # a subprocess run: several seconds
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_with_a_checkpoint_and_the_resume_command_works(
    tmp_path: Path, corpus: Path, signum: signal.Signals
) -> None:
    """Old: SIGINT ended in Lightning's "graceful shutdown" with exit 1; SIGTERM in Lightning's SIGTERMException,
    a SystemExit without a code, i.e. exit 0 as if the run had finished. Neither saved the stopped step or left a
    record of how to resume."""
    args = [*tiny(corpus=corpus), *LEAN_CALLBACKS, FOREVER, "trainer.val_check_interval=5"]
    code, stderr = stop_after_first_checkpoint(args, tmp_path, "runs/*/checkpoints/last.ckpt", signum)

    assert code == STATUS[signum], stderr[-3000:]
    assert "Traceback" not in stderr
    assert f"stopped by {signum.name} at step" in stderr and "resume: attention-lab train" in stderr
    (run,) = run_folders(tmp_path / "outputs")
    metrics = read_metrics(run)
    last = run / "checkpoints" / "last.ckpt"
    assert metrics["status"] == "interrupted" and metrics["signal"] == signum
    assert metrics["checkpoint"] == str(last) and last.is_file()
    step = metrics["stopped_at_step"]
    assert step == metrics["global_step"] >= 5, "a first validation (step 5) ran before the signal"
    assert torch.load(last, weights_only=True)["global_step"] == step, "the checkpoint is of the stopped step"

    # the recorded command, as a user would run it (only the never-ending max_steps shortened)
    command = shlex.split(metrics["resume"])
    assert command[:2] == ["attention-lab", "train"] and FOREVER in command
    resume = [arg if arg != FOREVER else f"trainer.max_steps={step + 3}" for arg in command[2:]]
    log_dir = tmp_path / "resumed"
    assert run_cli([*resume, callback_override("start", StartStepFile)], log_dir) == 0
    (resumed,) = run_folders(log_dir)
    assert (resumed / "start_step.txt").read_text() == str(step), "continues from the saved step"
    resumed_metrics = read_metrics(resumed)
    assert resumed_metrics["status"] == "ok" and resumed_metrics["global_step"] == step + 3


@pytest.mark.slow  # a subprocess run: several seconds
def test_a_signal_during_a_sweep_records_which_jobs_ran_and_how_to_finish(tmp_path: Path, corpus: Path) -> None:
    """Old: the sweep died with the job, and nothing said which jobs had run or how to run the rest."""
    args = ["-m", *tiny(corpus=corpus), *LEAN_CALLBACKS, FOREVER, "trainer.val_check_interval=5", "seed=1,2,3"]
    code, stderr = stop_after_first_checkpoint(args, tmp_path, "sweeps/*/0_*/checkpoints/last.ckpt", signal.SIGTERM)

    assert code == 143, stderr[-3000:]
    (sweep,) = run_folders(tmp_path / "outputs", "sweeps")
    report = json.loads((sweep / "sweep_status.json").read_text())
    assert report["status"] == "interrupted" and report["stopped_job"] == 0
    assert [job["status"] for job in report["jobs"]] == ["interrupted", "not run", "not run"]
    assert [job["overrides"][-1] for job in report["jobs"]] == ["seed=1", "seed=2", "seed=3"]
    resume = shlex.split(report["resume_stopped_job"])
    assert any(w.startswith("ckpt_path=") for w in resume)
    # a sweep job resumes as a single run beside its folder (a preset would otherwise start the whole sweep again)
    job0 = next(p for p in sweep.iterdir() if p.name.startswith("0_"))
    assert "hydra.mode=RUN" in resume and f"hydra.run.dir={job0}-resumed" in resume
    assert len(report["continue"]) == 2
    for num, (command, seed) in enumerate(zip(report["continue"], ("seed=2", "seed=3"), strict=True), start=1):
        words = shlex.split(command)
        assert words[:2] == ["attention-lab", "train"] and seed in words
        # the jobs that did not start run as single runs into their places in this sweep folder
        assert words[-2:] == ["hydra.mode=RUN", f"hydra.run.dir={sweep / str(num)}"]
        compose_with_hydra([w for w in words[2:] if not w.startswith("hydra.")])  # valid as they stand

    # run the first of them as printed (only the never-ending max_steps shortened): it lands in the sweep folder
    words = [w if w != FOREVER else "trainer.max_steps=3" for w in shlex.split(report["continue"][0])[2:]]
    assert run_cli(words, tmp_path / "outputs") == 0
    assert read_metrics(sweep / "1")["status"] == "ok"
    assert sorted(p.name.split("_")[0] for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()) == ["0", "1"]
    assert "sweep stopped by a signal during job 0" in stderr
    assert "resume job 0: attention-lab train" in stderr
    assert "then run the jobs that did not start:" in stderr and "sweep_status.json" in stderr
