"""The recall/memory frontier: probe accuracy (`val_acc`) against the KV-cache bytes each token costs.

One point per seed group (mean, error bar = sample std over the seeds), one colour per attention variant, one
marker and panel per number of pairs (`data.num_pairs`, when the runs differ in it), so "how much recall does a
byte of cache buy" reads off one figure. The x axis is logarithmic; a variant with a constant state (`linear`,
0 bytes per token) cannot sit on a log axis, so zero is drawn on a symmetric-log axis whose linear part ends at
the smallest non-zero cache, and its tick says "0 (state)". Written only when some run recorded `val_acc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plots import DPI, _colors, _figure
from .runs import Group

RECALL_FRONTIER = "recall_frontier.png"
PAIRS_KEY = "data.num_pairs"
MARKERS = "osD^vP*X"


def frontier_points(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One point per group that has a val_acc: variant, pairs (None when not varied), bytes, mean, std, n."""
    points = []
    for group in groups:
        mean, std, n = group.stat("val_acc")
        if mean is None:
            continue
        cache = group.finished[0].number("kv_cache_bytes_per_token")
        if cache is None:
            continue
        pairs = group.knobs.get(PAIRS_KEY)
        points.append({"variant": group.variant, "pairs": pairs, "bytes": cache, "acc": mean, "std": std, "n": n})
    return points


def _x_axis(ax: Any, xs: Sequence[float]) -> None:
    positive = [x for x in xs if x > 0]
    if len(positive) < len(xs):  # a constant-state variant: 0 has no place on a log axis
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
        ticks = sorted(set(xs))
        ax.set_xticks(ticks, ["0 (state)" if t == 0 else f"{t:,.0f}" for t in ticks])
    else:
        ax.set_xscale("log")


def plot_recall_frontier(groups: Sequence[Group], path: Path) -> list[str]:
    """val_acc (mean ± std over seeds) against KV bytes per token; returns the variants drawn (none: no file)."""
    points = frontier_points(groups)
    if not points:
        return []
    variants = list(dict.fromkeys(p["variant"] for p in points))
    pair_values = list(dict.fromkeys(p["pairs"] for p in points))
    colors = _colors(len(variants))
    fig = _figure(4.6 * len(pair_values) + 1.6, 3.8)
    axes = fig.subplots(1, len(pair_values), sharey=True, squeeze=False)[0]
    for i, (ax, pairs) in enumerate(zip(axes, pair_values, strict=True)):
        panel = [p for p in points if p["pairs"] == pairs]
        for v, variant in enumerate(variants):
            mine = sorted((p for p in panel if p["variant"] == variant), key=lambda p: p["bytes"])
            if not mine:
                continue
            ax.errorbar(
                [p["bytes"] for p in mine],
                [p["acc"] for p in mine],
                yerr=[p["std"] or 0.0 for p in mine],
                color=colors[v % len(colors)],
                marker=MARKERS[i % len(MARKERS)],
                capsize=3,
                label=variant,
            )
        _x_axis(ax, [p["bytes"] for p in panel])
        ax.set_xlabel("KV-cache bytes per token (all layers, float32)")
        ax.set_title(f"{PAIRS_KEY}={pairs}" if pairs is not None else "recall")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val accuracy on answers")
    # one legend for every panel: a variant may be missing from the last one (a pair count it never ran)
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[-1].legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle("Recall vs memory (mean ± std over seeds)")
    fig.savefig(path, dpi=DPI)
    return variants


def write_recall_plots(groups: Sequence[Group], out: Path) -> dict[str, Path | None]:
    """recall_frontier.png into `out` when runs recorded val_acc, else {} (a stale file from before is removed)."""
    drawn = plot_recall_frontier(groups, out / RECALL_FRONTIER)
    if not drawn:
        (out / RECALL_FRONTIER).unlink(missing_ok=True)
        return {}
    return {RECALL_FRONTIER: out / RECALL_FRONTIER}
