"""One comparison from start to end: discover the runs, load them, write the tables and the plots.

This is the whole of what `attention-lab compare` does besides parsing its arguments and printing, so that
a notebook or a test can make the same report with one call and get back what it wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .compute_plots import write_compute_plots
from .grouping import differing_knobs, group_by_seed, run_labels, sort_runs
from .length_plots import write_length_plots
from .mechanism import append_mechanisms
from .paired import resolve_baseline, write_paired
from .plots import write_plots
from .recall import write_recall_plots
from .runs import OK, STATUS_ORDER, UNSUPPORTED, CompareError, Run, discover_runs, load_run, name_runs
from .tables import write_tables

PathLike = str | os.PathLike[str]


@dataclass
class Report:
    """What a comparison found and wrote."""

    runs: list[Run]  # in table order: best final val loss first, failed runs last
    knobs: list[str]  # the config keys that differ between the runs
    written: list[Path]  # tables, then the plots that had something to draw
    not_run: list[str] = field(default_factory=list)  # jobs a stopped sweep never started, "<sweep> job N: ..."
    unsupported: dict[str, int] = field(default_factory=dict)  # reason -> jobs: grid holes, not runs

    def counts(self) -> dict[str, int]:
        """Runs per status, every status present (0 included), in status order."""
        return {status: sum(r.status == status for r in self.runs) for status in STATUS_ORDER}

    @property
    def unfinished(self) -> list[Run]:
        """The incomplete and failed runs: the ones whose notes a user must read."""
        return [r for r in self.runs if r.status != OK]


def jobs_never_run(paths: Sequence[PathLike]) -> list[str]:
    """The jobs a signal kept from starting, from each sweep's sweep_status.json, unless they ran since (the
    printed continue commands run job N into <sweep>/N)."""
    missing = []
    for path in paths:
        status_file = Path(path) / "sweep_status.json"
        if not status_file.is_file():
            continue
        try:
            jobs = json.loads(status_file.read_text()).get("jobs") or []
        except (OSError, ValueError):
            continue
        for job in jobs:
            num = job.get("num")
            ran = (Path(path) / str(num) / "metrics.json").is_file() or any(Path(path).glob(f"{num}_*/metrics.json"))
            if job.get("status") == "not run" and not ran:
                missing.append(f"{path} job {num}: {' '.join(job.get('overrides', []))}")
    return missing


def _append_not_run(report_md: Path, not_run: list[str]) -> None:
    lines = ["", "## Jobs that never ran", "", "A signal stopped the sweep before these started (`sweep_status.json`):"]
    lines += [f"- {item}" for item in not_run]
    with report_md.open("a") as f:
        f.write("\n".join(lines) + "\n")


def _append_unsupported(report_md: Path, unsupported: dict[str, int]) -> None:
    lines = ["", "## Pairs that cannot exist", "", "Jobs of the sweep that were not trained, by design:"]
    lines += [f"- {count} job{'s' if count > 1 else ''}: {reason}" for reason, count in unsupported.items()]
    with report_md.open("a") as f:
        f.write("\n".join(lines) + "\n")


def split_unsupported(runs: list[Run]) -> tuple[list[Run], dict[str, int]]:
    """The runs, and the jobs whose metrics.json says `unsupported` (counted by reason): a variants x schemes
    sweep records linear + alibi that way; they are holes in the grid, not unfinished runs."""
    kept, holes = [], {}
    for run in runs:
        if run.metrics.get("status") == UNSUPPORTED:
            reason = str(run.metrics.get("reason") or "unsupported settings")
            holes[reason] = holes.get(reason, 0) + 1
        else:
            kept.append(run)
    return kept, holes


def default_out(sources: Sequence[PathLike]) -> Path:
    """Next to the input: the run or sweep folder given, or the folder holding all of several inputs."""
    resolved = list(dict.fromkeys(Path(s).resolve() for s in sources))
    return resolved[0] if len(resolved) == 1 else Path(os.path.commonpath(resolved))


def _load(paths: Sequence[PathLike], layer: int) -> list[Run]:
    run_dirs = discover_runs(paths)
    if not run_dirs:
        where = ", ".join(str(p) for p in paths)
        raise CompareError(
            f"no run folders (folders with metrics.json or .hydra/) in {where}: "
            "give the run or sweep folders that training wrote (outputs/runs/<run>, outputs/sweeps/<sweep>)."
        )
    runs = [load_run(d, layer) for d in run_dirs]
    name_runs(runs)
    return runs


def compare_runs(
    paths: Sequence[PathLike], out: Path | None = None, layer: int = 0, baseline: str | None = None
) -> Report:
    """Report on the runs in `paths` into `out` (default: see `default_out`); CompareError for bad paths.

    baseline: a variant, seed group label or run folder to pair every group with, seed by seed (see `paired`)."""
    runs, unsupported = split_unsupported(_load(paths, layer))
    if not runs:
        raise CompareError(
            f"every job in {', '.join(str(p) for p in paths)} is an unsupported (variant, position) pair: "
            "nothing was trained, so there is nothing to compare."
        )
    out = Path(out) if out is not None else default_out(paths)
    if out.exists() and not out.is_dir():
        raise CompareError(f"output folder {out} is a file: give a folder with --out (it is created if missing).")
    knobs = differing_knobs(runs)
    runs = sort_runs(runs)
    groups = group_by_seed(runs, knobs)
    pairing = resolve_baseline(baseline, groups, knobs) if baseline is not None else None  # before any writing
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, run_labels(runs, knobs), groups, layer, out) | write_length_plots(runs, groups, out)
    plots |= write_recall_plots(groups, out)  # only when runs measured recall (val_acc)
    plots |= write_compute_plots(groups, out)  # val loss by training FLOPs and by wall time
    tables = write_tables(runs, knobs, groups, out, plots, [Path(p) for p in paths])
    not_run = jobs_never_run(paths)
    if not_run:
        _append_not_run(tables["report.md"], not_run)
    if unsupported:
        _append_unsupported(tables["report.md"], unsupported)
    append_mechanisms(tables["report.md"], groups)  # "Mechanisms": only when some run has telemetry
    paired = write_paired(pairing, runs, tables["report.md"], out) if pairing is not None else {}
    written = [*tables.values(), *paired.values(), *(p for p in plots.values() if p is not None)]
    return Report(runs, knobs, written, not_run, unsupported)
