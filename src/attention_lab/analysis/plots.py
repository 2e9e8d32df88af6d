"""The report's plots: val loss against tokens seen, final val loss and throughput per group, attention maps.

Each plot function returns the labels it drew; none means it wrote no file (nothing to plot), so the caller
can remove a stale plot of an earlier comparison. Figures are drawn on the Agg canvas without pyplot: no
global state, no GUI backend, safe in any process. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runs import OK, Group, Run

DPI = 100
MAX_MAP_HEIGHT = 4.5  # inches of one row of attention maps: single-head maps are square and would be huge
Bar = tuple[str, float, float | None, int]  # (label, mean, std or None for one seed, n)


def _figure(width: float, height: float) -> Any:
    """A Figure on the Agg canvas, without pyplot: no global state, no GUI backend, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list[Any]:
    """tab10 up to 10 items, tab20 beyond: with more than 10 lines tab10 repeats its colours."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i) for i in range(cmap.N)]


def plot_val_loss_vs_tokens(runs: Sequence[Run], labels: Sequence[str], path: Path) -> list[str]:
    """Every run's val loss curve against tokens seen on one axis; returns the labels drawn (none: no file)."""
    from matplotlib.ticker import EngFormatter

    drawn = [(run, label) for run, label in zip(runs, labels, strict=True) if run.curve]
    if not drawn:
        return []
    longest = max(len(label) for _, label in drawn)
    fig = _figure(min(6.5 + 0.065 * longest, 16.0), 4.8)  # room for the legend right of the axes
    ax = fig.add_subplot()
    colors = _colors(len(drawn))
    for i, (run, label) in enumerate(drawn):
        x, y = zip(*run.curve, strict=True)
        style = "--" if run.status != OK else "-"
        marker = "osD^v"[i // len(colors) % 5]  # more runs than colours: the marker tells them apart
        ax.plot(x, y, style, marker=marker, markersize=3, linewidth=1.4, color=colors[i % len(colors)], label=label)
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set(xlabel="tokens seen", ylabel="val loss", title="Validation loss (dashed: not finished)")
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside right upper", frameon=False)
    fig.savefig(path, dpi=DPI)
    return [label for _, label in drawn]


def _set_range(ax: Any, items: Sequence[Bar], zoom: bool) -> str:
    """x limits around the bars and their error bars; returns what the title must add about the axis."""
    lo = min(mean - (std or 0.0) for _, mean, std, _ in items)
    hi = max(mean + (std or 0.0) for _, mean, std, _ in items)
    if not zoom:
        ax.set_xlim(0, hi * 1.25 if hi > 0 else 1.0)
        return ""
    # losses of comparable runs differ in the 2nd decimal: from 0 every bar would look the same
    span = hi - lo if hi > lo else abs(hi) * 0.1 or 1.0
    ax.set_xlim(max(0.0, lo - 0.6 * span), hi + 0.45 * span)
    return " (axis not from 0)"


def _bars(items: list[Bar], path: Path, xlabel: str, title: str, spec: str, zoom: bool) -> None:
    """Horizontal bars (labels can be long), first item on top, error bar = std, value written at the end."""
    fig = _figure(8.0, 1.2 + 0.38 * len(items))
    ax = fig.add_subplot()
    ypos = list(range(len(items)))
    colors = _colors(len(items))
    ax.barh(ypos, [mean for _, mean, _, _ in items], color=[colors[i % len(colors)] for i in ypos], alpha=0.85)
    for y, (_, mean, std, _) in zip(ypos, items, strict=True):
        if std is not None:  # only where there were several seeds: a zero-width bar would suggest std 0
            ax.errorbar(mean, y, xerr=std, fmt="none", ecolor="black", capsize=4, linewidth=1.2)
    ax.set_yticks(ypos, [label for label, *_ in items], fontsize=8)
    ax.invert_yaxis()
    title += _set_range(ax, items, zoom)
    for y, (_, mean, std, n) in zip(ypos, items, strict=True):
        text = format(mean, spec) + (f" ± {format(std, spec)} (n={n})" if std is not None else "")
        ax.annotate(text, (mean + (std or 0.0), y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    if any(n > 1 for *_, n in items):
        title += ", mean ± std over seeds"
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=DPI)


def _group_items(groups: Sequence[Group], key: str) -> list[Bar]:
    items = []
    for group in groups:
        mean, std, n = group.stat(key)
        if mean is not None:
            items.append((group.label, mean, std, n))
    return items


def plot_final_val_loss(groups: Sequence[Group], path: Path) -> list[str]:
    """Final val loss per variant/group: the mean, error bar = std over seeds. Returns the groups drawn."""
    items = _group_items(groups, "val_loss")
    if items:
        _bars(items, path, "final val loss", "Final val loss", ".4f", zoom=True)
    return [label for label, *_ in items]


def plot_throughput(groups: Sequence[Group], path: Path) -> list[str]:
    """Training tokens/s per group (validation excluded by the Throughput callback), same order as the loss."""
    items = _group_items(groups, "tokens_per_sec")
    if items:
        _bars(items, path, "tokens/s", "Training throughput", ",.0f", zoom=False)
    return [label for label, *_ in items]


def plot_attention_maps(runs: Sequence[Run], labels: Sequence[str], layer: int, path: Path) -> list[str]:
    """The last attention-map image of `layer` from each run, tiled in rows with the run's label as title.

    Images differ in shape (1 head: square, 4 heads: a wide strip), so each row gets the height of its
    tallest image (capped), not the height of the tallest image overall.
    """
    drawn = [(run, label) for run, label in zip(runs, labels, strict=True) if run.attention_map is not None]
    if not drawn:
        return []
    aspects = [run.attention_map[1].shape[0] / run.attention_map[1].shape[1] for run, _ in drawn]
    wide = statistics.median(aspects) < 0.6
    cols = min(len(drawn), 2 if wide else 3)
    panel_w = 7.0 if wide else 5.0
    rows = math.ceil(len(drawn) / cols)
    heights = [min(panel_w * max(aspects[r * cols : (r + 1) * cols]), MAX_MAP_HEIGHT) + 0.6 for r in range(rows)]
    fig = _figure(panel_w * cols, sum(heights) + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax in axes.flat:
        ax.axis("off")
    for ax, (run, label) in zip(axes.flat, drawn, strict=False):
        step, image = run.attention_map
        ax.imshow(image, interpolation="antialiased")
        ax.set_title(f"{label}\nstep {step}", fontsize=9)
    fig.suptitle(f"Attention maps, layer {layer}, last validation", fontsize=11)
    fig.savefig(path, dpi=DPI)
    return [label for _, label in drawn]


def write_plots(
    runs: Sequence[Run], labels: Sequence[str], groups: Sequence[Group], layer: int, out: Path
) -> dict[str, Path | None]:
    """Every plot into `out`: file name -> path, or None where there was nothing to plot (its file removed)."""
    drawn = {
        "val_loss_vs_tokens.png": plot_val_loss_vs_tokens(runs, labels, out / "val_loss_vs_tokens.png"),
        "final_val_loss.png": plot_final_val_loss(groups, out / "final_val_loss.png"),
        "throughput.png": plot_throughput(groups, out / "throughput.png"),
        "attention_maps.png": plot_attention_maps(runs, labels, layer, out / "attention_maps.png"),
    }
    plots = {name: (out / name if labels_drawn else None) for name, labels_drawn in drawn.items()}
    for name, path in plots.items():
        if path is None:
            (out / name).unlink(missing_ok=True)  # a stale plot from an earlier comparison would mislead
    return plots
