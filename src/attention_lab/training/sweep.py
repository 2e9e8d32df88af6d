"""Sweeps: every job's settings checked before the first one trains, what a stopped sweep tells its user (which
jobs ran, which did not, and the one command that finishes it), and resuming a sweep in its own folder.

The job list is rebuilt from the sweep's config (or its `multirun.yaml`) exactly as Hydra's basic sweeper builds
it, and each job's `metrics.json` says how it ended. `SweepControl` (a Hydra callback, in the process that
launches the jobs, whatever the launcher) checks the jobs before any of them starts, remembers the sweep for the
end-of-sweep summary, and, when local workers run the jobs (parallel.py), turns a signal into a stop request and
reports the stopped sweep once every job has returned.

**Resuming.** `hydra.sweep.dir=<an existing sweep folder>` with the command that made that sweep finishes it:
the jobs are the same, so each lands in its old folder (`<num>_<overrides>`, named by its overrides), and each
job then finds what its earlier attempt left there (run_dir.earlier_attempt): finished jobs are kept as they are,
interrupted ones resume from their newest checkpoint, and jobs that never started run from the start. Any other
sweep pointed at that folder is refused (FreshFolders), so two sweeps never mix in one folder.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .. import config
from ..attention import UnsupportedPosition
from ..errors import USAGE_EXIT, UserError
from . import parallel
from .guards import SIGNAL_EXIT
from .summary import METRICS_FILE

log = logging.getLogger(__name__)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
STATUS_FILE = "sweep_status.json"


def jobs_of(master: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, in launch order, from a sweep's config; None when the list cannot be rebuilt
    (another sweeper, such as Optuna's, chooses its jobs as it goes)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if master.hydra.sweeper.get("_target_", BASIC_SWEEPER) != BASIC_SWEEPER:
            return None
        # unresolved: an override's value may itself be an interpolation (`+callbacks.x.seed=${seed}`)
        params = master.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=False) if OmegaConf.is_config(params) else {}
        task = OmegaConf.to_container(master.hydra.overrides.task, resolve=False)
        arguments = [f"{key}={value}" for key, value in params.items()] + list(task)
        parsed = OverridesParser.create().parse_overrides(arguments)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # a layout we do not know: say so instead of guessing
        return None


def sweep_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's overrides, in launch order, from the sweep folder's multirun.yaml."""
    try:
        return jobs_of(OmegaConf.load(sweep_dir / "multirun.yaml"))
    except (OSError, ValueError):
        return None


