"""The length plots: drawn only when runs carry the numbers, null points left out, faceted by variant when many."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from attention_lab.analysis.grouping import differing_knobs, group_by_seed
from attention_lab.analysis.length_plots import (
    MAX_LINES_ONE_AXES,
    Line,
    _facets,
    length_lines,
    plot_loss_by_position,
    plot_val_loss_vs_length,
    position_lines,
)
from attention_lab.analysis.runs import OK, Group, Run, discover_runs, load_run
from attention_lab.cli.compare import main

from .fake_runs import GQA, LEARNED_BY_LENGTH, MULTIHEAD, ROPE_BY_LENGTH, ROPE_BY_POSITION, make_run

LENGTH_PLOTS = ("val_loss_vs_length.png", "loss_by_position.png")


def test_both_plots_are_written_valid_and_linked(length_sweep: Path) -> None:
    md = (length_sweep / "report.md").read_text()
    for name in LENGTH_PLOTS:
        image = mpimg.imread(length_sweep / name)
        assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 300, name
        assert image.std() > 0.01, f"{name} is blank"
        assert f"![{name}]({name})" in md


def test_lines_are_seed_groups_with_std_and_leave_null_points_out(length_sweep: Path) -> None:
    runs = [load_run(d) for d in discover_runs([length_sweep])]
    groups = group_by_seed(runs, differing_knobs(runs))
    lines = {line.label: line for line in length_lines(groups)}
    assert set(lines) == {"gqa (position=learned)", "gqa (position=rope)"}  # the older run has no line
    learned = lines["gqa (position=learned)"]
    assert learned.x == [16.0] and learned.n == 3  # stops at the training context
    assert learned.y == pytest.approx([statistics.mean(LEARNED_BY_LENGTH[16])])
    rope = lines["gqa (position=rope)"]
    assert rope.x == [16.0, 32.0, 64.0]
    assert rope.err == pytest.approx([statistics.stdev(v) for v in ROPE_BY_LENGTH.values()])

    (curve,), lengths = position_lines(groups)
    assert curve.label == "gqa (position=rope)" and lengths == {64}
    assert curve.x == [8.0, 24.0, 40.0, 56.0]  # bucket centres: 64 tokens in 4 buckets of 16
    assert curve.y == pytest.approx([statistics.mean(b) for b in zip(*ROPE_BY_POSITION, strict=True)])


def test_no_per_position_curve_means_no_loss_by_position_plot(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", "a", GQA, position="alibi", by_length={16: 1.9, 32: 2.0}, events=False)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "loss_by_position.png").write_bytes(b"stale plot of an earlier comparison")
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert (out / "val_loss_vs_length.png").is_file()
    assert not (out / "loss_by_position.png").exists()
    assert "- loss_by_position.png: nothing to plot" in (out / "report.md").read_text()


def test_old_runs_remove_a_stale_length_plot_and_do_not_mention_it(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", "a", MULTIHEAD, events=False)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "val_loss_vs_length.png").write_bytes(b"stale plot of an earlier comparison")
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not (out / "val_loss_vs_length.png").exists()
    md = (out / "report.md").read_text()
    assert "evaluation length" not in md and "val_loss_vs_length" not in md and "loss_by_position" not in md


def _line(variant: str, position: str) -> Line:
    return Line(f"{variant} (position={position})", variant, [16.0], [2.0], [None], 1)


def test_many_lines_are_faceted_by_variant_with_settings_in_one_order() -> None:
    positions = ["learned", "sinusoidal", "rope", "alibi", "none"]
    variants = ["multihead", "gqa", "mqa", "sliding_window"]
    lines = [_line(v, p) for v in variants for p in reversed(positions) if (v, p) != ("mqa", "none")]
    assert len(lines) == 19
    order = [f"(position={p})" for p in positions]
    facets = _facets(lines, order)
    assert [name for name, _ in facets] == variants
    assert [line.label for line in facets[2][1]] == [f"mqa (position={p})" for p in positions[:4]]


def test_few_lines_or_one_line_per_variant_stay_on_one_axes() -> None:
    few = [_line("gqa", p) for p in ("rope", "alibi")] + [_line("mqa", "rope")]
    assert [name for name, _ in _facets(few, [])] == [""]
    one_each = [_line(f"v{i}", "rope") for i in range(MAX_LINES_ONE_AXES + 2)]
    ((name, drawn),) = _facets(one_each, [])
    assert name == "" and drawn == one_each


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_a_faceted_plot_draws_every_group_in_its_variants_panel(tmp_path: Path) -> None:
    """2 variants x 4 position schemes: 8 lines, above MAX_LINES_ONE_AXES, so two panels side by side."""
    groups = []
    for variant in ("gqa", "mqa"):
        for i, position in enumerate(("learned", "rope", "alibi", "none")):
            by_length = {"16": 1.9, "32": None if position == "learned" else 2.0 + i / 10}
            curve = {"length": 32, "bucket_size": 8, "loss": [1.9, 2.0, 2.0 + i / 10, 2.1 + i / 10]}
            metrics = {"val_loss_by_length": by_length, "loss_by_position": curve}
            run = Run(Path(f"{variant}_{position}"), OK, metrics=metrics, config={"model.context_length": 16})
            groups.append(Group(variant, {}, [run], f"{variant} (position={position})"))
    labels = [g.label for g in groups]
    assert plot_val_loss_vs_length(groups, tmp_path / "a.png") == labels
    assert plot_loss_by_position(groups, tmp_path / "b.png") == labels
    for name in ("a.png", "b.png"):
        height, width, _ = mpimg.imread(tmp_path / name).shape
        assert width > 1.8 * height, name  # two panels in a row, not one axes with a legend
