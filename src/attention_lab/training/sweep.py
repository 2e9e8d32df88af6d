"""Sweeps: every job's settings checked before the first one trains, and what a stopped sweep tells its user
(which jobs ran, which did not, and the commands that finish it).

Hydra's basic sweeper runs the jobs of `-m` one after another in one process. When a signal stops job k,
the sweep must stop too (the user asked it to), but not silently: the job list is rebuilt from the sweep's
`multirun.yaml` exactly as the sweeper built it, and each job's `metrics.json` says how it ended.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .. import config
from ..attention import UnsupportedPosition
from ..errors import UserError
from .summary import METRICS_FILE


def sweep_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's overrides, in launch order, or None when the list cannot be rebuilt."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        master = OmegaConf.load(sweep_dir / "multirun.yaml")
        params = master.hydra.sweeper.get("params") or {}
        arguments = [f"{key}={value}" for key, value in params.items()] + list(master.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(arguments)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # a custom sweeper, or a layout we do not know: say so instead of guessing
        return None


# The sweep the task ran last in this process: the CLI summarises it once Hydra returns.
last_sweep_dir: Path | None = None
SEVERITY = (("failed", 1), ("invalid", 2), ("diverged", 3))  # the sweep's exit status: its worst job's
UNSUPPORTED = "unsupported"  # a (variant, position scheme) pair that cannot exist: not a failure of the sweep


def sweep_outcome(sweep_dir: Path) -> tuple[str, int]:
    """One line counting the jobs by status, and the exit status: 0 when every job is ok, else the worst."""
    statuses = []
    for path in sorted(sweep_dir.glob(f"*/{METRICS_FILE}")):
        try:
            statuses.append(json.loads(path.read_text()).get("status", "unknown"))
        except (OSError, ValueError):
            statuses.append("unreadable")
    counts = {status: statuses.count(status) for status in dict.fromkeys(statuses)}
    code = next((code for status, code in SEVERITY if status in counts), 0)
    if code == 0 and set(counts) - {"ok", UNSUPPORTED}:
        code = 1
    if set(counts) == {UNSUPPORTED}:  # a grid of holes only: nothing was trained, a user's mistake
        code = 2
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no job records"
    return f"sweep {sweep_dir}: {len(statuses)} jobs: {summary}", code


def invalid_jobs(sweep_dir: Path) -> list[tuple[int, list[str], str]]:
    """(job number, overrides, message) of every job whose settings fail `config.validate`.

    Run by job 0 before it trains, so a typo in job 5 of 6 costs seconds, not five trainings. Each job's config
    is composed with Hydra's compose API (the app's own search path) and validated like a single run.
    """
    from hydra import compose

    jobs = sweep_jobs(sweep_dir)
    problems = []
    for num, overrides in enumerate(jobs or []):
        try:
            cfg = compose(config_name="train", overrides=[*overrides, f"paths.output_dir={sweep_dir / str(num)}"])
        except Exception:  # Hydra's sweeper composed every job already; this job is checked when it runs
            continue
        try:
            config.validate(cfg, multirun=True)
        except UnsupportedPosition:
            continue  # a hole in a variants x schemes grid: the job records it as `unsupported` and the sweep goes on
        except UserError as err:
            problems.append((num, overrides, str(err)))
    return problems


def format_invalid_jobs(problems: list[tuple[int, list[str], str]], total: int) -> str:
    lines = [f"error: {len(problems)} of {total} sweep jobs have invalid settings; nothing was trained:"]
    for num, overrides, message in problems:
        lines.append(f"  job {num} ({' '.join(overrides)}): {message}")
    return "\n".join(lines)


def _job_status(sweep_dir: Path, num: int) -> str | None:
    for folder in sweep_dir.glob(f"{num}_*"):
        path = folder / METRICS_FILE
        if path.is_file():
            return json.loads(path.read_text()).get("status")
    folder = sweep_dir / str(num)
    if (folder / METRICS_FILE).is_file():
        return json.loads((folder / METRICS_FILE).read_text()).get("status")
    return None


def stopped_sweep_report(sweep_dir: Path, stopped_job: int, resume: str | None) -> dict[str, Any]:
    """The record written to <sweep>/sweep_status.json and printed when a signal stops a sweep."""
    jobs = sweep_jobs(sweep_dir)
    report: dict[str, Any] = {"status": "interrupted", "stopped_job": stopped_job, "resume_stopped_job": resume}
    if jobs is None:
        report["jobs"] = None
        report["not_run"] = f"jobs after {stopped_job} (the job list could not be rebuilt from multirun.yaml)"
        return report
    report["jobs"] = [
        {"num": num, "overrides": job, "status": _job_status(sweep_dir, num) if num <= stopped_job else "not run"}
        for num, job in enumerate(jobs)
    ]
    # each job that did not start, as a single run into its place in this sweep folder
    report["continue"] = [
        shlex.join(["attention-lab", "train", *job, "hydra.mode=RUN", f"hydra.run.dir={sweep_dir / str(num)}"])
        for num, job in enumerate(jobs)
        if num > stopped_job
    ]
    return report


def format_stopped_sweep(report: dict[str, Any], sweep_dir: Path) -> str:
    lines = [f"sweep stopped by a signal during job {report['stopped_job']} ({sweep_dir}):"]
    for job in report["jobs"] or []:
        lines.append(f"  job {job['num']}: {job['status'] or 'no record'}  {' '.join(job['overrides'])}")
    if report["jobs"] is None:
        lines.append(f"  not run: {report['not_run']}")
    if report["resume_stopped_job"]:
        lines.append(f"resume job {report['stopped_job']}: {report['resume_stopped_job']}")
    if report.get("continue"):
        lines.append("then run the jobs that did not start:")
        lines += [f"  {command}" for command in report["continue"]]
    lines.append(f"(also in {sweep_dir / 'sweep_status.json'})")
    return "\n".join(lines)
