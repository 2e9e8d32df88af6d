"""report.csv and report.md of a finished 3-job sweep (the `sweep` fixture): order, knob columns, errors."""

from __future__ import annotations

from pathlib import Path

from attention_lab.analysis.runs import FAILED, OK

from .fake_runs import KNOWN_COLUMNS, PLOTS, read_csv


def test_rows_sorted_by_val_loss_with_the_failed_run_last(sweep: Path) -> None:
    _, rows = read_csv(sweep / "report.csv")
    assert [r["run"] for r in rows] == [
        "1_attention=gqa",
        "0_attention=multihead",
        "2_attention=gqa,attention.num_kv_heads=3",
    ]
    assert [r["status"] for r in rows] == [OK, OK, FAILED]
    assert [float(r["val_loss"]) for r in rows[:2]] == [2.2, 2.3]
    assert rows[2]["val_loss"] == ""
    assert "must divide" in rows[2]["note"]
    assert rows[0]["params_total"] == "5000" and rows[0]["kv_cache_bytes_per_token"] == "512"


def test_knob_columns_are_exactly_the_knobs_that_differ(sweep: Path) -> None:
    header, rows = read_csv(sweep / "report.csv")
    assert [c for c in header if c not in KNOWN_COLUMNS] == ["attention.name", "attention.num_kv_heads"]
    assert "model.d_model" not in header and "seed" not in header
    assert [r["attention.num_kv_heads"] for r in rows] == ["2", "", "3"]  # multihead has no such knob
    assert [r["attention.name"] for r in rows] == ["gqa", "multihead", "gqa"]


def test_report_md_has_every_run_and_the_error(sweep: Path) -> None:
    md = (sweep / "report.md").read_text()
    for name in ("1_attention=gqa", "0_attention=multihead", "2_attention=gqa,attention.num_kv_heads=3"):
        assert name in md
    assert "must divide attention.num_heads=4" in md
    assert "| 2.2000 |" in md
    for name in PLOTS:
        assert f"]({name})" in md


def test_report_md_states_the_settings_every_run_shares_including_the_init(sweep: Path) -> None:
    """Every report says which init, model and budget its runs used (the fake runs predate model.init, which
    counts as gpt2); a setting that differs is a knob column, not a shared one."""
    md = (sweep / "report.md").read_text()
    shared = next(line for line in md.splitlines() if line.startswith("Shared settings: "))
    for setting in ("`model.init=gpt2`", "`model.position=learned`", "`model.d_model=32`", "`model.n_layers=2`"):
        assert setting in shared, shared
    assert "attention" not in shared
