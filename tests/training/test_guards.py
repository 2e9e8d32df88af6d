"""Run guards: SIGINT/SIGTERM only set a flag (SLURM's SIGUSR1 requeue stays Lightning's), and a diverging run
stops with exit 3 and a last good checkpoint that never holds a NaN."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from attention_lab.training.guards import RunDiverged, RunInterrupted, SignalFlag, StopNow
from attention_lab.training.task import train
from tests.training.helpers import (
    LEAN_CALLBACKS,
    CtrlCTwiceAt,
    PoisonWeightsAt,
    SignalAt,
    StartStepFile,
    add_callback,
    callback_override,
    make_cfg,
    read_metrics,
    run_cli,
    run_folders,
    tiny,
)


def checkpoint_is_finite(path: Path) -> tuple[int, bool]:
    """(global_step, whether every weight in the checkpoint is finite)."""
    saved = torch.load(path, weights_only=True)
    finite = all(bool(torch.isfinite(t).all()) for t in saved["state_dict"].values() if t.is_floating_point())
    return saved["global_step"], finite


# ---------------------------------------------------------------------------------------------- signals
def test_signal_flag_records_sigint_and_sigterm_and_leaves_sigusr1_alone() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    flag = SignalFlag()
    flag.install()
    try:
        assert signal.getsignal(signal.SIGUSR1) is before[signal.SIGUSR1], "SIGUSR1 is Lightning's (SLURM requeue)"
        # while the run is set up a signal stops it at once (nothing to save yet)
        with pytest.raises(StopNow) as early:
            os.kill(os.getpid(), signal.SIGTERM)
        assert early.value.code == 143 and flag.signum is None
        flag.deferred = True  # training
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised: the run stops at the next step boundary
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.signum == signal.SIGTERM, "the first signal decides the exit status"
    finally:
        flag.restore()
    assert {s: signal.getsignal(s) for s in before} == before

    twice = SignalFlag()
    twice.install()
    twice.deferred = True
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert twice.signum == signal.SIGINT
        # a second Ctrl+C: out now, as exit 130 (not a KeyboardInterrupt, which Lightning turns into exit 1)
        with pytest.raises(StopNow) as stop:
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.value.code == 130 and not isinstance(stop.value, KeyboardInterrupt)
    finally:
        twice.restore()


def test_a_second_ctrl_c_stops_at_once_with_exit_130_and_a_record(tmp_path: Path, corpus: Path) -> None:
    """The first Ctrl+C asks for a stop at the next step boundary, a second one stops at once. That second one
    raised KeyboardInterrupt inside fit, which Lightning turns into its own "graceful shutdown" and sys.exit(1):
    exit status 1 instead of 130, and no metrics.json record of the interrupted run (the old code, without a
    flag, did the same on the first Ctrl+C)."""
    cfg = make_cfg(
        tmp_path, [*tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=50", "trainer.val_check_interval=2"]
    )
    add_callback(cfg, "ctrl_c", CtrlCTwiceAt, step=3)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a shell's background job
    with pytest.raises(RunInterrupted) as stop:
        train(cfg)
    assert stop.value.code == 130 and stop.value.signum == signal.SIGINT
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "interrupted" and metrics["signal"] == signal.SIGINT
    assert metrics["stopped_at_step"] == metrics["global_step"] == 3
    # no checkpoint of step 3 (the stop did not wait for it); the resume points at the validated step 2
    assert metrics["checkpoint"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint_is_finite(tmp_path / "run" / "checkpoints" / "last.ckpt") == (2, True)
    assert signal.getsignal(signal.SIGINT) is before, "the handler is restored"


SLURM_ENV = {
    # what srun sets for a one-task job; Lightning's SLURMEnvironment.detect() needs SLURM_NTASKS and a job name
    # other than bash/interactive, and the environment reads the rank variables
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "test",
    "SLURM_JOB_ID": "123",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch) -> Path:
    """A SLURM job's environment and a fake `scontrol` that records its arguments (returned: that record).
    The fake keeps the test from touching a real queue and from depending on scontrol being absent."""
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.args"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > "{record}"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.parametrize("via", ["environment", "plugin"])
def test_slurm_requeue_signal_still_saves_an_hpc_checkpoint(tmp_path: Path, corpus: Path, slurm: Path, via) -> None:
    """Lightning handles the requeue signal (SIGUSR1 by default) only under a SLURMEnvironment with auto_requeue:
    it saves hpc_ckpt_<n>.ckpt in default_root_dir and calls `scontrol requeue <job>`. Our SIGINT/SIGTERM flag
    must not take that over. With `trainer.plugins=[SLURMEnvironment(requeue_signal=SIGUSR2)]` the configured
    plugin must be used: the task passed its own `plugins=` to the Trainer, which replaced the configured ones
    (the requeue signal then had no handler and would have killed the job)."""
    cfg = make_cfg(
        tmp_path, [*tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=4", "trainer.val_check_interval=2"]
    )
    signum = signal.SIGUSR1
    if via == "plugin":
        signum = signal.SIGUSR2
        with open_dict(cfg):
            cfg.trainer.plugins = [
                {
                    "_target_": "lightning.fabric.plugins.environments.SLURMEnvironment",
                    "auto_requeue": True,
                    "requeue_signal": int(signum),
                }
            ]
    add_callback(cfg, "requeue", SignalAt, step=2, signum=int(signum))
    before = signal.getsignal(signum)

    metrics = train(cfg)

    run = tmp_path / "run"
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in run.iterdir())
    assert checkpoint_is_finite(hpc) == (2, True)
    assert slurm.read_text().split() == ["requeue", "123"]
    assert metrics["status"] == "ok" and metrics["global_step"] == 4, "requeueing does not stop the run"
    assert signal.getsignal(signum) == before, "Lightning restores the handler after fit"


@pytest.mark.slow  # several trainings in one test
def test_a_requeued_slurm_job_reuses_its_folder_and_resumes(tmp_path: Path, corpus: Path, slurm: Path, monkeypatch):
    """SLURM's requeue re-runs the same command in a new process. Old: the folder was named by the time, so the
    requeued job started a new folder from step 0 and never found the hpc checkpoint. Now the folder is named
    slurm-<job id>; the first run saves hpc_ckpt_1 at step 2 (SIGUSR1) and last.ckpt at step 3 (SIGTERM, exit
    143); the requeued run (SLURM_RESTART_COUNT=1) reuses that folder and resumes from the newest, step 3."""
    log_dir = tmp_path / "outputs"
    args = [
        *tiny(corpus=corpus),
        *LEAN_CALLBACKS,
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        callback_override("requeue", SignalAt),
        "+callbacks.requeue.step=2",
        f"+callbacks.requeue.signum={int(signal.SIGUSR1)}",
        callback_override("stop", SignalAt),
        "+callbacks.stop.step=3",
        f"+callbacks.stop.signum={int(signal.SIGTERM)}",
        callback_override("start", StartStepFile),
    ]
    assert run_cli(args, log_dir) == 143
    (run,) = run_folders(log_dir)
    assert run.name.startswith("slurm-123_"), run.name
    assert (run / "hpc_ckpt_1.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert slurm.read_text().split() == ["requeue", "123"]

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert run_cli(args, log_dir) == 0  # the same command, as the requeued batch script runs it
    assert run_folders(log_dir) == [run], "the requeued job reuses its folder"
    assert (run / "start_step.txt").read_text() == "3"
    metrics = read_metrics(run)
    assert metrics["status"] == "ok" and metrics["global_step"] == 6


@pytest.mark.slow  # several trainings in one test
def test_a_requeued_job_that_had_finished_keeps_its_record(tmp_path: Path, corpus: Path, slurm: Path, monkeypatch):
    """Found by a review: a requeue after the job finished handed it its own last.ckpt, which was refused as a
    finished run: exit 2, and in a sweep every finished job's `ok` record was overwritten with `invalid`."""
    log_dir = tmp_path / "outputs"
    args = ["-m", *tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=2", "seed=1,2"]
    assert run_cli(args, log_dir) == 0
    (sweep,) = run_folders(log_dir, "sweeps")
    records = {p.name: (p / "metrics.json").read_text() for p in sweep.iterdir() if (p / "metrics.json").is_file()}
    assert len(records) == 2 and all('"ok"' in r for r in records.values())

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert run_cli(args, log_dir) == 0
    assert run_folders(log_dir, "sweeps") == [sweep]
    assert {
        p.name: (p / "metrics.json").read_text() for p in sweep.iterdir() if (p / "metrics.json").is_file()
    } == records


# ------------------------------------------------------------------------------------------- divergence
def test_nan_loss_is_caught_before_validation_and_the_last_good_checkpoint_is_kept(
    tmp_path: Path, corpus: Path
) -> None:
    """A weight turns NaN before the batch of step 3 (after the validation and last.ckpt of step 2). The loss
    check interval is long (log_every_n_steps=50), so the guard must catch it at the next validation (step 4),
    before any callback or checkpoint sees the weights. Old: no guard; the run trained on with NaN weights to
    max_steps and ended with status ok and exit 0."""
    cfg = make_cfg(
        tmp_path,
        [*tiny(corpus=corpus), "trainer.max_steps=10", "trainer.val_check_interval=2", "trainer.log_every_n_steps=50"],
    )
    add_callback(cfg, "poison", PoisonWeightsAt, step=2)
    with pytest.raises(RunDiverged, match=r"training loss became non-finite.*at step 4"):
        train(cfg)

    run = tmp_path / "run"
    metrics = read_metrics(run)
    assert metrics["status"] == "diverged" and metrics["diverged_at_step"] == 4
    assert metrics["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert "resume" not in metrics, "with the same optim.lr it would diverge again; the fix says what to do"
    assert "lower optim.lr" in metrics["fix"]
    assert checkpoint_is_finite(run / "checkpoints" / "last.ckpt") == (2, True)
    assert checkpoint_is_finite(run / "checkpoints" / "best.ckpt") == (2, True)


def test_nan_at_a_validation_stops_before_the_text_sample_and_the_save(tmp_path: Path, corpus: Path) -> None:
    """NaN weights reach a validation (the loss of the step before was finite, so the loss check has nothing to
    report) with the text sample and the attention maps on. The guard checks the validation loss before those
    callbacks run: sampling from such a model raises inside torch.multinomial (a crash, status failed, exit 1,
    hiding the divergence), and the checkpoint saved after the validation would hold it. last.ckpt stays at the
    good step 2. Old: no guard at all (the run wrote NaN checkpoints or crashed in the sampler)."""
    cfg = make_cfg(tmp_path, [*tiny(corpus=corpus), "trainer.max_steps=10", "trainer.val_check_interval=2"])
    add_callback(cfg, "poison", PoisonWeightsAt, step=4, when="end")
    with pytest.raises(RunDiverged, match=r"validation loss became non-finite.*at step 4"):
        train(cfg)

    run = tmp_path / "run"
    metrics = read_metrics(run)
    assert metrics["status"] == "diverged" and metrics["diverged_at_step"] == 4
    assert checkpoint_is_finite(run / "checkpoints" / "last.ckpt") == (2, True)


def test_a_checkpoint_save_never_writes_nan_weights(tmp_path: Path, corpus: Path) -> None:
    """A checkpoint every step and no validation or loss check in sight: the save itself refuses NaN weights,
    so the newest checkpoint on disk is the last finite one (step 3), not the poisoned step 4. Old: best.ckpt
    was overwritten with the NaN weights of step 4 and every step after."""
    cfg = make_cfg(
        tmp_path,
        [
            *tiny(corpus=corpus),
            *LEAN_CALLBACKS,
            "trainer.max_steps=10",
            "trainer.val_check_interval=50",
            "trainer.log_every_n_steps=50",
            "callbacks.model_checkpoint.monitor=null",
            "+callbacks.model_checkpoint.every_n_train_steps=1",
        ],
    )
    add_callback(cfg, "poison", PoisonWeightsAt, step=3)
    with pytest.raises(RunDiverged, match=r"weights became non-finite at step 4"):
        train(cfg)

    run = tmp_path / "run"
    assert read_metrics(run)["diverged_at_step"] == 4
    assert checkpoint_is_finite(run / "checkpoints" / "best.ckpt") == (3, True)


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_a_huge_learning_rate_exits_3_with_a_diverged_record(tmp_path: Path, corpus: Path, capsys) -> None:
    """`optim.lr=1000` through the CLI: exit 3, metrics.json says where. Before the validation-loss check the
    weights stayed finite while the logits overflowed, so the text-sample callback crashed in torch.multinomial
    (exit 1, status failed); and a finite best val loss of ~6e8 made math.exp in the summary raise."""
    log_dir = tmp_path / "outputs"
    code = run_cli(
        [*tiny(corpus=corpus), "optim.lr=1000", "trainer.max_steps=60", "trainer.val_check_interval=2"], log_dir
    )
    stderr = capsys.readouterr().err
    assert code == 3, stderr[-3000:]
    assert "Traceback" not in stderr and "diverged:" in stderr and "optim.lr" in stderr
    (run,) = run_folders(log_dir)
    metrics = read_metrics(run)
    assert metrics["status"] == "diverged"
    assert metrics["diverged_at_step"] == metrics["global_step"] >= 1
    assert metrics["val_loss"] is None, "no final loss is reported for a diverged run"
    assert metrics["best_val_ppl"] is None or metrics["best_val_ppl"] > 1, "exp of a huge loss must not raise"
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():  # a validation before the NaN: that checkpoint is from before and all finite
        step, finite = checkpoint_is_finite(last)
        assert finite and step < metrics["diverged_at_step"]
        assert metrics["checkpoint"] == str(last)
