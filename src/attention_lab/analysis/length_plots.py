"""The length generalisation plots: val loss against evaluation length, and loss against token position.

One line per seed group (a lone run is a group of one), named with the labels final_val_loss.png uses, so a
line is found in the bar chart and in the tables under the same name; where a group pooled several seeds the
error bars (band, for the dense per-position curve) are ± one sample std over them.

Layout: a sweep of attention variants × position schemes gives ~20 lines, which one axes cannot show legibly
(colours repeat, the legend is taller than the plot). Such a sweep asks "which position scheme extrapolates,
and does that depend on the attention variant?", so above MAX_LINES_ONE_AXES lines, when some variant has
several lines, each attention variant gets its own panel with one line per remaining setting (the position
scheme). The y axis is shared so panels compare by eye, and a setting has the same colour in every panel.
Fewer lines, or one line per variant, read best on one axes with the legend beside it, as val_loss_vs_tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lengths import eval_lengths, evaluated, group_position_curve, length_stat, training_context
from .plots import DPI, _colors, _figure
from .runs import Group, Run

VS_LENGTH, BY_POSITION = "val_loss_vs_length.png", "loss_by_position.png"
MAX_LINES_ONE_AXES = 6
PANEL_W, PANEL_H = 5.2, 3.6
MARKERS = "osD^v"


@dataclass
class Line:
    """One group's points; err is the std at each point, None where fewer than two seeds had a number."""

    label: str
    variant: str
    x: list[float]
    y: list[float]
    err: list[float | None]
    n: int


def _style_key(label: str, variant: str, faceted: bool) -> str:
    """What a colour stands for: the setting within a variant's panel ("(position=rope)"), else the label."""
    return label.removeprefix(variant).strip() if faceted else label


def _facets(lines: Sequence[Line], order: Sequence[str]) -> list[tuple[str, list[Line]]]:
    """(panel title, lines): one panel per attention variant when that reads better (see module doc); within a
    panel the lines follow `order` (the style keys), so every panel's legend lists the settings alike."""
    variants = list(dict.fromkeys(line.variant for line in lines))
    if len(lines) > MAX_LINES_ONE_AXES and 1 < len(variants) < len(lines):
        rank = {key: i for i, key in enumerate(order)}
        panels = [[line for line in lines if line.variant == v] for v in variants]
        return [
            (v, sorted(panel, key=lambda line: rank.get(_style_key(line.label, line.variant, True), len(rank))))
            for v, panel in zip(variants, panels, strict=True)
        ]
    return [("", list(lines))]


