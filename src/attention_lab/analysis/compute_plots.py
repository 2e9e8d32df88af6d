"""Val loss against compute: training FLOPs and wall time, beside val_loss_vs_tokens.png.

Tokens seen treat every variant as costing the same per token; they do not. Two more x axes tell what a loss
cost: the training FLOPs spent to reach it (tokens seen x the run's `flops_per_token` from metrics.json, the
analytic count of flops.py: forward + backward matrix products) and the seconds a user waited for it (the
TensorBoard events' wall times, from the run's first logged scalar, validation included).

One line per seed group, named as in final_val_loss.png; where several seeds reached a point, the line is their
mean and the band ± one sample std (the FLOPs of a group's seeds are equal; their seconds differ, and the x of
a wall-time point is their mean). Runs from before FLOPs were recorded have no `flops_per_token`: they are left
out of the FLOPs plot without a word, and the plot is not written when no run has it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .events import read_val_loss_times
from .length_plots import Line, _draw, _finish, _layout, _panels
from .runs import Group, Run

VS_FLOPS, VS_WALL_TIME = "val_loss_vs_flops.png", "val_loss_vs_wall_time.png"
Points = dict[Any, tuple[float, float]]  # key shared by a group's seeds (tokens seen, logged step) -> (x, loss)


def flops_points(run: Run) -> Points:
    """Tokens seen -> (training FLOPs, val loss); {} for a run without `flops_per_token` (an older run)."""
    per_token = run.number("flops_per_token")
    if per_token is None:
        return {}
    return {tokens: (tokens * per_token, loss) for tokens, loss in run.curve if math.isfinite(loss)}


def wall_time_points(run: Run) -> Points:
    """Logged step -> (seconds since the run's first logged scalar, val loss)."""
    return {step: (seconds, loss) for step, seconds, loss in read_val_loss_times(run.path) if math.isfinite(loss)}


def group_line(group: Group, points_of: Callable[[Run], Points]) -> Line | None:
    """The mean over the group's runs at every key any of them reached; err = sample std where two or more did."""
    per_run = [p for p in (points_of(run) for run in group.runs) if p]
    if not per_run:
        return None
    xs, ys, errs = [], [], []
    for key in sorted({key for points in per_run for key in points}):
        here = [points[key] for points in per_run if key in points]
        xs.append(statistics.mean(x for x, _ in here))
        ys.append(statistics.mean(y for _, y in here))
        errs.append(statistics.stdev(y for _, y in here) if len(here) > 1 else None)
    return Line(group.label, group.variant, xs, ys, errs, len(per_run))


def _plot(groups: Sequence[Group], lines: list[Line], path: Path, xlabel: str, title: str, log_x: bool) -> None:
    from matplotlib.ticker import EngFormatter

    facets, style = _layout(groups, lines)
    fig, axes = _panels(facets)
    for ax, (_, panel) in zip(axes, facets, strict=True):
        for line in panel:
            _draw(ax, line, style(line), band=True)
        if log_x:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_formatter(EngFormatter())
        ax.set(xlabel=xlabel, ylabel="val loss")
    _finish(fig, axes, facets, title, path)


def plot_val_loss_vs_flops(groups: Sequence[Group], path: Path) -> list[str]:
    """Val loss against training FLOPs (log axis); returns the labels drawn (none: no file written)."""
    lines = [line for line in (group_line(g, flops_points) for g in groups) if line is not None]
    if lines:
        _plot(groups, lines, path, "training FLOPs (forward + backward, analytic)", "Val loss by training FLOPs", True)
    return [line.label for line in lines]


def plot_val_loss_vs_wall_time(groups: Sequence[Group], path: Path) -> list[str]:
    """Val loss against seconds since each run's first logged point; returns the labels drawn."""
    lines = [line for line in (group_line(g, wall_time_points) for g in groups) if line is not None]
    if lines:
        _plot(groups, lines, path, "wall time (s, validation included)", "Val loss by wall time", False)
    return [line.label for line in lines]


def write_compute_plots(groups: Sequence[Group], out: Path) -> dict[str, Path]:
    """Both plots into `out`: the ones drawn, by file name (a plot with nothing to draw is not listed, so a
    report on older runs gains no "nothing to plot" line); stale files of an earlier comparison are removed."""
    drawn = {
        VS_FLOPS: plot_val_loss_vs_flops(groups, out / VS_FLOPS),
        VS_WALL_TIME: plot_val_loss_vs_wall_time(groups, out / VS_WALL_TIME),
    }
    for name, labels in drawn.items():
        if not labels:
            (out / name).unlink(missing_ok=True)
    return {name: out / name for name, labels in drawn.items() if labels}
