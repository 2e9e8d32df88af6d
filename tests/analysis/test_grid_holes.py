"""compare on a variants x position schemes sweep: unsupported pairs are holes in the grid (not unfinished runs),
and runs from before `model.position` existed count as the learned positions they trained with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attention_lab.analysis.grouping import differing_knobs
from attention_lab.analysis.report import compare_runs
from attention_lab.analysis.runs import load_run
from attention_lab.cli.compare import main
from tests.analysis.fake_runs import GQA, make_config, make_run

LINEAR = {"name": "linear", "num_heads": 4, "dropout": 0.0, "qkv_bias": False}
REASON = "attention=linear does not support model.position=alibi: alibi biases softmax scores ..."


def unsupported_job(root: Path, name: str) -> Path:
    """What the training task leaves for linear + alibi in a sweep: .hydra/ and a metrics.json that says why."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(json.dumps(make_config(run_dir, LINEAR, 0, "alibi")))
    record = {"status": "unsupported", "attention": "linear", "position": "alibi", "reason": REASON}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    return run_dir


def test_unsupported_jobs_are_listed_as_grid_holes_not_unfinished_runs(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    make_run(root, "0_gqa_alibi", GQA, seed=0, position="alibi", events=False)
    make_run(root, "1_gqa_alibi", GQA, seed=1, position="alibi", events=False)
    unsupported_job(root, "2_linear_alibi")
    unsupported_job(root, "3_linear_alibi")
    assert main([str(root)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("2 runs (2 ok, 0 incomplete, 0 failed)")
    assert f"not trained (2 jobs, by design): {REASON}" in out
    assert "incomplete" not in err and "linear" not in err
    report = (root / "report.md").read_text()
    heading = "## Pairs that cannot exist\n\nJobs of the sweep that were not trained, by design:\n"
    assert f"{heading}- 2 jobs: {REASON}" in report
    assert "linear" not in report.split("## Pairs that cannot exist")[0], "no row or group for a job never trained"


def test_a_sweep_of_only_unsupported_jobs_is_a_clear_error(tmp_path: Path, capsys) -> None:
    unsupported_job(tmp_path / "sweep", "0_linear_alibi")
    assert main([str(tmp_path / "sweep")]) == 2
    assert "every job in" in capsys.readouterr().err


def test_a_run_from_before_position_schemes_counts_as_learned(tmp_path: Path) -> None:
    """Found by review: an old run showed model.position as "-", formed a group of its own, and made
    eval.lengths / model.rope_base look like knobs that differ."""
    old = make_run(tmp_path / "old", "run", GQA, seed=0, position=None, events=False)
    new = make_run(tmp_path / "new", "run", GQA, seed=1, position="learned", events=False)
    runs = [load_run(old), load_run(new)]
    assert runs[0].config["model.position"] == "learned"
    assert differing_knobs(runs) == ["seed"]
    report = compare_runs([tmp_path / "old", tmp_path / "new"], out=tmp_path / "report")
    assert report.knobs == ["seed"]


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_an_old_run_and_a_relative_scheme_differ_only_in_position(tmp_path: Path, position: str) -> None:
    old = make_run(tmp_path, "old", GQA, seed=0, position=None, events=False)
    new = make_run(tmp_path, "new", GQA, seed=0, position=position, events=False)
    assert differing_knobs([load_run(old), load_run(new)]) == ["model.position"]
