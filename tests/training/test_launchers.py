"""Sweeps that outgrow one process: `hydra/launcher=parallel` (joblib's worker processes, several jobs at once on
one machine), `hydra/launcher=submitit_local` (one process per job) and `hydra/launcher=slurm` (a SLURM job
array). Every job keeps what a job of a one-process sweep has: its own folder and record, the sweep's summary,
signals that stop at a step boundary with a checkpoint, a resume from its newest checkpoint when requeued, and,
on GPUs, a device no other job holds.

SLURM itself cannot run here: test_launcher_slurm.py checks its launcher down to the sbatch script. submitit's
own requeue runs for real here, with its local executor."""

from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import time
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from attention_lab.training import parallel
from attention_lab.training.run_dir import register_resolvers
from tests.training.helpers import (
    LEAN_CALLBACKS,
    ROOT,
    StartStepFile,
    callback_override,
    compose_with_hydra,
    make_cfg,
    read_metrics,
    run_folders,
    run_script,
    signal_when,
    tiny,
)

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
register_resolvers()  # what importing the task does before the CLI composes a config


# ------------------------------------------------------------------------------------------ configuration
def launcher(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_with_hydra([*overrides, f"paths.log_dir={tmp_path}"])
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_the_launchers_compose_with_our_defaults(tmp_path: Path) -> None:
    joblib = launcher(tmp_path, "hydra/launcher=parallel")
    assert parallel.launcher_kind(joblib["_target_"]) == "joblib"
    assert joblib["n_jobs"] == (parallel.parallel_jobs()) and joblib["backend"] == "loky"
    assert joblib["pre_dispatch"] == "n_jobs", "no job waits inside a worker: a stopped sweep starts nothing more"
    assert instantiate(OmegaConf.create(joblib["initializer"])).func is parallel.worker_init
    assert parallel.launcher_kind(launcher(tmp_path, "hydra/launcher=submitit_local")["_target_"]) == "submitit_local"
    slurm = launcher(tmp_path, "hydra/launcher=slurm", "trainer.num_nodes=2", "trainer.devices=4")
    assert parallel.launcher_kind(slurm["_target_"]) == "slurm"
    assert (slurm["nodes"], slurm["tasks_per_node"], slurm["gpus_per_node"]) == (2, 4, 4)
    assert slurm["additional_parameters"] == {"signal": "USR1@120", "requeue": True}
    assert parallel.launcher_kind("hydra._internal.core_plugins.basic_launcher.BasicLauncher") == "in_process"


# ------------------------------------------------------------------------------------- devices and signals
def test_each_job_takes_devices_no_other_job_holds(tmp_path: Path) -> None:
    first, first_locks = parallel.claim_devices(1, 3, tmp_path)
    second, second_locks = parallel.claim_devices(2, 3, tmp_path)
    assert first == [0] and second == [1, 2]
    got: list[list[int]] = []
    waiter = threading.Thread(target=lambda: got.append(parallel.claim_devices(1, 3, tmp_path, poll_s=0.02)[0]))
    waiter.start()
    time.sleep(0.2)
    assert not got, "every device is held: the third job waits"
    second_locks[1].close()  # the job on device 2 ends (or its process dies)
    waiter.join(timeout=5)
    assert got == [[2]]
    for handle in first_locks + second_locks:
        handle.close()


def test_devices_are_named_by_their_visible_id(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert parallel._device_names(2) == ["3", "5"], "two sweeps that see other subsets agree on device 5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert parallel._device_names(2) == ["0", "1"]


@pytest.mark.parametrize(
    ("kind", "overrides", "devices"),
    [
        ("joblib", [], [0]),
        ("submitit_local", ["trainer.devices=2"], [0, 1]),
        ("slurm", [], 1),  # SLURM hands the job its GPUs
        ("in_process", [], 1),  # one job at a time
        ("joblib", ["trainer.devices=[1]"], [1]),  # the user's choice stands
        ("joblib", ["trainer.accelerator=cpu"], 1),
    ],
)
def test_a_parallel_gpu_job_trains_on_the_devices_it_took(tmp_path: Path, monkeypatch, kind, overrides, devices):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(parallel, "lock_dir", lambda: tmp_path / "locks")
    cfg = make_cfg(tmp_path, ["trainer.accelerator=gpu", *overrides])
    with parallel.job_devices(cfg, kind):
        assert cfg.trainer.devices == devices
        if kind == "joblib" and not overrides:  # held while the job runs: another job now gets device 1
            assert parallel.claim_devices(1, 2, tmp_path / "locks")[0] == [1]


def test_the_launching_process_turns_a_signal_into_a_stop_request(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)  # an earlier test in this process may have installed its own
    handlers = parallel.ParentSignals(tmp_path)
    handlers.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert parallel.stop_requested(tmp_path) == signal.SIGTERM and handlers.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # after SIGTERM a Ctrl+C is still the first Ctrl+C: no exception
        handlers.signum = signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl+C: out now
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        handlers.restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_running_job_receives_the_stop_request_as_sigterm(tmp_path: Path) -> None:
    received: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with parallel.stop_watch(tmp_path, every_s=0.02):
        os.kill(os.getpid(), signal.SIGTERM)  # before the run's handler: harmless, the worker lives on
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # the run's
        parallel.request_stop(tmp_path, signal.SIGINT)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.signal(signal.SIGTERM, previous)
    assert received and received[0] == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


# ----------------------------------------------------------------------------------------- real processes
class Barrier(L.Callback):
    """At train start, waits until `parties` jobs of the sweep have reached train start (files in `folder`), and
    records its process id: only jobs that run at the same time, in different processes, get past it. A
    barrier that `parties` jobs have passed once lets every later job through (a resumed sweep)."""

    def __init__(self, folder: str, parties: int, timeout_s: float = 240) -> None:
        self.folder, self.parties, self.timeout_s = Path(folder), parties, timeout_s

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / str(os.getpid())).write_text(trainer.default_root_dir)
        Path(trainer.default_root_dir, "pid.txt").write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout_s
        while len(list(self.folder.iterdir())) < self.parties:
            assert time.monotonic() < deadline, f"the other jobs never started training beside this one ({self.folder})"
            time.sleep(0.05)


@pytest.fixture
def importable_tests(monkeypatch) -> None:
    """The test callbacks (`tests.training...`) importable in the sweep's processes, started outside the repo."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())


@pytest.mark.slow  # a subprocess sweep with two worker processes: tens of seconds
def test_the_parallel_launcher_runs_two_jobs_at_once_each_in_its_own_folder(
    tmp_path: Path, corpus: Path, importable_tests: None
) -> None:
    args = [
        "-m",
        "hydra/launcher=parallel",
        *tiny(corpus=corpus),
        *LEAN_CALLBACKS,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        callback_override("barrier", Barrier),
        f"+callbacks.barrier.folder={tmp_path / 'barrier'}",
        "+callbacks.barrier.parties=2",
        "seed=1,2",
    ]
    result = run_script(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": 2 jobs: 2 ok" in result.stderr, "the sweep's summary, from the launching process"
    (sweep,) = run_folders(tmp_path / "outputs", "sweeps")
    jobs = job_folders(sweep)
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    assert {p.name for p in sweep.iterdir()} == {"multirun.yaml", *(p.name for p in jobs)}, "nothing shared"
    pids = {(job / "pid.txt").read_text() for job in jobs}
    assert len(pids) == 2 and str(os.getpid()) not in pids, "two worker processes, both training at once"
    records = [read_metrics(job) for job in jobs]
    assert [m["status"] for m in records] == ["ok", "ok"]
    assert ["seed=1" in records[0]["overrides"], "seed=2" in records[1]["overrides"]] == [True, True]
    assert [m["output_dir"] for m in records] == [str(job) for job in jobs]
    lasts = [(job / "checkpoints" / "last.ckpt").read_bytes() for job in jobs]
    assert lasts[0] != lasts[1], "each job wrote its own checkpoint (other seeds, other weights)"
    for job in jobs:
        assert len(list(job.glob("events.out.tfevents.*"))) == 1
    assert not (tmp_path / "outputs" / "runs").exists(), "no stray run folder from a worker's config"


@pytest.mark.slow  # two subprocess sweeps of tiny trainings in worker processes: a minute or more
def test_a_signal_stops_a_parallel_sweep_at_step_boundaries_and_the_sweep_resumes(
    tmp_path: Path, corpus: Path, importable_tests: None
) -> None:
    """SIGTERM to `attention-lab train` while two workers train (and a third job waits): both running jobs stop
    at a step boundary with a checkpoint and an `interrupted` record, the waiting job never starts, the sweep
    exits 143 with sweep_status.json and the command that finishes it. That command resumes both from their
    checkpoints and runs the third."""
    args = [
        "-m",
        "hydra/launcher=parallel",
        *tiny(corpus=corpus),
        *LEAN_CALLBACKS,
        "trainer.max_steps=200",
        "trainer.val_check_interval=5",
        callback_override("barrier", Barrier),
        f"+callbacks.barrier.folder={tmp_path / 'barrier'}",
        "+callbacks.barrier.parties=2",
        callback_override("start", StartStepFile),
        "seed=1,2,3",
    ]
    sweeps = tmp_path / "outputs" / "sweeps"
    two = lambda: len(list(sweeps.glob("*/*/checkpoints/last.ckpt"))) >= 2  # noqa: E731
    code, stderr = signal_when(args, tmp_path, two, "two checkpoints", signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    (sweep,) = run_folders(tmp_path / "outputs", "sweeps")
    report = json.loads((sweep / "sweep_status.json").read_text())
    assert [job["status"] for job in report["jobs"]] == ["interrupted", "interrupted", "not run"], report
    assert report["signal"] == signal.SIGTERM and report["stopped_jobs"] == [0, 1]
    jobs = job_folders(sweep)
    assert len(jobs) == 2, "the waiting job did not start (and left no folder)"
    stopped = {}
    for job in jobs:
        metrics = read_metrics(job)
        assert metrics["status"] == "interrupted" and metrics["signal"] == signal.SIGTERM
        assert (job / "checkpoints" / "last.ckpt").is_file() and metrics["stopped_at_step"] < 200
        stopped[job.name] = metrics["stopped_at_step"]
    assert not (sweep / parallel.STOP_FILE).exists()
    assert "sweep stopped by SIGTERM" in stderr and "4 jobs" not in stderr

    command = shlex.split(report["resume_sweep"])
    assert command[:2] == ["attention-lab", "train"] and "hydra/launcher=parallel" in command
    result = run_script(command[2:], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": 3 jobs: 3 ok" in result.stderr
    jobs = job_folders(sweep)
    assert len(jobs) == 3 and run_folders(tmp_path / "outputs", "sweeps") == [sweep]
    for job in jobs:
        metrics = read_metrics(job)
        assert metrics["status"] == "ok" and metrics["global_step"] == 200
        resumed_at = int((job / "start_step.txt").read_text())
        assert resumed_at == (stopped.get(job.name, 0) // 5) * 5 or resumed_at == stopped.get(job.name, 0)


class PreemptOnce(L.Callback):
    """Sends `signum` at the end of step `step` of a run that started from step 0, in the job whose seed is
    `when_seed`: a preemption of the first attempt only (the requeued attempt starts from a checkpoint)."""

    def __init__(self, seed: int, when_seed: int, step: int, signum: int) -> None:
        self.active = seed == when_seed
        self.step, self.signum, self.fresh = step, signum, False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fresh = trainer.global_step == 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.active and self.fresh and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow  # three subprocess jobs (one requeued): a minute or more
def test_submitit_local_runs_each_job_in_its_own_process_and_a_requeued_job_resumes(
    tmp_path: Path, corpus: Path, importable_tests: None
) -> None:
    """submitit's local executor: every job is a process of its own, started by submitit as on a cluster. Job 1
    is preempted at step 3 (submitit's signal, SIGUSR2): submitit checkpoints the job and requeues it; the new
    attempt runs the same job in the same folder and resumes from its last checkpoint (step 2)."""
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=20",
        *tiny(corpus=corpus),
        *LEAN_CALLBACKS,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        callback_override("start", StartStepFile),
        callback_override("preempt", PreemptOnce),
        "+callbacks.preempt.seed=${seed}",
        "+callbacks.preempt.when_seed=2",
        "+callbacks.preempt.step=3",
        f"+callbacks.preempt.signum={int(signal.SIGUSR2)}",
        "seed=1,2",
    ]
    result = run_script(args, tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": 2 jobs: 2 ok" in result.stderr
    (sweep,) = run_folders(tmp_path / "outputs", "sweeps")
    jobs = job_folders(sweep)
    assert len(jobs) == 2
    for job, seed, start in zip(jobs, (1, 2), ("0", "2"), strict=True):
        metrics = read_metrics(job)
        assert metrics["status"] == "ok" and metrics["global_step"] == 4 and f"seed={seed}" in metrics["overrides"]
        assert (job / "start_step.txt").read_text() == start, f"{job.name} started at step {start}"
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))  # submitit's logs, per job
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs, "submitit itself requeued the job"
