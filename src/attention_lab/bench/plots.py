"""The benchmarks' pictures; matplotlib is imported only when drawing, so the benchmarks themselves do not need it.

- `plot_results` (attention): time and activation memory against T, log-log, one line per variant, with dashed
  O(T) and O(T^2) guides, because the question that plot answers is a slope: which variants grow
  quadratically with the sequence length and which linearly.
- `plot_positions` (positions): per variant, each position scheme's step time as a ratio to `none` against T,
  because the question there is a relative cost, and a ratio measured in one run is what survives the noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _series(result: dict[str, Any], name: str, key: Callable[[dict[str, Any]], float | None]) -> tuple[list, list]:
    """(lengths, values) of one variant's measured points; skipped points and empty values are left out."""
    ts, ys = [], []
    for t, p in result["variants"][name]["points"].items():
        y = key(p) if p["status"] == "ok" else None
        if y:
            ts.append(int(t))
            ys.append(y)
    return ts, ys


def _guides(ax: Any, ts: list[int], y_anchor: float) -> None:
    """Dashed O(T) and O(T^2) lines from a common start, so a curve's slope can be read against them."""
    t = np.array([min(ts), max(ts)], dtype=float)
    for power, label in ((1, "∝ T"), (2, "∝ T²")):
        y = y_anchor * (t / t[0]) ** power
        ax.plot(t, y, color="0.55", linestyle=(0, (4, 3)), linewidth=1.2, zorder=0)
        ax.annotate(label, (t[1], y[1]), xytext=(-2, 4), textcoords="offset points", color="0.3", ha="right")


def plot_results(result: dict[str, Any], path: Path) -> None:
    """Log-log plot, one line per variant: fwd+bwd time against T, and activation memory against T."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]
    markers = "osD^v<>ph*XP8"
    linestyles = {"explicit": "-", "sdpa": "--", "linear": ":"}  # the kernel decides the memory slope
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(14, 7.5))
    panels = (
        (ax_time, lambda p: p["fwd_bwd_ms"]["median"], "forward + backward time (ms, median)"),
        (ax_mem, lambda p: p["saved_bytes"] / 2**20, "activation memory saved for backward (MiB)"),
    )
    for ax, key, ylabel in panels:
        anchors, all_ts = [], []
        for i, name in enumerate(names):
            ts, ys = _series(result, name, key)
            if not ts:
                continue
            kernel = result["variants"][name].get("kernel", "explicit")
            ax.plot(
                ts,
                ys,
                linestyle=linestyles.get(kernel, "-."),
                marker=markers[i % len(markers)],
                color=palette[i % len(palette)],
                label=f"{name} ({kernel})",
                ms=5,
                linewidth=1.6,
            )
            anchors.append(ys[0])
            all_ts.extend(ts)
        if all_ts:
            _guides(ax, sorted(set(all_ts)), float(np.exp(np.mean(np.log(anchors)))) / 4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sorted(set(all_ts)), [str(t) for t in sorted(set(all_ts))])
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    cfg, machine = result["config"], result["machine"]
    fig.suptitle(
        f"attention modules: d_model={cfg['d_model']}, heads={cfg['heads']}, batch={cfg['batch']}, {cfg['dtype']}, "
        f"{cfg['device']} ({machine.get('device_name', '')}, {machine.get('torch_threads')} threads), "
        f"torch {machine['torch']}"
    )
    handles, labels = ax_time.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_positions(result: dict[str, Any], path: Path) -> None:
    """One panel per variant: x = T (log2), y = median step-time ratio to `none`, one line per scheme, the
    interquartile range of the per-round ratios as error bars. `none` itself is the dashed line at 1; skipped
    schemes (refused, out of memory) are named in the panel title."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cfg, machine = result["config"], result["machine"]
    variants, schemes, lengths = cfg["variants"], cfg["schemes"], cfg["lengths"]
    palette = plt.get_cmap("tab10").colors
    colors = {scheme: palette[i % len(palette)] for i, scheme in enumerate(schemes)}
    cols = min(3, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows + 0.8), squeeze=False, sharey=True)
    for ax, variant in zip(axes.flat, variants, strict=False):  # spare panels stay blank
        ax.axhline(1.0, color="0.4", linestyle=(0, (4, 3)), linewidth=1.0, zorder=0, label="none (= 1)")
        skipped = []
        for scheme in (s for s in schemes if s != "none"):
            points = [
                r
                for r in result["rows"]
                if r["variant"] == variant and r["scheme"] == scheme and r.get("ratio_to_none") is not None
            ]
            if not points:
                skipped.append(scheme)
                continue
            ts = [r["T"] for r in points]
            ys = np.array([r["ratio_to_none"] for r in points])
            err = np.array([ys - [r["ratio_p25"] for r in points], [r["ratio_p75"] for r in points] - ys])
            ax.errorbar(ts, ys, yerr=err, marker="o", ms=4, capsize=3, color=colors[scheme], label=scheme)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.set_title(variant + (f"  ({', '.join(skipped)}: skipped)" if skipped else ""), fontsize=10)
        ax.set_xlabel("sequence length T")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("step time / step time with none")
    for ax in list(axes.flat)[len(variants) :]:
        ax.axis("off")
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(
        f"position schemes: training step of a {cfg['n_layers']}-layer GPT, d_model={cfg['d_model']}, "
        f"heads={cfg['num_heads']}, batch={cfg['batch']}, {cfg['dtype']}, {cfg['device']} "
        f"({machine.get('device_name', '')}, torch threads={machine.get('torch_threads')}), torch {machine['torch']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
