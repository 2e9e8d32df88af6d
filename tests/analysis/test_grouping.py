"""What tells runs apart: differing knobs on raw config values, and seed groups."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from attention_lab.analysis.grouping import differing_knobs, group_by_seed
from attention_lab.analysis.runs import discover_runs, load_run
from attention_lab.cli.compare import main

from .fake_runs import GQA, KNOWN_COLUMNS, MULTIHEAD, make_run, read_csv


def test_differing_knobs_compare_raw_values_and_tell_bools_from_ints(tmp_path: Path) -> None:
    make_run(tmp_path, "a", {"name": "causal", "dropout": 0.1, "qkv_bias": True})
    make_run(tmp_path, "b", {"name": "causal", "dropout": 0.1, "qkv_bias": 1})
    runs = [load_run(d) for d in discover_runs([tmp_path])]
    # paths.*, trainer.default_root_dir and the unresolvable ${hydra:...} differ per run but are not knobs
    assert differing_knobs(runs) == ["attention.qkv_bias"]


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_runs_that_differ_only_by_seed_form_one_group(tmp_path: Path) -> None:
    losses, speeds = [2.10, 2.20, 2.45], [1000.0, 1100.0, 1300.0]
    for i, (loss, speed) in enumerate(zip(losses, speeds, strict=True)):
        make_run(tmp_path, f"{i}_seed={i}", GQA, seed=i, curve=((49, 3.0), (99, loss)), tokens_per_sec=speed)
    assert main([str(tmp_path)]) == 0

    header, rows = read_csv(tmp_path / "report.csv")
    assert [c for c in header if c not in KNOWN_COLUMNS] == ["seed"]
    assert len(rows) == 3
    _, groups = read_csv(tmp_path / "report_grouped.csv")
    assert len(groups) == 1
    group = groups[0]
    assert group["n"] == "3" and group["seeds"] == "0 1 2"
    assert float(group["val_loss_mean"]) == pytest.approx(statistics.mean(losses))
    assert float(group["val_loss_std"]) == pytest.approx(statistics.stdev(losses))
    assert float(group["tokens_per_sec_mean"]) == pytest.approx(statistics.mean(speeds))
    assert float(group["tokens_per_sec_std"]) == pytest.approx(statistics.stdev(speeds))
    assert "## Seed groups" in (tmp_path / "report.md").read_text()


def test_seed_groups_keep_different_configs_apart(tmp_path: Path) -> None:
    for i in range(2):
        make_run(tmp_path, f"gqa_{i}", GQA, seed=i)
        make_run(tmp_path, f"mha_{i}", MULTIHEAD, seed=i)
    runs = [load_run(d) for d in discover_runs([tmp_path])]
    groups = group_by_seed(runs, differing_knobs(runs))
    assert sorted((g.variant, len(g.runs)) for g in groups) == [("gqa", 2), ("multihead", 2)]
