"""The plots: valid, non-blank images; a run without an event file stays out of them."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pytest

from attention_lab.analysis.grouping import differing_knobs, run_labels
from attention_lab.analysis.plots import plot_val_loss_vs_tokens
from attention_lab.analysis.runs import OK, discover_runs, load_run
from attention_lab.cli.compare import main

from .fake_runs import GQA, MULTIHEAD, PLOTS, make_run, read_csv


def test_plots_are_valid_images(sweep: Path) -> None:
    for name in PLOTS:
        image = mpimg.imread(sweep / name)
        assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 300, name
        assert image.std() > 0.01, f"{name} is blank"


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_a_run_without_event_file_is_in_the_table_but_not_in_the_plots(tmp_path: Path) -> None:
    make_run(tmp_path, "0_attention=multihead", MULTIHEAD)
    make_run(tmp_path, "1_attention=gqa", GQA, curve=((49, 2.9), (149, 2.2)), events=False)
    assert main([str(tmp_path), "--out", str(tmp_path / "cmp")]) == 0
    _, rows = read_csv(tmp_path / "cmp" / "report.csv")
    assert [(r["variant"], r["status"]) for r in rows] == [("gqa", OK), ("multihead", OK)]
    assert "no TensorBoard event file" in rows[0]["note"]

    runs = [load_run(d) for d in discover_runs([tmp_path])]
    drawn = plot_val_loss_vs_tokens(runs, run_labels(runs, differing_knobs(runs)), tmp_path / "curves.png")
    assert drawn == ["multihead"]
    for name in PLOTS:
        assert (tmp_path / "cmp" / name).is_file()


def test_a_plot_with_nothing_to_draw_removes_a_stale_file(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", "0_attention=gqa", GQA, events=False)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "attention_maps.png").write_bytes(b"stale plot of an earlier comparison")
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not (out / "attention_maps.png").exists()
    assert not (out / "val_loss_vs_tokens.png").exists()
    assert (out / "final_val_loss.png").is_file()  # metrics.json has the final loss: the bar is drawn
    md = (out / "report.md").read_text()
    assert "- attention_maps.png: nothing to plot" in md and "- val_loss_vs_tokens.png: nothing to plot" in md
    assert "](final_val_loss.png)" in md
