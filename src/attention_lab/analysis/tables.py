"""The report's tables: report.csv (one row per run), report_grouped.csv (one per seed group) and report.md.

The CSVs hold raw numbers (empty for missing) so scripts can read them back; report.md is for people: numbers
formatted, problems spelled out, plots linked. pandas is not a dependency: rows are dicts, written with csv.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .grouping import ABSENT, format_value, is_seed_key, knob_value
from .lengths import (
    TAIL_KEY,
    csv_columns,
    eval_lengths,
    group_cells,
    markdown_rows,
    not_applicable_reasons,
    run_cells,
    tokens_note,
)
from .mechanism import induction_cell
from .runs import FAILED, INCOMPLETE, OK, PATTERN_KEY, STATUS_ORDER, VARIANT_KEY, Group, Run

# Numbers summarised per seed group: mean ± std over the group's finished runs.
GROUP_STATS = ("val_loss", "best_val_loss", "val_ppl", "tokens_per_sec", "val_acc")

# Copied from metrics.json as they are (params_total/params_attention come from its nested "params").
METRIC_COLUMNS = (
    "kv_cache_bytes_per_token",
    "val_loss",
    "best_val_loss",
    "val_ppl",
    "tokens_per_sec",
    "peak_memory_mb",
    "wall_time_sec",
    "global_step",
    "tokens_seen",
    "val_acc",  # recall probes (data=mqar, data=induction) only
    "flops_per_token",  # training FLOPs (flops.py) per token and in total, and MFU: from Throughput
    "train_flops",
    "mfu",
    "induction_step",  # from metrics.json's "mechanism": a step, "never", or empty (see analysis/mechanism.py)
)
RUN_COLUMNS_BEFORE = ("run", "variant")
RUN_COLUMNS_AFTER = ("params_total", "params_attention", *METRIC_COLUMNS, "status", "note")

NUMBER_SPECS = {
    "params_total": ",",
    "params_attention": ",",
    "kv_cache_bytes_per_token": ",",
    "val_loss": ".4f",
    "best_val_loss": ".4f",
    "val_ppl": ".2f",
    "tokens_per_sec": ",.0f",
    "peak_memory_mb": ",.0f",
    "wall_time_sec": ",.1f",
    "global_step": ",",
    "tokens_seen": ",.0f",
    "val_acc": ".3f",
    "flops_per_token": ",.0f",
    "train_flops": ".3g",
    "mfu": ".1%",
    "induction_step": ",",
}
MD_HEADERS = {
    "params_total": "params",
    "params_attention": "attn params",
    "kv_cache_bytes_per_token": "KV B/token",
    "val_loss": "val loss",
    "best_val_loss": "best val loss",
    "val_ppl": "val ppl",
    "tokens_per_sec": "tokens/s",
    "peak_memory_mb": "peak MB",
    "wall_time_sec": "wall s",
    "global_step": "steps",
    "tokens_seen": "tokens",
    "val_acc": "val acc",
    "flops_per_token": "FLOPs/token",
    "train_flops": "train FLOPs",
    "mfu": "MFU",
    "induction_step": "induction ≥ 0.5 at step",
}


# ------------------------------------------------------------------------------------------------- rows
def _params(run: Run) -> dict[str, Any]:
    params = run.metrics.get("params")
    return params if isinstance(params, dict) else {}


def run_row(run: Run, knobs: Sequence[str]) -> dict[str, Any]:
    """One report.csv row: raw numbers (None for missing), knob values as typed on a command line."""
    row: dict[str, Any] = {"run": run.name, "variant": run.variant}
    row.update({k: format_value(knob_value(run, k)) for k in knobs})
    row.update({"params_total": _params(run).get("total"), "params_attention": _params(run).get("attention")})
    row.update({key: run.metrics.get(key) for key in METRIC_COLUMNS})
    row["induction_step"] = induction_cell(run)
    row.update({"status": run.status, "note": "; ".join(run.notes)})
    return row


def group_row(group: Group) -> dict[str, Any]:
    """One report_grouped.csv row: mean and std per number, n finished runs, the seeds pooled."""
    first = group.runs[0]
    raw = [r.config.get("seed", ABSENT) for r in group.runs if r.config is not None]
    # in seed order, numbers numerically (runs are sorted by loss, which made "1 2 0")
    ordered = sorted(raw, key=lambda s: (not isinstance(s, int), s if isinstance(s, int) else str(s)))
    seeds = [format_value(s) for s in ordered]
    row: dict[str, Any] = {"group": group.label, "variant": group.variant}
    row.update({k: format_value(v) for k, v in group.knobs.items()})
    row.update({"n": len(group.finished), "n_not_finished": len(group.runs) - len(group.finished)})
    row["seeds"] = " ".join(s for s in seeds if s)
    for key in GROUP_STATS:
        mean, std, _ = group.stat(key)
        row[f"{key}_mean"], row[f"{key}_std"] = mean, std
    row.update(
        {
            "params_total": _params(first).get("total"),
            "params_attention": _params(first).get("attention"),
            "kv_cache_bytes_per_token": first.metrics.get("kv_cache_bytes_per_token"),
        }
    )
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return path


# --------------------------------------------------------------------------------------------- markdown
def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value in (None, "") else str(value)
    return format(value, spec)


def _fmt_stat(mean: float | None, std: float | None, spec: str) -> str:
    if mean is None:
        return "—"
    return _fmt(mean, spec) + ("" if std is None else f" ± {_fmt(std, spec)}")


def _md_cell(text: Any, limit: int | None = None) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _md_intro(runs: Sequence[Run], knobs: Sequence[str], sources: Sequence[Path]) -> list[str]:
    counts = {s: sum(r.status == s for r in runs) for s in STATUS_ORDER}
    differ = "Knobs that differ: " + ", ".join(f"`{k}`" for k in knobs) + "." if knobs else "The configs do not differ."
    return [
        f"# Comparison of {len(runs)} runs",
        "",
        f"Generated {datetime.now():%Y-%m-%d %H:%M:%S} from: " + ", ".join(f"`{s}`" for s in sources),
        "",
        f"{counts[OK]} finished, {counts[INCOMPLETE]} incomplete, {counts[FAILED]} failed. "
        + differ
        + " Sorted by final val loss; incomplete and failed runs last.",
        "",
        *_md_shared(runs, knobs),
    ]


# Settings a reader needs to judge any comparison (budget, model, init); shown when every run has the same value.
SHARED_SETTINGS = (
    "model.init",
    "model.position",
    "model.d_model",
    "model.n_layers",
    "model.context_length",
    "data.tokenizer",
    "data.batch_size",
    "trainer.max_steps",
    "optim.lr",
)


def _md_shared(runs: Sequence[Run], knobs: Sequence[str]) -> list[str]:
    """ "Shared settings: model.init=gpt2, ...": what every run used, so a report always states its init and budget
    (a knob that differs is a column of the run table instead)."""
    configs = [r.raw_config for r in runs if r.raw_config is not None]
    shared = [
        f"`{key}={format_value(configs[0][key])}`"
        for key in SHARED_SETTINGS
        if key not in knobs and configs and all(key in c for c in configs)
    ]
    return [f"Shared settings: {', '.join(shared)}.", ""] if shared else []


def _md_runs(runs: Sequence[Run], knobs: Sequence[str]) -> list[str]:
    # attention.name (and a model.layers pattern) is the variant column already; in the CSV it stays
    md_knobs = [k for k in knobs if k not in (VARIANT_KEY, PATTERN_KEY)]
    numbers = RUN_COLUMNS_AFTER[:-2]
    header = ["run", "variant", *md_knobs, *(MD_HEADERS[c] for c in numbers), "status", "note"]
    body = []
    for run in runs:
        row = run_row(run, knobs)
        cells = [row["run"], row["variant"], *(row[k] or "—" for k in md_knobs)]
        cells += [_fmt(row[c], NUMBER_SPECS[c]) for c in numbers]
        body.append([*cells, run.status, _md_cell(row["note"], 60)])
    return _md_table(header, body)


def _md_groups(groups: Sequence[Group]) -> list[str]:
    if not any(len(g.runs) > 1 for g in groups):
        return []
    lines = ["", "## Seed groups", "", "Runs whose configs differ only by the seed: mean ± sample std.", ""]
    columns = {"val_loss": ".4f", "best_val_loss": ".4f", "val_ppl": ".2f", "tokens_per_sec": ",.0f"}
    if any(group.stat("val_acc")[0] is not None for group in groups):  # probe runs: accuracy on the answers
        columns["val_acc"] = ".3f"
    header = ["group", "n", "seeds", *(MD_HEADERS[key] for key in columns)]
    body = []
    for group in groups:
        row = group_row(group)
        stats = [_fmt_stat(*group.stat(key)[:2], spec) for key, spec in columns.items()]
        failed = f" ({row['n_not_finished']} not finished)" if row["n_not_finished"] else ""
        body.append([group.label, f"{row['n']}{failed}", row["seeds"] or "—", *stats])
    return lines + _md_table(header, body)


def _md_lengths(runs: Sequence[Run], groups: Sequence[Group]) -> list[str]:
    """The "Loss by evaluation length" table, only when some run was evaluated by length (see `lengths`)."""
    lengths = eval_lengths(runs)
    if not lengths:
        return []
    header, body = markdown_rows(groups, lengths)
    intro = (
        "Val loss at each evaluation length in tokens (`eval.lengths`), per group: mean ± sample std over its n "
        "finished seeds; n/a: not applicable, —: not evaluated. " + tokens_note(runs)
    )
    reasons = [f"- {reason}" for reason in not_applicable_reasons(runs)]
    lines = ["", "## Loss by evaluation length", "", intro.strip(), "", *_md_table(header, body)]
    lines += ["", *reasons] if reasons else []
    tail_lengths = eval_lengths(runs, TAIL_KEY)
    if tail_lengths:
        header, body = markdown_rows(groups, tail_lengths, TAIL_KEY)
        tail_intro = (
            "The same windows, scored on each window's last `model.context_length` positions only (at the training "
            "length: the whole window): the positions furthest past the trained length. A window's mean above also "
            "credits the longer context its later tokens see; this one isolates extrapolation."
        )
        lines += ["", "## Loss of the last context_length positions, by evaluation length", "", tail_intro, ""]
        lines += _md_table(header, body)
    return lines


def _md_notes_and_plots(runs: Sequence[Run], plots: dict[str, Path | None]) -> list[str]:
    problems = [r for r in runs if r.notes]
    lines = ["", "## Notes", ""] if problems else []
    lines += [f"- `{r.name}` ({r.status}): {_md_cell('; '.join(r.notes))}" for r in problems]
    lines += ["", "## Plots", ""]
    for name, path in plots.items():
        lines += [f"![{name}]({path.name})" if path is not None else f"- {name}: nothing to plot", ""]
    return lines


def _markdown(
    runs: Sequence[Run],
    knobs: Sequence[str],
    groups: Sequence[Group],
    plots: dict[str, Path | None],
    sources: Sequence[Path],
) -> str:
    """report.md: the run table, the seed groups when there are any, the problems in full, the plots."""
    lines = _md_intro(runs, knobs, sources) + _md_runs(runs, knobs) + _md_groups(groups) + _md_lengths(runs, groups)
    lines += _md_notes_and_plots(runs, plots)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- writing
def write_tables(
    runs: Sequence[Run],
    knobs: Sequence[str],
    groups: Sequence[Group],
    out: Path,
    plots: dict[str, Path | None] | None = None,
    sources: Sequence[Path] = (),
) -> dict[str, Path]:
    """report.csv (one row per run, runs in the given order), report_grouped.csv (always, n=1 groups
    included, so scripts can rely on it) and report.md. Runs evaluated by length add `val_loss@<length>`
    columns (and `_std` ones in report_grouped.csv) after the other numbers; without them no column is added."""
    out.mkdir(parents=True, exist_ok=True)
    lengths = eval_lengths(runs)
    run_columns = [*RUN_COLUMNS_BEFORE, *knobs, *RUN_COLUMNS_AFTER[:-2], *csv_columns(lengths, False), "status", "note"]
    group_knobs = [k for k in knobs if not is_seed_key(k)]
    stat_columns = [f"{k}_{s}" for k in GROUP_STATS for s in ("mean", "std")]
    group_columns = [
        "group",
        "variant",
        *group_knobs,
        "n",
        "n_not_finished",
        "seeds",
        *stat_columns,
        *csv_columns(lengths, True),
        "params_total",
        "params_attention",
        "kv_cache_bytes_per_token",
    ]
    run_rows = [run_row(r, knobs) | run_cells(r, lengths) for r in runs]
    group_rows = [group_row(g) | group_cells(g, lengths) for g in groups]
    written = {
        "report.csv": _write_csv(out / "report.csv", run_rows, run_columns),
        "report_grouped.csv": _write_csv(out / "report_grouped.csv", group_rows, group_columns),
    }
    md = out / "report.md"
    md.write_text(_markdown(runs, knobs, groups, plots or {}, sources))
    written["report.md"] = md
    return written
