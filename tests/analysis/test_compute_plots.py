"""val_loss_vs_flops.png and val_loss_vs_wall_time.png: their x values, seed groups and old runs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from torch.utils.tensorboard import SummaryWriter

from attention_lab.analysis.compute_plots import (
    VS_FLOPS,
    VS_WALL_TIME,
    flops_points,
    group_line,
    wall_time_points,
)
from attention_lab.analysis.grouping import differing_knobs, group_by_seed
from attention_lab.analysis.runs import discover_runs, load_run
from attention_lab.cli.compare import main

from .fake_runs import GQA, MULTIHEAD, TOKENS_PER_STEP, make_run

CURVE = ((49, 3.0), (99, 2.6), (149, 2.3))
START = 1_700_000_000.0  # wall time of the run's first scalar


def timed_run(
    root: Path, name: str, attention: dict, seed: int, seconds: tuple[float, ...], flops: float | None
) -> Path:
    """A fake run whose events have known wall times: train/loss at START, val/loss `seconds` later; with
    `flops_per_token` in metrics.json unless None (a run from before FLOPs were recorded)."""
    losses = tuple((step, loss + 0.1 * seed) for step, loss in CURVE)
    run_dir = make_run(root, name, attention, seed=seed, curve=losses, events=False)
    writer = SummaryWriter(log_dir=str(run_dir))
    writer.add_scalar("train/loss", 4.0, 0, walltime=START)
    for (step, loss), after in zip(losses, seconds, strict=True):
        writer.add_scalar("val/loss", loss, step, walltime=START + after)
    writer.close()
    if flops is not None:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        (run_dir / "metrics.json").write_text(json.dumps({**metrics, "flops_per_token": flops}))
    return run_dir


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """gqa with two seeds (FLOPs recorded) and one older multihead run without flops_per_token."""
    timed_run(tmp_path, "gqa_0", GQA, 0, (10.0, 20.0, 30.0), flops=1000.0)
    timed_run(tmp_path, "gqa_1", GQA, 1, (12.0, 24.0, 36.0), flops=1000.0)
    timed_run(tmp_path, "old", MULTIHEAD, 0, (5.0, 9.0, 13.0), flops=None)
    return tmp_path


def test_x_values_are_flops_and_seconds_since_the_first_point(runs_dir: Path) -> None:
    run = load_run(runs_dir / "gqa_0")
    expected = [((step + 1) * TOKENS_PER_STEP * 1000.0, loss) for step, loss in CURVE]  # tokens x flops_per_token
    assert sorted(flops_points(run).values()) == [pytest.approx(point) for point in expected]
    seconds = [(10.0, 3.0), (20.0, 2.6), (30.0, 2.3)]
    assert sorted(wall_time_points(run).values()) == [pytest.approx(point) for point in seconds]
    assert flops_points(load_run(runs_dir / "old")) == {}  # no flops_per_token: left out


def test_a_seed_group_is_its_mean_with_a_std(runs_dir: Path) -> None:
    runs = [load_run(d) for d in discover_runs([runs_dir])]
    gqa = next(g for g in group_by_seed(runs, differing_knobs(runs)) if g.variant == "gqa")
    line = group_line(gqa, wall_time_points)
    assert line is not None and line.n == 2
    assert line.x == pytest.approx([11.0, 22.0, 33.0])  # seconds differ per seed: their mean
    assert line.y == pytest.approx([3.05, 2.65, 2.35])
    assert line.err == pytest.approx([0.0707107] * 3, rel=1e-5)  # sample std of (l, l + 0.1)
    flops = group_line(gqa, flops_points)
    assert flops is not None and flops.x == pytest.approx([(s + 1) * TOKENS_PER_STEP * 1000.0 for s, _ in CURVE])


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_compare_writes_both_plots(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert main([str(runs_dir), "--out", str(out)]) == 0
    for name in (VS_FLOPS, VS_WALL_TIME):
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.std() > 0.01, name
        assert f"]({name})" in (out / "report.md").read_text()


def test_runs_without_flops_get_no_flops_plot_and_no_note(tmp_path: Path) -> None:
    old_only = tmp_path / "old_only"
    timed_run(old_only, "old", MULTIHEAD, 0, (5.0, 9.0, 13.0), flops=None)
    (old_only / "cmp").mkdir()
    (old_only / "cmp" / VS_FLOPS).write_bytes(b"stale plot of an earlier comparison")
    assert main([str(old_only / "old"), "--out", str(old_only / "cmp")]) == 0
    md = (old_only / "cmp" / "report.md").read_text()
    assert not (old_only / "cmp" / VS_FLOPS).exists() and VS_FLOPS not in md  # no file, no "nothing to plot"
    assert (old_only / "cmp" / VS_WALL_TIME).is_file()