def _canonical(job: list[str], excluded: set[str]) -> list[str]:
    """A job as its folder name sees it: its overrides sorted, without the ones that do not name it (paths)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(job)
    return sorted(str(o.input_line) for o in parsed if o.key_or_group not in excluded)


def resume_refusal(sweep_dir: Path, master: DictConfig) -> str | None:
    """None when `sweep_dir` holds the sweep this command makes (so it can be finished there), else why not."""
    old = sweep_jobs(sweep_dir) if (sweep_dir / "multirun.yaml").is_file() else None
    new = jobs_of(master)
    if old is None or new is None:
        return "it holds no grid sweep this command could finish (only Hydra's basic sweeper's jobs are rebuilt)"
    excluded = set(master.hydra.job.config.override_dirname.exclude_keys)
    old_jobs, new_jobs = ([_canonical(job, excluded) for job in jobs] for jobs in (old, new))
    if old_jobs == new_jobs:
        return None
    if len(old_jobs) != len(new_jobs):
        return f"its sweep has {len(old_jobs)} jobs and this command makes {len(new_jobs)}"
    num = next(n for n, (a, b) in enumerate(zip(old_jobs, new_jobs, strict=True)) if a != b)
    return f"its job {num} is `{' '.join(old_jobs[num])}`, this command's is `{' '.join(new_jobs[num])}`"


def resume_sweep_command(sweep_dir: Path) -> str | None:
    """The command that finishes the sweep in `sweep_dir`: the one that made it, into that folder."""
    try:
        master = OmegaConf.load(sweep_dir / "multirun.yaml")
    except (OSError, ValueError):
        return None
    overrides = OmegaConf.to_container(master.hydra.overrides, resolve=False)
    hydra_args = [o for o in overrides["hydra"] if not str(o).startswith("hydra.sweep.dir=")]
    folder = str(sweep_dir)
    if any(c in folder for c in " ,=:'\"[]{}()\\"):  # characters Hydra's override grammar would misread
        folder = "'" + folder.replace("\\", "\\\\").replace("'", "\\'") + "'"
    words = ["attention-lab", "train", *map(str, hydra_args), *map(str, overrides["task"])]
    return shlex.join([*words, f"hydra.sweep.dir={folder}"])


# --------------------------------------------------------------------------------------- checks and end
last_sweep_dir: Path | None = None  # the sweep this process ran last: the CLI summarises it once Hydra returns
SEVERITY = (("failed", 1), ("invalid", 2), ("diverged", 3))  # the sweep's exit status: its worst job's
UNSUPPORTED = "unsupported"  # a (variant, position scheme) pair that cannot exist: not a failure of the sweep


def sweep_outcome(sweep_dir: Path) -> tuple[str, int]:
    """One line counting the jobs by status, and the exit status: 0 when every job is ok, else the worst; 130 /
    143 when a signal stopped the sweep (its workers returned, so Hydra did too)."""
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
    total = max(len(statuses), len(sweep_jobs(sweep_dir) or []))
    if total > len(statuses):  # jobs a signal kept from starting (or whose process died without a record)
        counts["not run"] = total - len(statuses)
        code = code or 1
    stopped = _read_status(sweep_dir).get("signal")
    if stopped is not None:
        code = SIGNAL_EXIT.get(stopped, 1)
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no job records"
    return f"sweep {sweep_dir}: {total} jobs: {summary}", code


def invalid_jobs(master: DictConfig, sweep_dir: Path) -> list[tuple[int, list[str], str]]:
    """(job number, overrides, message) of every job whose settings fail `config.validate`.

    Run before the first job starts, so a typo in job 5 of 6 costs seconds, not five trainings. Each job's config
    is composed with Hydra's compose API (the app's own search path) and validated like a single run.
    """
    from hydra import compose

    problems = []
    for num, overrides in enumerate(jobs_of(master) or []):
        try:
            cfg = compose(config_name="train", overrides=[*overrides, f"paths.output_dir={sweep_dir / str(num)}"])
        except Exception:  # Hydra's sweeper composes every job before launching; it reports these
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


def job_status(sweep_dir: Path, num: int) -> str | None:
    for folder in [*sweep_dir.glob(f"{num}_*"), sweep_dir / str(num)]:
        path = folder / METRICS_FILE
        if path.is_file():
            try:
                return json.loads(path.read_text()).get("status")
            except (OSError, ValueError):
                return "unreadable"
    return None


def _read_status(sweep_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((sweep_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_status(sweep_dir: Path, report: dict[str, Any]) -> None:
    tmp = sweep_dir / f".{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, sweep_dir / STATUS_FILE)


def stopped_sweep_report(sweep_dir: Path, stopped_job: int, resume: str | None) -> dict[str, Any]:
    """The record written to <sweep>/sweep_status.json and printed when a signal stops a one-process sweep."""
    jobs = sweep_jobs(sweep_dir)
    report: dict[str, Any] = {"status": "interrupted", "stopped_job": stopped_job, "resume_stopped_job": resume}
    report["resume_sweep"] = resume_sweep_command(sweep_dir)
    if jobs is None:
        report["jobs"] = None
        report["not_run"] = f"jobs after {stopped_job} (the job list could not be rebuilt from multirun.yaml)"
        return report
    report["jobs"] = [
        {"num": num, "overrides": job, "status": job_status(sweep_dir, num) if num <= stopped_job else "not run"}
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
    if report.get("resume_sweep"):
        lines.append("finish the sweep (finished jobs are kept, the stopped one resumes, the rest run):")
        lines.append(f"  {report['resume_sweep']}")
        lines.append("or job by job:")
    if report["resume_stopped_job"]:
        lines.append(f"resume job {report['stopped_job']}: {report['resume_stopped_job']}")
    if report.get("continue"):
        lines.append("then run the jobs that did not start:")
        lines += [f"  {command}" for command in report["continue"]]
    lines.append(f"(also in {sweep_dir / STATUS_FILE})")
    return "\n".join(lines)


def stopped_parallel_report(sweep_dir: Path, signum: int) -> dict[str, Any]:
    """sweep_status.json of a sweep whose local workers a signal stopped: every job's status ("not run": it never
    started) and the command that finishes the sweep."""
    jobs = sweep_jobs(sweep_dir) or []
    statuses = [job_status(sweep_dir, num) for num in range(len(jobs))]
    return {
        "status": "interrupted",
        "signal": int(signum),
        "stopped_jobs": [num for num, status in enumerate(statuses) if status == "interrupted"],
        "jobs": [
            {"num": num, "overrides": job, "status": status or "not run"}
            for num, (job, status) in enumerate(zip(jobs, statuses, strict=True))
        ],
        "resume_sweep": resume_sweep_command(sweep_dir),
    }


def format_stopped_parallel(report: dict[str, Any], sweep_dir: Path) -> str:
    lines = [f"sweep stopped by {signal.Signals(report['signal']).name} ({sweep_dir}):"]
    lines += [f"  job {job['num']}: {job['status']}  {' '.join(job['overrides'])}" for job in report["jobs"]]
    lines.append("finish it (finished jobs are kept, stopped ones resume from their checkpoints, the rest run):")
    lines += [f"  {report['resume_sweep']}", f"(also in {sweep_dir / STATUS_FILE})"]
    return "\n".join(lines)


class SweepControl(Callback):
    """The launching process's side of a sweep (see the module docstring)."""

    def __init__(self) -> None:
        self.signals: parallel.ParentSignals | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"signals": None}  # the launcher ships the callbacks to its workers; the handlers stay here

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global last_sweep_dir
        sweep_dir = Path(config.hydra.sweep.dir)
        last_sweep_dir = sweep_dir
        kind = parallel.launcher_kind(config.hydra.launcher.get("_target_"))
        parallel.launching_pid = os.getpid()
        if kind != "slurm":  # cluster nodes are not this machine: each job checks its own hardware where it runs
            self._check_every_job(config, sweep_dir)
        parallel.clear_stop(sweep_dir)
        (sweep_dir / STATUS_FILE).unlink(missing_ok=True)  # a resumed sweep's report of its stop is out of date
        if kind == "submitit_local" or (kind == "joblib" and config.hydra.launcher.get("n_jobs") != 1):
            self.signals = parallel.ParentSignals(sweep_dir)
            self.signals.install()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.signals is None:
            return
        self.signals.restore()
        signum, self.signals = self.signals.signum, None
        sweep_dir = Path(config.hydra.sweep.dir)
        parallel.clear_stop(sweep_dir)
        if signum is not None:
            report = stopped_parallel_report(sweep_dir, signum)
            write_status(sweep_dir, report)
            print(format_stopped_parallel(report, sweep_dir), file=sys.stderr, flush=True)

    @staticmethod
    def _check_every_job(config: DictConfig, sweep_dir: Path) -> None:
        """Any invalid job stops the sweep before anything trains; a new sweep folder is removed (a resumed
        sweep's is kept)."""
        problems = invalid_jobs(config, sweep_dir)
        if not problems:
            return
        print(format_invalid_jobs(problems, len(jobs_of(config) or [])), file=sys.stderr, flush=True)
        if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise SystemExit(USAGE_EXIT)
