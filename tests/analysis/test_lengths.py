"""Loss by evaluation length in the tables: report.csv, report_grouped.csv and report.md (the `length_sweep`
fixture: a seed group of 3 per position scheme, learned n/a past the training context, one older run)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from attention_lab.analysis.lengths import LengthStat, eval_lengths, losses_by_length, training_context
from attention_lab.analysis.runs import OK, Run

from .fake_runs import CONTEXT, LEARNED_BY_LENGTH, ROPE_BY_LENGTH, read_csv

LENGTHS = (16, 32, 64)


def test_grouped_csv_has_mean_and_std_over_the_seeds_per_length(length_sweep: Path) -> None:
    header, rows = read_csv(length_sweep / "report_grouped.csv")
    expected = [name for n in LENGTHS for name in (f"val_loss@{n}", f"val_loss@{n}_std")]
    assert [c for c in header if c.startswith("val_loss@")] == expected
    by_group = {r["group"]: r for r in rows}
    rope = by_group["gqa (position=rope)"]
    assert rope["n"] == "3"
    for n, losses in ROPE_BY_LENGTH.items():
        assert float(rope[f"val_loss@{n}"]) == pytest.approx(statistics.mean(losses))
        assert float(rope[f"val_loss@{n}_std"]) == pytest.approx(statistics.stdev(losses))
    assert float(rope["val_loss@16"]) == pytest.approx(1.923333, abs=1e-6)
    assert float(rope["val_loss@16_std"]) == pytest.approx(0.025166, abs=1e-6)
    learned = by_group["gqa (position=learned)"]
    assert float(learned["val_loss@16"]) == pytest.approx(statistics.mean(LEARNED_BY_LENGTH[16]))
    assert learned["val_loss@32"] == learned["val_loss@32_std"] == learned["val_loss@64"] == ""
    # the older run (no model.position: learned, as it trained): no numbers, no crash
    assert all(by_group["multihead (position=learned)"][c] == "" for c in expected)


def test_run_csv_has_each_runs_loss_per_length_empty_where_not_applicable(length_sweep: Path) -> None:
    header, rows = read_csv(length_sweep / "report.csv")
    assert [c for c in header if c.startswith("val_loss@")] == [f"val_loss@{n}" for n in LENGTHS]
    assert header[-2:] == ["status", "note"]  # the length columns come with the other numbers
    by_run = {r["run"]: r for r in rows}
    for seed in range(3):
        assert [float(by_run[f"rope_{seed}"][f"val_loss@{n}"]) for n in LENGTHS] == [
            ROPE_BY_LENGTH[n][seed] for n in LENGTHS
        ]
        learned = by_run[f"learned_{seed}"]
        assert float(learned["val_loss@16"]) == LEARNED_BY_LENGTH[16][seed]
        assert learned["val_loss@32"] == learned["val_loss@64"] == ""
    assert by_run["old"]["val_loss@16"] == "" and by_run["old"]["status"] == OK


def test_report_md_has_a_row_per_group_with_mean_std_and_na(length_sweep: Path) -> None:
    md = (length_sweep / "report.md").read_text()
    section = md.split("## Loss by evaluation length", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table[0] == "| group | n | @16 (train) | @32 | @64 |"
    assert table[2:] == [
        "| gqa (position=learned) | 3 | 1.900 ± 0.026 | n/a | n/a |",
        "| gqa (position=rope) | 3 | 1.923 ± 0.025 | 2.023 ± 0.021 | 2.150 ± 0.050 |",
    ]  # the older multihead run has no row
    assert f"- n/a at 32, 64: learned positions stop at context_length={CONTEXT}" in section
    assert "Each length is evaluated on 40,960 tokens." in section


def test_runs_without_length_fields_get_no_columns_section_or_plots(sweep: Path) -> None:
    for name in ("report.csv", "report_grouped.csv"):
        header, _ = read_csv(sweep / name)
        assert not [c for c in header if "@" in c], name
    md = (sweep / "report.md").read_text()
    assert "evaluation length" not in md and "length.png" not in md and "position.png" not in md
    assert not (sweep / "val_loss_vs_length.png").exists() and not (sweep / "loss_by_position.png").exists()


def _run(metrics: dict[str, object], config: dict[str, object] | None = None) -> Run:
    return Run(path=Path("r"), status=OK, metrics=metrics, config=config)


def test_losses_by_length_keeps_null_as_na_and_drops_what_is_no_length_or_number() -> None:
    run = _run({"val_loss_by_length": {"32": None, "16": 1.9, "64": math.nan, "all": 2.0, "128": "x"}})
    assert losses_by_length(run) == {16: 1.9, 32: None}
    assert eval_lengths([run, _run({}), _run({"val_loss_by_length": {"256": 2.1}})]) == [16, 32, 256]
    assert losses_by_length(_run({"val_loss_by_length": None})) == {}


def test_length_stat_text() -> None:
    assert LengthStat(1.93412, 0.01234, 3).text(3) == "1.934 ± 0.012"
    assert LengthStat(1.93412, None, 1).text(1) == "1.934"
    assert LengthStat(1.93412, 0.01234, 2).text(3) == "1.934 ± 0.012 (n=2)"  # one seed lacks this length
    assert LengthStat(None, None, 0, not_applicable=True).text(3) == "n/a"
    assert LengthStat(None, None, 0).text(3) == "—"


def test_training_context_only_when_all_runs_agree() -> None:
    assert training_context([_run({}, {"model.context_length": 128})] * 2) == 128
    assert training_context([_run({}, {"model.context_length": 128}), _run({}, {"model.context_length": 64})]) is None
    assert training_context([_run({}, {"model.context_length": 128}), _run({})]) is None


def test_the_tail_table_isolates_the_positions_past_the_trained_length(length_sweep: Path) -> None:
    report = (length_sweep / "report.md").read_text()
    first, tail = report.split("## Loss by evaluation length")[1].split("## Loss of the last context_length positions")
    rope_first = next(line for line in first.splitlines() if line.startswith("| gqa (position=rope)"))
    rope_tail = next(line for line in tail.splitlines() if line.startswith("| gqa (position=rope)"))
    first_cells, tail_cells = rope_first.split(" | "), rope_tail.split(" | ")
    assert tail_cells[2] == first_cells[2], "at the training length the tail is the whole window"
    # at 4x the context the made-up tail is 3 steps of TAIL_STEP above the window's mean
    assert float(tail_cells[4].split(" ")[0]) == pytest.approx(float(first_cells[4].split(" ")[0]) + 0.3, abs=1e-3)
