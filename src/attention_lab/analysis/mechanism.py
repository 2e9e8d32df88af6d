"""What compare reports of the mechanism telemetry (`metrics.json["mechanism"]`, written by training's
MechanismTelemetry): the step each run first had an induction head, and a per-group summary section.

Read from plain JSON (analysis does not import training): a run from before the telemetry, or with the
callback left out, has no `mechanism` and shows blank cells; a run whose telemetry never measured (stopped
before its first validation) shows blank too; a measured run that never reached the threshold shows "never".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runs import Group, Run

MECHANISM_KEY = "mechanism"
NEVER = "never"
THRESHOLD = 0.5  # what training records when metrics.json does not say (it always does since it existed)


def mechanism(run: Run) -> dict[str, Any] | None:
    """The run's telemetry record when it measured at least once, else None."""
    record = run.metrics.get(MECHANISM_KEY)
    if not isinstance(record, dict) or record.get("step") is None:
        return None
    return record


def induction_cell(run: Run) -> int | str | None:
    """The report's `induction_step`: the global step the best head first reached the threshold, "never", or
    None (no telemetry)."""
    record = mechanism(run)
    if record is None:
        return None
    step = record.get("induction_step")
    return step if isinstance(step, int) and not isinstance(step, bool) else NEVER


def _number(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _stat(records: Sequence[dict[str, Any]], key: str, spec: str) -> str:
    """Mean ± std over the records that have `key` (std from two values on), "—" when none has it."""
    values = [v for v in (_number(r, key) for r in records) if v is not None]
    if not values:
        return "—"
    text = format(statistics.mean(values), spec)
    return text + (f" ± {format(statistics.stdev(values), spec)}" if len(values) > 1 else "")


def _threshold(runs: Sequence[Run]) -> float:
    found = {r.metrics[MECHANISM_KEY].get("induction_threshold") for r in runs if mechanism(r) is not None}
    return found.pop() if len(found) == 1 and None not in found else THRESHOLD


def mechanism_lines(groups: Sequence[Group]) -> list[str]:
    """The "Mechanisms" section of report.md, one row per seed group with telemetry; [] when no group has it."""
    measured = [(g, [r for r in g.finished if mechanism(r) is not None]) for g in groups]
    measured = [(g, runs) for g, runs in measured if runs]
    if not measured:
        return []
    threshold = _threshold([r for _, runs in measured for r in runs])
    header = ["group", "n", "best induction", f"induction ≥ {threshold:g} at step", "best prev-token"]
    header += ["sink mass", "mean distance"]
    body = []
    for group, runs in measured:
        records = [mechanism(r) for r in runs]
        steps = ", ".join(str(induction_cell(r)) for r in runs)
        body.append(
            [
                group.label,
                str(len(runs)),
                _stat(records, "induction_best", ".2f"),
                steps,
                _stat(records, "prev_token_best", ".2f"),
                _stat(records, "sink_mass_mean", ".2f"),
                _stat(records, "distance_mean", ".1f"),
            ]
        )
    intro = (
        "Scores of each run's final validation on the fixed probe (random tokens repeated twice), mean ± sample "
        "std over the group's finished runs with telemetry; the step column lists each run's first global step "
        "whose best induction head reached the threshold. Best = the highest head over all layers; sink mass "
        "and distance are means over all heads (distance in tokens)."
    )
    lines = ["", "## Mechanisms", "", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]


def append_mechanisms(report_md: Path, groups: Sequence[Group]) -> None:
    """Append the "Mechanisms" section to report.md when any finished run has telemetry."""
    lines = mechanism_lines(groups)
    if lines:
        with report_md.open("a") as f:
            f.write("\n".join(lines) + "\n")
