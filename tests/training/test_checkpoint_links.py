"""best.ckpt and last.ckpt: one file on disk when they hold the same step, two when they do not; a resume from
the linked last.ckpt; callbacks=light keeps last.ckpt only (training/checkpointing.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attention_lab.checkpoint import read_checkpoint
from attention_lab.training import checkpointing
from attention_lab.training.task import train
from tests.training.helpers import LEAN_CALLBACKS, ZeroWeightsAt, add_callback, make_cfg, read_metrics, tiny


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def _same_file(a: Path, b: Path) -> bool:
    return os.path.samefile(a, b)


def _run(tmp_path: Path, corpus: Path, *extra: str, zero_at: int | None = None) -> Path:
    cfg = make_cfg(
        tmp_path,
        [*tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=6", "trainer.val_check_interval=2", *extra],
    )
    if zero_at is not None:
        add_callback(cfg, "zero", ZeroWeightsAt, step=zero_at)
    train(cfg)
    return tmp_path / "run" / "checkpoints"


def test_last_is_the_best_file_when_the_final_validation_is_the_best(tmp_path: Path, corpus: Path) -> None:
    """The usual case (the loss still falls at the end): one file, two names, the final step in both."""
    checkpoints = _run(tmp_path, corpus)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["val_loss"] == pytest.approx(metrics["best_val_loss"]), "the final validation must be the best"
    last, best = checkpoints / "last.ckpt", checkpoints / "best.ckpt"
    assert _same_file(last, best) and last.stat().st_nlink == 2, "one file on disk, not two copies"
    assert _step(last) == 6
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"], "no temporary file left"
    # last.ckpt carries the checkpoint callback's state after this validation's update (the best score of step 6)
    state = next(v for k, v in torch.load(last, weights_only=True)["callbacks"].items() if "ModelCheckpoint" in k)
    assert float(state["best_model_score"]) == pytest.approx(metrics["best_val_loss"])


def test_a_worse_final_validation_rewrites_last_and_leaves_the_linked_best_intact(tmp_path: Path, corpus: Path) -> None:
    """Steps 2 and 4 improve (last.ckpt is best.ckpt's file), step 6 is worse: last.ckpt gets a file of its own
    and best.ckpt, which shared a file with the old last.ckpt, still holds step 4. Lightning saves through a
    temporary file and a rename; a save that wrote into the existing file would have overwritten best.ckpt."""
    checkpoints = _run(tmp_path, corpus, zero_at=6)
    last, best = checkpoints / "last.ckpt", checkpoints / "best.ckpt"
    assert not _same_file(last, best)
    assert (_step(last), _step(best)) == (6, 4)
    assert best.stat().st_nlink == last.stat().st_nlink == 1
    read_checkpoint(best)  # still a whole, readable checkpoint


def test_a_resume_from_the_linked_last_checkpoint(tmp_path: Path, corpus: Path) -> None:
    """The resume path (read once, weights_only, then handed to Lightning) accepts a hard-linked last.ckpt."""
    first = _run(tmp_path / "a", corpus)
    assert _same_file(first / "last.ckpt", first / "best.ckpt")
    cfg = make_cfg(
        tmp_path / "b",
        [
            *tiny(corpus=corpus),
            *LEAN_CALLBACKS,
            "trainer.max_steps=8",
            "trainer.val_check_interval=2",
            f"ckpt_path={first / 'last.ckpt'}",
        ],
    )
    metrics = train(cfg)
    assert metrics["status"] == "ok" and metrics["global_step"] == 8
    assert _step(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt") == 8
    assert _step(first / "best.ckpt") == 6, "resuming never writes into the checkpoint it came from"


def test_light_callbacks_keep_last_only_and_still_record_the_best_loss(tmp_path: Path, corpus: Path) -> None:
    checkpoints = _run(tmp_path, corpus, "callbacks=light", zero_at=6)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    assert _step(checkpoints / "last.ckpt") == 6
    metrics = read_metrics(tmp_path / "run")
    assert metrics["best_val_loss"] is not None and metrics["best_val_loss"] < metrics["val_loss"], (
        "the best (step 4) is tracked without a best.ckpt; the zeroed step 6 is worse"
    )


def test_link_last_false_writes_two_files(tmp_path: Path, corpus: Path) -> None:
    checkpoints = _run(tmp_path, corpus, "callbacks.model_checkpoint.link_last=false")
    assert not _same_file(checkpoints / "last.ckpt", checkpoints / "best.ckpt")
    assert _step(checkpoints / "last.ckpt") == _step(checkpoints / "best.ckpt") == 6


def test_without_hard_links_last_is_written_as_a_copy(tmp_path: Path, corpus: Path, monkeypatch) -> None:
    def no_links(*args, **kwargs):
        raise OSError("hard links not supported")

    monkeypatch.setattr(checkpointing.os, "link", no_links)
    checkpoints = _run(tmp_path, corpus)
    assert not _same_file(checkpoints / "last.ckpt", checkpoints / "best.ckpt")
    assert _step(checkpoints / "last.ckpt") == 6
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_link_or_copy_replaces_the_target_atomically(tmp_path: Path) -> None:
    source, target = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    assert checkpointing.link_or_copy(source, target)
    assert target.read_bytes() == b"new" and _same_file(source, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
