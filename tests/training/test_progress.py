"""The terminal: one progress bar over the whole run (global step / max_steps, run ETA, losses, tokens/s), the
run folder printed first, and library noise dropped (training/progress.py)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from attention_lab.training import progress
from attention_lab.training.progress import RunProgressBar, quiet_library_noise, si
from attention_lab.training.task import train
from tests.training.helpers import LEAN_CALLBACKS, add_callback, make_cfg, tiny


class CountingBar(RunProgressBar):
    """Counts the reads of Lightning's progress-bar metrics (each one a host sync of the loss on a GPU)."""

    reads = 0

    def get_metrics(self, trainer, pl_module):
        CountingBar.reads += 1
        return super().get_metrics(trainer, pl_module)


def _run_with_bar(tmp_path: Path, corpus: Path, *extra: str) -> None:
    cfg = make_cfg(
        tmp_path,
        [
            *tiny(corpus=corpus),
            *LEAN_CALLBACKS,
            "trainer.enable_progress_bar=true",
            "trainer.max_steps=20",
            "trainer.val_check_interval=10",
            *extra,
        ],
    )
    train(cfg)


def test_the_bar_counts_steps_of_the_run_and_shows_losses_and_tokens_per_sec(
    tmp_path: Path, corpus: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(progress, "_hint_shown", False)  # the first run of this process, as a user's
    _run_with_bar(tmp_path, corpus, "callbacks.progress_bar.min_interval_s=0")
    out = capsys.readouterr().out.replace("\r", "\n")
    lines = [line for line in out.splitlines() if line.startswith(("train:", "validating:"))]
    assert lines, out
    assert out.index("run folder: ") < out.index(lines[0]), "the run folder is printed before the first step"
    assert f"run folder: {tmp_path / 'run'}" in out and "TensorBoard: " in out
    assert any("20/20" in line for line in lines), "global step / max_steps, not batches of an epoch"
    assert not any("Epoch" in line for line in lines)
    final = [line for line in lines if "20/20" in line][-1]
    assert "train/loss=" in final and "val/loss=" in final and "@20" in final, final  # the latest, with its step
    assert "tok/s=" in final and "v_num" not in final
    assert not any("Validation DataLoader" in line or "Sanity" in line for line in lines), "no second bar"
    # a second run in the same process (the next job of a sweep): its folder, not the TensorBoard command again
    _run_with_bar(tmp_path / "second", corpus)
    second = capsys.readouterr().out.replace("\r", "\n")
    first_line = next(line for line in second.splitlines() if line.startswith("run folder: "))
    assert second.index(first_line) < second.index("train:")
    assert second.split("train:")[0].count("TensorBoard: ") == 0


def test_the_bar_reads_the_metrics_only_at_its_refresh_rate(tmp_path: Path, corpus: Path) -> None:
    """20 steps at refresh_rate=5: 4 refreshes (plus Lightning's refresh after each validation), not 20."""
    CountingBar.reads = 0
    cfg = make_cfg(
        tmp_path,
        [
            *tiny(corpus=corpus),
            *LEAN_CALLBACKS,
            "trainer.enable_progress_bar=true",
            "trainer.max_steps=20",
            "trainer.val_check_interval=10",
            "~callbacks.progress_bar",
        ],
    )
    add_callback(cfg, "progress_bar", CountingBar, refresh_rate=5, min_interval_s=0.0)
    train(cfg)
    assert 4 <= CountingBar.reads <= 4 + 3, CountingBar.reads  # 2 validations + the sanity check


def test_the_bar_starts_a_resumed_run_at_its_step(finished_run: Path, tmp_path: Path, capsys) -> None:
    """A resume from step 4 to 6: the bar starts at 4/6, not at 0 of an epoch."""
    from tests.training.helpers import finished_overrides

    corpus = finished_run / "corpus.txt"
    overrides = [o for o in finished_overrides(corpus) if not o.startswith("trainer.max_steps")]
    cfg = make_cfg(
        tmp_path,
        [
            *overrides,
            *LEAN_CALLBACKS,
            "trainer.max_steps=6",
            "trainer.enable_progress_bar=true",
            f"ckpt_path={finished_run / 'run' / 'checkpoints' / 'last.ckpt'}",
        ],
    )
    train(cfg)
    out = capsys.readouterr().out.replace("\r", "\n")
    bars = [line for line in out.splitlines() if line.startswith("train:")]
    assert "4/6" in bars[0] and "6/6" in bars[-1], bars


def test_si() -> None:
    assert (si(950), si(12_345.6), si(2.5e6), si(3e9)) == ("950", "12.3k", "2.5M", "3.0G")


# ------------------------------------------------------------------------------------------------- noise
def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, message, None, None)


def test_the_noise_filter_drops_adverts_and_repeats_and_keeps_information() -> None:
    noise = progress._LightningNoise()
    assert not noise.filter(_record("💡 Tip: For seamless cloud logging, try installing [litlogger]"))
    assert not noise.filter(_record("TPU available: False, using: 0 TPU cores"))
    assert noise.filter(_record("TPU available: True, using: 8 TPU cores")), "a TPU that is there is information"
    assert noise.filter(_record("GPU available: True (cuda), used: True"))
    assert not noise.filter(_record("GPU available: True (cuda), used: True")), "once per process, not per job"
    assert noise.filter(_record("GPU available: True (cuda), used: False")), "a different line is news"
    assert not noise.filter(_record("`Trainer.fit` stopped: `max_steps=300` reached."))
    assert noise.filter(_record("`Trainer.fit` stopped: No training batches."))
    assert noise.filter(_record("Seed set to 1337"))


def test_quiet_library_noise_is_installed_once_and_filters_the_logger(caplog) -> None:
    quiet_library_noise()
    quiet_library_noise()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert logger.filters.count(progress._NOISE) == 1
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: try installing [litmodels]")
        logger.info("GPU available: False, used: False (a line for this test)")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False (a line for this test)"]


@pytest.mark.parametrize(
    ("message", "category"),
    [
        (
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
            FutureWarning,
        ),
        ("The dirpath has changed from 'a' to 'b', therefore `best_model_score` ... won't be reloaded.", UserWarning),
        ("The number of training batches (35) is smaller than the logging interval Trainer(...)", UserWarning),
    ],
)
def test_warnings_about_library_internals_are_silenced(message: str, category: type[Warning]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_noise()
        warnings.warn(message, category, stacklevel=1)
        warnings.warn("attention.window=200 >= model.context_length", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["attention.window=200 >= model.context_length"], "others stay"
