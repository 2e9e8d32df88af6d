"""`hydra/launcher=slurm`: SLURM itself cannot run here, so the launcher is checked down to the sbatch script
submitit writes (only `sbatch` is fake), Lightning's SLURMEnvironment is built from our trainer settings under
srun's environment, and a requeue is replayed with SLURM's variables (a fake `scontrol` records Lightning's
requeue call). submitit's own requeue runs for real with its local executor (test_launchers.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from hydra.utils import instantiate

from attention_lab.training.run_dir import register_resolvers
from tests.training.helpers import (
    LEAN_CALLBACKS,
    SignalAt,
    StartStepFile,
    callback_override,
    make_cfg,
    read_metrics,
    run_cli,
    run_folders,
    run_script,
    tiny,
)
from tests.training.test_launchers import PreemptOnce, importable_tests, job_folders  # noqa: F401 (a fixture)

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
register_resolvers()  # what importing the task does before the CLI composes a config


def _fake_slurm_commands(tmp_path: Path, monkeypatch) -> Path:
    """`srun` (submitit checks that it exists) and an `sbatch` that keeps the script it is given and fails, so
    the launcher stops right after writing it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "sbatch_script.sh"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{script}"\necho "no cluster here" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return script


@pytest.mark.slow  # the CLI and submitit in this process: a few seconds
def test_the_slurm_launcher_writes_the_sbatch_script_of_a_multi_node_sweep(tmp_path: Path, monkeypatch) -> None:
    """What `hydra/launcher=slurm` submits: one array job per sweep, every job on trainer.num_nodes nodes with
    trainer.devices GPUs and one task per GPU, SIGUSR1 (Lightning's requeue signal) before the time limit, and
    requeue on preemption. Only `sbatch` is fake."""
    script = _fake_slurm_commands(tmp_path, monkeypatch)
    args = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90"]
    args += ["trainer.num_nodes=2", "trainer.devices=4", "seed=1,2"]
    assert run_cli(args, tmp_path / "outputs") != 0  # the fake sbatch refuses after keeping the script
    lines = set(script.read_text().splitlines())
    expected = {
        "#SBATCH --array=0-1%2",  # both jobs at once (at most array_parallelism=256)
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --signal=USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --job-name=train",
    }
    assert expected <= lines, sorted(lines)
    (sweep,) = run_folders(tmp_path / "outputs", "sweeps")
    assert any(line.startswith(f"#SBATCH --output={sweep}/.submitit/%A_%a/") for line in lines), "logs"
    assert any("-m submitit.core._submit" in line for line in lines)


SLURM_2x2 = {  # what srun sets for rank 0 of a 2-node job with 2 tasks per node
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_ID": "77",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "node[1-2]",
}


