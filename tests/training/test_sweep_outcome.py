"""The one line and the exit status a finished sweep ends with, from its jobs' metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attention_lab.training.sweep import sweep_outcome


def sweep_of(tmp_path: Path, statuses: list[str]) -> Path:
    for num, status in enumerate(statuses):
        (tmp_path / f"{num}_job").mkdir()
        (tmp_path / f"{num}_job" / "metrics.json").write_text(json.dumps({"status": status}))
    return tmp_path


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (["ok", "ok"], 0),
        (["ok", "unsupported"], 0),  # a hole in a variants x schemes grid is not a failure
        (["unsupported", "unsupported"], 2),  # but a sweep that trains nothing is a user's mistake
        (["ok", "failed", "invalid"], 1),
        (["ok", "invalid", "diverged"], 2),
        (["ok", "diverged"], 3),
        (["ok", "interrupted"], 1),
    ],
)
def test_the_exit_status_is_the_worst_jobs(tmp_path: Path, statuses: list[str], code: int) -> None:
    line, status = sweep_outcome(sweep_of(tmp_path, statuses))
    assert status == code
    assert f": {len(statuses)} jobs: " in line
