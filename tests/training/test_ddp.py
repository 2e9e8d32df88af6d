"""Two CPU processes: ddp (Lightning re-launches the command line for rank 1) and ddp_spawn (workers forked
from the task). Both must write one run folder, with rank 0's metrics counting both ranks' tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import read_metrics, run_folders, run_script, tiny


@pytest.mark.slow
def test_ddp_spawn_writes_the_workers_metrics(tmp_path: Path, corpus: Path) -> None:
    result = run_script(
        [
            *tiny(),
            "trainer=ddp_spawn",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "data=text",
            f"data.path={corpus}",
            "trainer.max_steps=5",
            "trainer.val_check_interval=2",
            "callbacks=none",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_folders(tmp_path / "outputs")
    metrics = read_metrics(run)
    assert metrics["global_step"] == 5 and metrics["tokens_seen"] == 5 * 4 * 32 * 2
    assert metrics["val_loss"] is not None


@pytest.mark.slow
def test_ddp_two_cpu_processes_single_run(tmp_path: Path, corpus: Path) -> None:
    result = run_script(
        [
            *tiny(),
            "trainer=ddp",
            "trainer.devices=2",
            "data=text",
            f"data.path={corpus}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = run_folders(tmp_path / "outputs")
    # rank 1 is told rank 0's folder (hydra.run.dir=...): an exclusive unique_dir must not give it a -2 folder
    assert len(runs) == 1, "rank 1 must write into rank 0's run folder, not a folder of its own"
    metrics = read_metrics(runs[0])
    assert metrics["status"] == "ok" and metrics["global_step"] == 4
    assert metrics["tokens_seen"] == 4 * 4 * 32 * 2  # two ranks, each its own shard
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1, "only rank 0 logs"
