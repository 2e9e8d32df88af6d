"""compare's mechanism telemetry: the `induction_step` column (a step, "never", or blank) and the "Mechanisms"
section per seed group, from metrics.json records in the format training writes them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from attention_lab.analysis.mechanism import NEVER, induction_cell, mechanism_lines
from attention_lab.analysis.report import compare_runs
from attention_lab.analysis.runs import Group, Run
from attention_lab.training.telemetry import MechanismTelemetry

from .fake_runs import GQA, MULTIHEAD, make_run, read_csv

HEAD = "induction ≥ 0.5 at step"


def record(step: int | None, induction_step: int | None, induction: float = 0.3) -> dict[str, Any]:
    """metrics.json's `mechanism` as the training callback writes it (2 layers x 2 heads; None: no validation)."""
    callback = MechanismTelemetry()
    if step is not None:
        scores = {
            "induction": [[0.05, 0.1], [induction, 0.2]],
            "prev_token": [[0.9, 0.1], [0.1, 0.1]],
            "sink_mass": [[0.2, 0.4], [0.1, 0.1]],
            "distance": [[1.0, 3.0], [5.0, 7.0]],
        }
        callback.load_state_dict({"induction_step": induction_step, "scores": scores, "step": step})
    module = SimpleNamespace(model=SimpleNamespace(context_length=16, vocab_size=40))
    return callback.summary_fields(None, module)["mechanism"]


def add_mechanism(run_dir: Path, mechanism: dict[str, Any]) -> None:
    path = run_dir / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "mechanism": mechanism}))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gqa x 2 seeds (one reached the threshold at step 120, one never), a multihead run from before the
    telemetry, and one stopped before its first validation; compared once."""
    root = tmp_path_factory.mktemp("mechanism") / "sweep"
    add_mechanism(make_run(root, "gqa_1", GQA, seed=1, events=False), record(150, 120, induction=0.8))
    add_mechanism(make_run(root, "gqa_2", GQA, seed=2, events=False), record(150, None, induction=0.3))
    make_run(root, "old", MULTIHEAD, events=False, curve=((149, 2.25),))
    add_mechanism(make_run(root, "early", {**MULTIHEAD, "num_heads": 2}, events=False), record(None, None))
    compare_runs([root])
    return root


def test_the_csv_column_holds_the_step_never_or_blank(report: Path) -> None:
    header, rows = read_csv(report / "report.csv")
    assert "induction_step" in header
    assert {r["run"]: r["induction_step"] for r in rows} == {"gqa_1": "120", "gqa_2": NEVER, "old": "", "early": ""}


def test_the_markdown_run_table_has_the_column(report: Path) -> None:
    lines = (report / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| run |"))
    column = [c.strip() for c in header.split("|")].index(HEAD)
    cells = {row.split("|")[1].strip(): row.split("|")[column].strip() for row in lines if row.startswith("| gqa_")}
    assert cells == {"gqa_1": "120", "gqa_2": NEVER}


def test_the_mechanisms_section_summarises_each_seed_group(report: Path) -> None:
    md = (report / "report.md").read_text()
    section = md[md.index("## Mechanisms") :]
    gqa = next(line for line in section.splitlines() if "| 120, never |" in line)
    cells = [c.strip() for c in gqa.split("|")[1:-1]]
    assert cells[1:] == ["2", "0.55 ± 0.35", "120, never", "0.90 ± 0.00", "0.20 ± 0.00", "4.0 ± 0.0"]
    assert "| old" not in section and "early" not in section, "runs without measurements are left out"


def test_no_telemetry_means_no_section_and_blank_cells() -> None:
    run = Run(path=Path("x"), status="ok", metrics={"status": "ok"})
    assert induction_cell(run) is None
    assert mechanism_lines([Group(variant="gqa", knobs={}, runs=[run], label="gqa")]) == []
    run.metrics["mechanism"] = record(10, 0)
    assert induction_cell(run) == 0, "step 0 is a step, not 'never'"
