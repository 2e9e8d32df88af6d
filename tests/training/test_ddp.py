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


def _train_losses(run: Path) -> dict[int, float]:
    """Rank 0's train/loss per step, from the run's CSV log."""
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    step, loss = header.index("step"), header.index("train/loss")
    return {int(r.split(",")[step]): float(r.split(",")[loss]) for r in rows[1:] if r.split(",")[loss]}


@pytest.mark.slow  # two runs of two processes each
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_ddp_resumed_mid_epoch_reproduces_the_uninterrupted_losses(tmp_path: Path, corpus: Path, strategy: str) -> None:
    """Each rank skips the batches of its own shard that it trained on, and every rank restores its own copy of
    the optimizer state, so the resumed run's losses are those of the uninterrupted run, step for step, dropout
    included. Before: Lightning's sampler wrapper restarted the epoch's order (ddp), and under ddp_spawn all
    ranks shared the checkpoint's moments in shared memory and their weights drifted apart. The ranks validate
    different numbers of batches (no window repeated), which must not hang them."""
    common = [
        *tiny(),
        f"trainer={strategy}",
        "trainer.devices=2",
        "data=text",
        f"data.path={corpus}",
        "data.batch_size=7",  # 15 val windows: 8 and 7 per rank, so 2 val batches on rank 0 and 1 on rank 1
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        "+callbacks.model_checkpoint.every_n_train_steps=3",
        "callbacks.model_checkpoint.save_top_k=-1",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.model_checkpoint.filename='step{step}'",
    ]
    first = run_script(common, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (full,) = run_folders(tmp_path / "outputs")
    ckpt = full / "checkpoints" / "step3.ckpt"
    assert ckpt.is_file(), sorted(p.name for p in (full / "checkpoints").iterdir())
    second = run_script([*common, f"ckpt_path='{ckpt}'"], tmp_path)  # quoted, as the printed resume command
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from a checkpoint that ended before" not in second.stderr, "Lightning's warning is wrong here"
    assert "sync_dist=True" not in second.stderr, "val/* are reduced over the ranks already"
    resumed = next(run for run in run_folders(tmp_path / "outputs") if run != full)
    reference, after = _train_losses(full), _train_losses(resumed)
    assert sorted(after) == list(range(3, 8)), "the resumed run trains steps 3..7"
    for step in sorted(after):
        assert after[step] == pytest.approx(reference[step], abs=1e-5), step
