"""The compare command: where it writes, and user mistakes as one `error:` line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attention_lab.analysis.runs import FAILED
from attention_lab.cli import main as cli_main
from attention_lab.cli.compare import main

from .fake_runs import FAILED_ERROR, GQA, GQA_BAD, KNOWN_COLUMNS, PLOTS, make_run, read_csv

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_a_single_run_folder_reports_into_itself(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "2026-01-01_00-00-00_attention=gqa", GQA)
    assert main([str(run_dir)]) == 0
    header, rows = read_csv(run_dir / "report.csv")
    assert len(rows) == 1 and rows[0]["variant"] == "gqa"
    assert not set(header) - KNOWN_COLUMNS  # one run: nothing differs
    assert (run_dir / "attention_maps.png").is_file()


def test_no_runs_is_exit_code_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "report.csv").exists()


def assert_one_error_line(err: str, *needles: str) -> None:
    """A user's mistake: exactly one line on stderr, `error: ...` naming what is wrong, no traceback."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def test_a_missing_path_is_one_error_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_sweep"
    assert main([str(missing)]) == 2
    out, err = capsys.readouterr()
    assert_one_error_line(err, str(missing), "is not a folder")
    assert out == ""
    assert not missing.exists()


def test_a_folder_without_runs_is_one_error_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "outputs"
    (empty / "notes").mkdir(parents=True)
    assert main([str(empty)]) == 2
    out, err = capsys.readouterr()
    assert_one_error_line(err, str(empty), "no run folders", "metrics.json")
    assert out == ""
    assert sorted(p.name for p in empty.iterdir()) == ["notes"]  # nothing written


def test_a_negative_layer_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path, "run", GQA)
    assert main([str(run_dir), "--layer", "-1"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--layer -1", "from 0")
    assert not (run_dir / "report.csv").exists()


def test_out_that_is_a_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path, "run", GQA)
    out_file = tmp_path / "report.txt"
    out_file.write_text("mine\n")
    assert main([str(run_dir), "--out", str(out_file)]) == 2
    assert_one_error_line(capsys.readouterr().err, str(out_file), "--out")
    assert out_file.read_text() == "mine\n"


def test_a_malformed_command_line_exits_2_through_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])  # RUN_OR_SWEEP_DIR is required
    assert exc.value.code == 2
    assert "RUN_OR_SWEEP_DIR" in capsys.readouterr().err


def test_output_lists_the_counts_the_problems_and_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path, "0_attention=gqa", GQA)
    make_run(tmp_path, "1_attention=gqa", GQA_BAD, status=FAILED)
    assert main([str(tmp_path), "--out", str(tmp_path / "cmp")]) == 0
    out, err = capsys.readouterr()
    first, *paths = out.splitlines()
    assert first == "2 runs (1 ok, 0 incomplete, 1 failed); knobs that differ: attention.num_kv_heads"
    assert [Path(p).name for p in paths] == ["report.csv", "report_grouped.csv", "report.md", *PLOTS]
    assert all(Path(p).parent == tmp_path / "cmp" and Path(p).is_file() for p in paths)
    assert err.splitlines() == [f"  failed: 1_attention=gqa: {FAILED_ERROR}"]


@pytest.mark.slow  # a subprocess run: several seconds
def test_the_script_and_the_attention_lab_command_report_errors_the_same_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    script = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare.py"), str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert script.returncode == 2
    assert_one_error_line(script.stderr, str(missing))
    assert cli_main(["compare", str(missing)]) == 2
    assert_one_error_line(capsys.readouterr().err, str(missing))


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_jobs_a_stopped_sweep_never_ran_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A signal stops a sweep after job 0; sweep_status.json lists jobs 1 and 2 as not run. The report names the
    ones still missing (job 2) and not those run since (job 1, continued into <sweep>/1 as the printed command
    does), so a comparison cannot quietly leave out jobs that never ran."""
    sweep = tmp_path / "sweep"
    make_run(sweep, "0_attention=multihead", {"name": "multihead", "num_heads": 4})
    make_run(sweep, "1", {"name": "gqa", "num_heads": 4, "num_kv_heads": 2})
    jobs = [
        {"num": 0, "overrides": ["attention=multihead"], "status": "interrupted"},
        {"num": 1, "overrides": ["attention=gqa"], "status": "not run"},
        {"num": 2, "overrides": ["attention=mqa"], "status": "not run"},
    ]
    (sweep / "sweep_status.json").write_text(json.dumps({"status": "interrupted", "stopped_job": 0, "jobs": jobs}))
    assert main([str(sweep)]) == 0
    stderr = capsys.readouterr().err
    assert f"never ran: {sweep} job 2: attention=mqa" in stderr and "job 1" not in stderr
    report = (sweep / "report.md").read_text()
    assert "## Jobs that never ran" in report and "attention=mqa" in report