def _styles(groups: Sequence[Group], faceted: bool) -> dict[str, tuple[Any, str]]:
    """(colour, marker) per style key, from all groups rather than the lines drawn, so that a setting keeps its
    colour in both length plots even when one of them has no line for another setting (learned positions)."""
    keys = list(dict.fromkeys(_style_key(g.label, g.variant, faceted) for g in groups))
    colors = _colors(len(keys))
    return {key: (colors[i % len(colors)], MARKERS[i // len(colors) % len(MARKERS)]) for i, key in enumerate(keys)}


def _layout(groups: Sequence[Group], lines: Sequence[Line]) -> tuple[list[tuple[str, list[Line]]], Any]:
    """Facets and a function giving each line its (colour, marker)."""
    faceted_styles = _styles(groups, faceted=True)
    facets = _facets(lines, list(faceted_styles))
    faceted = len(facets) > 1
    styles = faceted_styles if faceted else _styles(groups, faceted=False)
    return facets, lambda line: styles[_style_key(line.label, line.variant, faceted)]


def _panels(facets: Sequence[tuple[str, list[Line]]]) -> tuple[Any, list[Any]]:
    """A figure with one axes per facet, y shared; a single axes gets room for its legend on the right."""
    if len(facets) == 1:
        longest = max(len(line.label) for line in facets[0][1])
        fig = _figure(min(6.5 + 0.065 * longest, 16.0), 4.8)
        return fig, [fig.add_subplot()]
    cols = len(facets) if len(facets) <= 3 else math.ceil(math.sqrt(len(facets)))
    rows = math.ceil(len(facets) / cols)
    fig = _figure(PANEL_W * cols, PANEL_H * rows + 0.5)
    grid = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax in grid.flat[len(facets) :]:
        ax.set_visible(False)
    return fig, list(grid.flat[: len(facets)])


def _finish(fig: Any, axes: Sequence[Any], facets: Sequence[tuple[str, list[Line]]], title: str, path: Path) -> None:
    """Panel titles and legends (inside each panel, outside a single axes), suptitle, save."""
    if any(line.n > 1 for _, lines in facets for line in lines):
        title += ", mean ± std over seeds"
    for ax, (name, _) in zip(axes, facets, strict=True):
        ax.grid(alpha=0.3)
        if name:
            ax.set_title(name, fontsize=10)
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
    if len(axes) == 1:  # a suptitle would be centred over the legend too, and run into it
        fig.legend(fontsize=8, loc="outside right upper", frameon=False)
        axes[0].set_title(title, fontsize=10)
    else:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=DPI)


def _draw(ax: Any, line: Line, style: tuple[Any, str], band: bool) -> None:
    color, marker = style
    ax.plot(line.x, line.y, marker=marker, markersize=3.5, linewidth=1.5, color=color, label=line.label)
    points = [(x, y, e) for x, y, e in zip(line.x, line.y, line.err, strict=True) if e is not None]
    if not points:  # one seed: no bar at all, since a zero-width one would suggest std 0
        return
    xs, ys, es = (list(v) for v in zip(*points, strict=True))
    if band:
        lows = [y - e for y, e in zip(ys, es, strict=True)]
        highs = [y + e for y, e in zip(ys, es, strict=True)]
        ax.fill_between(xs, lows, highs, color=color, alpha=0.2, linewidth=0)
    else:
        ax.errorbar(xs, ys, yerr=es, fmt="none", ecolor=color, capsize=3, linewidth=1)


def _context_line(ax: Any, context: int | None, within: tuple[float, float]) -> None:
    """Dashed line at the training context: where learned positions stop and the others start to extrapolate."""
    if context is not None and within[0] <= context <= within[1]:
        ax.axvline(context, linestyle="--", color="0.35", linewidth=1, label=f"training context ({context})")


def length_lines(groups: Sequence[Group]) -> list[Line]:
    """One line per group evaluated by length; points where the loss is n/a (null) are left out."""
    lines = []
    for group in groups:
        runs = evaluated(group)
        stats = [(float(n), length_stat(runs, n)) for n in eval_lengths(runs)]
        points = [(n, s.mean, s.std) for n, s in stats if s.mean is not None]
        if points:
            x, y, err = (list(v) for v in zip(*points, strict=True))
            lines.append(Line(group.label, group.variant, x, y, err, len(runs)))
    return lines


def plot_val_loss_vs_length(groups: Sequence[Group], path: Path) -> list[str]:
    """Val loss against evaluation length (log2 axis, ticks at the lengths); returns the labels drawn."""
    from matplotlib.ticker import NullLocator

    lines = length_lines(groups)
    if not lines:
        return []
    lengths = sorted({x for line in lines for x in line.x})
    context = training_context([run for group in groups for run in evaluated(group)])
    facets, style = _layout(groups, lines)
    fig, axes = _panels(facets)
    for ax, (_, panel) in zip(axes, facets, strict=True):
        for line in panel:
            _draw(ax, line, style(line), band=False)
        _context_line(ax, context, (lengths[0], lengths[-1]))
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(int(n)) for n in lengths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(lengths[0] / 1.25, lengths[-1] * 1.25)
        ax.set(xlabel="evaluation length (tokens)", ylabel="val loss")
    _finish(fig, axes, facets, "Val loss by evaluation length (no point: not applicable)", path)
    return [line.label for line in lines]


def position_lines(groups: Sequence[Group]) -> tuple[list[Line], set[int]]:
    """One line per group with a loss_by_position curve (x = bucket centre), and the lengths they were taken at."""
    lines, lengths = [], set()
    for group in groups:
        found = group_position_curve(group.finished)
        if found is None:
            continue
        curve, stds, n = found
        points = [(x, y, e) for x, y, e in zip(curve.centres, curve.loss, stds, strict=True) if y is not None]
        if points:
            x, y, err = (list(v) for v in zip(*points, strict=True))
            lines.append(Line(group.label, group.variant, x, y, err, n))
            lengths.add(curve.length)
    return lines, lengths


def plot_loss_by_position(groups: Sequence[Group], path: Path) -> list[str]:
    """Mean loss per bucket of token positions at the longest evaluated length; returns the labels drawn."""
    lines, lengths = position_lines(groups)
    if not lines:
        return []
    context = training_context([run for group in groups for run in evaluated(group)])
    facets, style = _layout(groups, lines)
    fig, axes = _panels(facets)
    for ax, (_, panel) in zip(axes, facets, strict=True):
        for line in panel:
            _draw(ax, line, style(line), band=True)
        _context_line(ax, context, (0, max(lengths)))
        ax.set_xlim(0, max(lengths))
        ax.set(xlabel="token position (bucket centre)", ylabel="loss")
    at = f" at length {lengths.pop()}" if len(lengths) == 1 else ""
    _finish(fig, axes, facets, f"Loss by token position{at}", path)
    return [line.label for line in lines]


def write_length_plots(runs: Sequence[Run], groups: Sequence[Group], out: Path) -> dict[str, Path | None]:
    """Both plots into `out`, like plots.write_plots; {} when no run was evaluated by length, so a report on
    older runs gains no "nothing to plot" lines for numbers they could never have. Stale files go either way."""
    drawn: dict[str, list[str]] = {}
    if eval_lengths(runs):
        drawn = {
            VS_LENGTH: plot_val_loss_vs_length(groups, out / VS_LENGTH),
            BY_POSITION: plot_loss_by_position(groups, out / BY_POSITION),
        }
    for name in (VS_LENGTH, BY_POSITION):
        if not drawn.get(name):
            (out / name).unlink(missing_ok=True)  # a stale plot from an earlier comparison would mislead
    return {name: (out / name if labels else None) for name, labels in drawn.items()}