@pytest.mark.parametrize(("devices", "ok"), [(2, True), (4, False)])
def test_trainer_num_nodes_and_devices_reach_lightnings_slurm_environment(
    tmp_path: Path, monkeypatch, devices: int, ok: bool
) -> None:
    """Under srun our trainer settings become Lightning's: the SLURM environment supplies the ranks (nothing is
    re-launched), trainer.num_nodes x trainer.devices is the world size, and devices that do not match the
    tasks per node SLURM started are refused (the launcher config ties the two together)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    for key, value in SLURM_2x2.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # Lightning's launcher would set it for this whole process
    cfg = make_cfg(tmp_path, [*tiny(), "trainer.num_nodes=2", f"trainer.devices={devices}"])
    trainer = instantiate(cfg.trainer, logger=False)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert (trainer.num_nodes, trainer.world_size, trainer.global_rank) == (2, 4, 0)  # world size: SLURM_NTASKS
    assert environment.creates_processes_externally, "srun started the ranks: Lightning launches none"
    assert isinstance(trainer.strategy, DDPStrategy), "trainer.strategy=auto: DDP over SLURM's ranks"
    launch = trainer.strategy.launcher.launch  # what fit() calls first: checks the settings against SLURM's
    if ok:
        assert launch(lambda: "trained") == "trained"
    else:
        with pytest.raises(ValueError, match="ntasks-per-node=2"):
            launch(lambda: "trained")


# ------------------------------------------------------------------------------ a SLURM requeue, replayed
@pytest.fixture
def slurm_job(tmp_path: Path, monkeypatch) -> Path:
    """SLURM's environment for a one-task job and a fake `scontrol` that records its arguments."""
    for key, value in {**SLURM_2x2, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.args"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > "{record}"\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.slow  # two tiny trainings
def test_a_requeued_sweep_job_resumes_from_its_newest_checkpoint(tmp_path: Path, corpus: Path, slurm_job, monkeypatch):
    """A sweep job on SLURM near its time limit: SIGUSR1 at step 2 (Lightning saves hpc_ckpt_1 and calls
    `scontrol requeue`), then SLURM's SIGTERM at step 3 (the run saves last.ckpt and exits 143). SLURM starts the
    same job again (SLURM_RESTART_COUNT=1): it lands in the same folder and resumes from step 3."""
    log_dir = tmp_path / "outputs"
    args = [
        "-m",
        *tiny(corpus=corpus),
        *LEAN_CALLBACKS,
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        callback_override("requeue", SignalAt),
        "+callbacks.requeue.step=2",
        f"+callbacks.requeue.signum={int(signal.SIGUSR1)}",
        callback_override("stop", PreemptOnce),
        "+callbacks.stop.seed=1",
        "+callbacks.stop.when_seed=1",
        "+callbacks.stop.step=3",
        f"+callbacks.stop.signum={int(signal.SIGTERM)}",
        callback_override("start", StartStepFile),
        "seed=1",
    ]
    assert run_cli(args, log_dir) == 143
    assert slurm_job.read_text().split() == ["requeue", "77"]
    (sweep,) = run_folders(log_dir, "sweeps")
    (job,) = job_folders(sweep)
    assert read_metrics(job)["status"] == "interrupted" and (job / "hpc_ckpt_1.ckpt").is_file()

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert run_cli(args, log_dir) == 0  # the same command: what the requeued job runs
    assert run_folders(log_dir, "sweeps") == [sweep] and job_folders(sweep) == [job]
    assert (job / "start_step.txt").read_text() == "3", "from the newest checkpoint: last.ckpt at step 3"
    metrics = read_metrics(job)
    assert metrics["status"] == "ok" and metrics["global_step"] == 6
    assert not (log_dir / "runs").exists(), "no stray run folder"


@pytest.mark.slow  # a subprocess sweep whose jobs run as (fake) SLURM jobs, one of them twice: a minute or more
@pytest.mark.usefixtures("importable_tests")
def test_a_slurm_sweep_runs_through_submitit_and_a_requeued_job_resumes(tmp_path: Path, corpus: Path, monkeypatch):
    """`hydra/launcher=slurm` end to end with SLURM's commands faked (tests/training/fake_slurm.py): submitit
    submits the job array and waits; each job runs our task with SLURM's environment. At the end of step 2 of
    job 1 the time-limit signal comes (SIGUSR1): Lightning saves hpc_ckpt_1 and calls `scontrol requeue`, whose
    SIGTERM stops the run at that step boundary (after its validation: last.ckpt, status interrupted); SLURM
    runs the job again (SLURM_RESTART_COUNT=1) and it resumes in its folder from step 2."""
    from tests.training import fake_slurm

    fake_slurm.install(tmp_path / "bin", tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    args = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=null",
        *tiny(corpus=corpus),
        *LEAN_CALLBACKS,
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        callback_override("start", StartStepFile),
        callback_override("preempt", PreemptOnce),
        "+callbacks.preempt.seed=${seed}",
        "+callbacks.preempt.when_seed=2",
        "+callbacks.preempt.step=2",
        f"+callbacks.preempt.signum={int(signal.SIGUSR1)}",
        "seed=1,2",
    ]
    result = run_script(args, tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": 2 jobs: 2 ok" in result.stderr
    assert (tmp_path / "slurm" / "requeued").read_text().split() == ["7000_1"], "Lightning requeued job 1"
    (sweep,) = run_folders(tmp_path / "outputs", "sweeps")
    jobs = job_folders(sweep)
    assert len(jobs) == 2
    for job, seed, start in zip(jobs, (1, 2), ("0", "2"), strict=True):
        metrics = read_metrics(job)
        assert metrics["status"] == "ok" and metrics["global_step"] == 6 and f"seed={seed}" in metrics["overrides"]
        assert (job / "start_step.txt").read_text() == start, f"{job.name} started at step {start}"
    assert (jobs[1] / "hpc_ckpt_1.ckpt").is_file()
    logs = "".join(p.read_text() for p in (sweep / ".submitit" / "7000_1").glob("*_log.*"))
    assert "earlier attempt: interrupted" in logs, "the second attempt found the first one's record"
