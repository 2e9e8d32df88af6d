"""Resuming from a checkpoint: read once and safely, refused (with the fix named) when the model, the
tokenizer or the optimizer settings differ or the run is already finished, and exact when allowed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import open_dict

from attention_lab.checkpoint import CheckpointError
from attention_lab.training.task import train
from tests.training.helpers import (
    CORPUS,
    FINISHED_STEPS,
    LEAN_CALLBACKS,
    finished_overrides,
    make_cfg,
    read_metrics,
    run_cli,
    run_folders,
    tiny,
)


def last_ckpt(run_root: Path) -> Path:
    return run_root / "run" / "checkpoints" / "last.ckpt"


def assert_refused_cleanly(code: int, stderr: str, log_dir: Path, *fragments: str) -> None:
    """A user's mistake through the CLI: exit 2, one `error:` line naming the problem, no traceback, no folder."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert run_folders(log_dir) == [], "a refused run leaves no run folder behind"


def test_missing_corrupt_and_mismatched_checkpoints_are_refused(tmp_path: Path, finished_run: Path) -> None:
    corpus = finished_run / "corpus.txt"
    with pytest.raises(CheckpointError, match=r"/no/such.ckpt does not exist"):
        train(make_cfg(tmp_path, [*tiny(), "ckpt_path=/no/such.ckpt"]))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(make_cfg(tmp_path, [*tiny(), f"ckpt_path={bad}"]))
    other = make_cfg(
        tmp_path, [*finished_overrides(corpus), "model.d_model=64", f"ckpt_path={last_ckpt(finished_run)}"]
    )
    with pytest.raises(CheckpointError, match=r"d_model: checkpoint 32 vs config 64"):
        train(other)
    assert not (tmp_path / "run").exists(), "refused before anything was built or written"


def _source(file: Any) -> Path | None:
    """What torch.load was asked to read: a path, or the path of an open file (Lightning passes fsspec files)."""
    if isinstance(file, str | os.PathLike):
        return Path(file).resolve()
    name = getattr(file, "path", None) or getattr(file, "name", None)
    return Path(name).resolve() if isinstance(name, str) else None


def test_resume_reads_the_checkpoint_once_and_never_unpickles(tmp_path: Path, finished_run: Path, monkeypatch) -> None:
    """Old: the file was read three times (validation, the vocab check, Lightning's own load), and Lightning's
    read followed TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, i.e. it unpickled whatever the file held."""
    ckpt = last_ckpt(finished_run)
    calls: list[tuple[Path | None, Any]] = []
    real_load = torch.load

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((_source(file), kwargs.get("weights_only", "not passed")))
        return real_load(file, *args, **kwargs)

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setattr(torch, "load", spy)
    steps = FINISHED_STEPS + 2
    cfg = make_cfg(
        tmp_path,
        [
            *finished_overrides(finished_run / "corpus.txt"),
            *LEAN_CALLBACKS,
            f"trainer.max_steps={steps}",
            f"ckpt_path={ckpt}",
        ],
    )
    metrics = train(cfg)

    assert metrics["status"] == "ok" and metrics["global_step"] == steps, "the resume itself worked"
    reads = [weights_only for source, weights_only in calls if source == ckpt.resolve()]
    assert reads == [True], f"expected one weights_only=True read of {ckpt}, got {calls}"
    assert all(weights_only is True for _, weights_only in calls), calls


def test_resume_with_another_char_tokenizer_of_the_same_size_is_refused(
    tmp_path: Path, finished_run: Path, capsys
) -> None:
    """Same number of characters, different characters: every id would mean another character. Old: only
    vocab_size was compared, so this resumed silently and trained on garbled ids."""
    assert "z" in CORPUS and "Z" not in CORPUS
    swapped = tmp_path / "swapped.txt"
    swapped.write_text(CORPUS.replace("z", "Z"))
    ckpt = last_ckpt(finished_run)
    resume = [*finished_overrides(swapped), *LEAN_CALLBACKS, f"trainer.max_steps={FINISHED_STEPS + 2}"]

    with pytest.raises(CheckpointError, match=r"another tokenizer.*\['z'\].*\['Z'\]"):
        train(make_cfg(tmp_path, [*resume, f"ckpt_path={ckpt}"]))
    assert not (tmp_path / "run" / "checkpoints").exists()

    log_dir = tmp_path / "outputs"
    code = run_cli([*resume, f"ckpt_path={ckpt}"], log_dir)
    assert_refused_cleanly(code, capsys.readouterr().err, log_dir, "tokenizer", str(ckpt))


def test_resume_with_changed_optimizer_settings_is_refused(tmp_path: Path, finished_run: Path, capsys) -> None:
    """A resume restores the optimizer and the schedule from the file, so optim.lr=1e-9 would be recorded in
    the run's config but not used. Old: accepted silently."""
    ckpt = last_ckpt(finished_run)
    resume = [*finished_overrides(finished_run / "corpus.txt"), f"trainer.max_steps={FINISHED_STEPS + 2}"]
    with pytest.raises(CheckpointError, match=r"other optimizer settings \(lr: checkpoint 0.003 vs config 1e-09\)"):
        train(make_cfg(tmp_path, [*resume, "optim.lr=1e-9", f"ckpt_path={ckpt}"]))

    log_dir = tmp_path / "outputs"
    code = run_cli([*resume, "optim.lr=1e-9", "optim.weight_decay=0.0", f"ckpt_path={ckpt}"], log_dir)
    assert_refused_cleanly(code, capsys.readouterr().err, log_dir, "lr: checkpoint", "weight_decay: checkpoint")


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_resuming_a_finished_run_says_how_to_extend_it(tmp_path: Path, finished_run: Path, capsys) -> None:
    """Old: Lightning loaded the checkpoint, found max_steps reached, and "trained" zero steps with exit 0 (and a
    fresh run folder). Now: refused with the fix, and the fix works."""
    ckpt = last_ckpt(finished_run)
    same = [*finished_overrides(finished_run / "corpus.txt"), *LEAN_CALLBACKS, f"ckpt_path={ckpt}"]
    log_dir = tmp_path / "outputs"
    code = run_cli(same, log_dir)
    stderr = capsys.readouterr().err
    assert_refused_cleanly(code, stderr, log_dir, "finished run", f"step {FINISHED_STEPS}", "trainer.max_steps")

    longer = 2 * FINISHED_STEPS
    assert run_cli([*same, f"trainer.max_steps={longer}"], log_dir) == 0
    (run,) = run_folders(log_dir)
    metrics = read_metrics(run)
    assert metrics["status"] == "ok" and metrics["global_step"] == longer
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == longer


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "total"), [(10, 14), (35, 40)])  # mid-epoch; the end of epoch 0 (35 batches)
def test_resume_continues_at_the_same_step_with_the_same_losses(tmp_path: Path, corpus: Path, stop, total) -> None:
    common = [
        *tiny(corpus=corpus),
        "trainer.val_check_interval=5",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        f"trainer.max_steps={total}",
    ]

    def run(name: str, extra: list[str], every: int | None = None) -> None:
        cfg = make_cfg(tmp_path / name, [*common, *extra])
        cfg.paths.output_dir = str(tmp_path / name)
        if every:  # keep a checkpoint at step `every` of a run whose schedule still spans `total` steps
            with open_dict(cfg):
                cfg.callbacks.model_checkpoint.every_n_train_steps = every
                cfg.callbacks.model_checkpoint.save_top_k = -1
                cfg.callbacks.model_checkpoint.monitor = None
                cfg.callbacks.model_checkpoint.filename = "step{step}"
        train(cfg)

    run("full", [])
    run("a", [], every=stop)
    ckpt = tmp_path / "a" / "checkpoints" / f"step{stop}.ckpt"
    assert ckpt.is_file()
    run("b", [f"ckpt_path={ckpt}"])

    def losses(name: str) -> dict[int, float]:
        rows = (tmp_path / name / "csv" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        step, loss = header.index("step"), header.index("train/loss")
        return {int(r.split(",")[step]): float(r.split(",")[loss]) for r in rows[1:] if r.split(",")[loss]}

    reference, after = losses("full"), losses("b")
    assert min(after) == stop, f"the resumed run must start at step {stop}"
    assert sorted(after) == list(range(stop, total))
    for step in sorted(after):
        assert after[step] == pytest.approx(reference[step], abs=1e-5), step
    final = {n: read_metrics(tmp_path / n)["val_loss"] for n in ("full", "b")}
    assert final["b"] == pytest.approx(final["full"], abs=1e-5)


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_extending_a_run_keeps_the_warmup_it_trained_with(tmp_path: Path, corpus: Path) -> None:
    """Found by a review: a 4-step run clamps optim.warmup_steps=10 to 1 step; extending it to 20 steps
    recomputed the warmup against the new total (10 < 20) and restarted the warmup at step 4."""
    first = make_cfg(
        tmp_path / "a", [*tiny(corpus=corpus), *LEAN_CALLBACKS, "optim.warmup_steps=10", "trainer.max_steps=4"]
    )
    assert train(first)["warmup_steps_used"] == 1
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    extended = make_cfg(
        tmp_path / "b",
        [
            *tiny(corpus=corpus),
            *LEAN_CALLBACKS,
            "optim.warmup_steps=10",
            "trainer.max_steps=20",
            f"ckpt_path='{last}'",
        ],
    )
    metrics = train(extended)
    assert metrics["status"] == "ok" and metrics["global_step"] == 20
    assert metrics["warmup_steps_used"] == 1
    saved = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["warmup_steps"] == 1
