"""Compare finished runs: one table (markdown + CSV) and a few plots from run and sweep folders.

    python scripts/compare.py outputs/sweeps/<sweep>                       # writes into the sweep folder
    python scripts/compare.py outputs/runs/<a> outputs/sweeps/<b> --out cmp  # any mix of runs and sweeps

A run folder is any folder holding `metrics.json` or `.hydra/`; any other folder given is searched for run
folders (a sweep, or `outputs/` as a whole). Everything is read from files a run already wrote, so comparing
never needs the model code, a GPU or a checkpoint:
- `metrics.json`: final numbers and status (`train.main` writes a `failed` one when a job raises);
- `.hydra/config.yaml`: the settings, flattened to `group.key` names; the knobs shown are only the keys whose
  values are not the same in every run, so a sweep's table shows what the sweep varied (locations and
  instrumentation: paths.*, hydra.*, logger.*, callbacks.*, output/cache dirs, ckpt_path, are never knobs);
- the TensorBoard event file: the `val/loss` curve and the last attention-map image of one layer.

A run that misses one of these still gets its row, with a note saying what is missing: a broken or killed job
must not hide the others. Status is `ok` (metrics.json says so; a missing event file only keeps it out of the
plots), `incomplete` (no metrics.json: numbers, if any, from the event file so far) or `failed` (with the
error). Runs whose configs differ only by their seed are also summarised as one group (mean ± sample std,
with n). Output goes to --out, by default into the one folder given (run or sweep) or, for several, into the
deepest folder holding them all. pandas is not a dependency: tables are lists of dicts and the csv module.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

METRICS_FILE = "metrics.json"
HYDRA_DIR = ".hydra"
EVENT_GLOB = "events.out.tfevents.*"
VAL_LOSS_TAG = "val/loss"
IMAGE_TAG = "attention/layer_{layer}"
VARIANT_KEY = "attention.name"
DPI = 100
MAX_MAP_HEIGHT = 4.5  # inches of one row of attention maps: single-head maps are square and would be huge

OK, INCOMPLETE, FAILED = "ok", "incomplete", "failed"
STATUS_ORDER = {OK: 0, INCOMPLETE: 1, FAILED: 2}

# Config keys that are locations or instrumentation, not experiment settings: they differ between runs (every
# run has its own folder) or do not change what is learned, and would only add noise columns.
IGNORED_PREFIXES = ("paths.", "hydra.", "logger.", "callbacks.")
IGNORED_LAST_PARTS = {"output_dir", "default_root_dir", "dirpath", "save_dir", "cache_dir", "log_dir", "ckpt_path"}

# Numbers summarised per seed group: mean ± std over the group's finished runs.
GROUP_STATS = ("val_loss", "best_val_loss", "val_ppl", "tokens_per_sec")

RUN_COLUMNS_BEFORE = ("run", "variant")
RUN_COLUMNS_AFTER = (
    "params_total",
    "params_attention",
    "kv_cache_bytes_per_token",
    "val_loss",
    "best_val_loss",
    "val_ppl",
    "tokens_per_sec",
    "peak_memory_mb",
    "wall_time_sec",
    "global_step",
    "tokens_seen",
    "status",
    "note",
)


class CompareError(ValueError):
    """A problem with the command line itself (a path that is not a folder); main turns it into exit code 2."""


class _Absent:
    """Marks a key a run's config does not have (gqa has num_kv_heads, multihead has not): a value of its own."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()


@dataclass
class Run:
    """Everything the report needs from one run folder; fields stay empty when a file is missing."""

    path: Path
    status: str
    name: str = ""
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    raw_config: dict[str, Any] | None = None  # flattened, interpolations unresolved: what is compared
    config: dict[str, Any] | None = None  # flattened, interpolations resolved where possible: what is shown
    curve: list[tuple[float, float]] = field(default_factory=list)  # (tokens seen, val loss)
    attention_map: tuple[int, np.ndarray] | None = None  # (step, RGB image) of the last map of --layer

    @property
    def variant(self) -> str:
        name = self.metrics.get("attention") or (self.config or {}).get(VARIANT_KEY)
        return str(name) if name is not None else "?"

    def number(self, key: str) -> float | None:
        """A finite metric or None: NaN/inf losses (diverged runs) must not poison sorting and means."""
        value = self.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return value


@dataclass
class Group:
    """Runs whose configs are identical except for the seed; a lone run is a group of one."""

    variant: str
    knobs: dict[str, Any]  # the non-seed differing knobs, display values
    runs: list[Run]
    label: str = ""

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == OK]

    def stat(self, key: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std or None below two values, n) of a metric over the finished runs."""
        values = [v for v in (r.number(key) for r in self.finished) if v is not None]
        if not values:
            return None, None, 0
        std = statistics.stdev(values) if len(values) > 1 else None
        return statistics.mean(values), std, len(values)


# ----------------------------------------------------------------------------------------------- discovery
def is_run_dir(path: Path) -> bool:
    """Hydra writes .hydra/ when a job starts and train.py writes metrics.json at its end: either marks a run."""
    return (path / METRICS_FILE).is_file() or (path / HYDRA_DIR).is_dir()


def _natural_key(text: str) -> list[Any]:
    """Sort "10_..." after "9_...": sweep jobs are numbered without padding."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def discover_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run folders given directly or found below the given folders, in job order, each once.

    Run folders are not searched further (their checkpoints/ holds no runs), nor are hidden folders.
    """
    found: dict[Path, None] = {}
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise CompareError(f"{root} is not a folder: give run folders or sweep folders.")
        for current, dirnames, _ in os.walk(root):
            here = Path(current)
            if is_run_dir(here):
                found.setdefault(here.resolve())
                dirnames[:] = []
            else:
                dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=_natural_key)
    return list(found)


# ------------------------------------------------------------------------------------------------- loading
def _freeze(value: Any) -> Any:
    """Lists become tuples so that config values can be compared as set members."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _ignored(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return key.startswith(IGNORED_PREFIXES) or last in IGNORED_LAST_PARTS or last.startswith("_")


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"attention": {"name": "gqa"}} -> {"attention.name": "gqa"}, without locations and instrumentation."""
    flat: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
    elif prefix and not _ignored(prefix[:-1]):
        flat[prefix[:-1]] = _freeze(node)
    return flat


def _resolve(cfg: Any, key: str, raw: Any) -> Any:
    """The value an interpolation had in the run; the raw "${...}" text when it cannot be resolved here."""
    if not (isinstance(raw, str) and "${" in raw):
        return raw
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:  # resolvers (hydra:, custom ones) only exist inside the run: keep the text
        return raw
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return _freeze(value)


def read_config(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(raw, resolved) flattened .hydra/config.yaml, or None when it is missing or unreadable.

    Differences are computed on the raw values: `data.context_length: ${model.context_length}` is then the
    same text in every run and only model.context_length shows up as a knob, not both.
    """
    path = run_dir / HYDRA_DIR / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.load(path)
        raw = flatten_config(OmegaConf.to_container(cfg, resolve=False))
    except Exception:
        return None
    return raw, {key: _resolve(cfg, key, value) for key, value in raw.items()}


def read_metrics(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """(metrics, "") or (None, why not)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None, "no metrics.json (still running, or killed)"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable metrics.json ({exc})"
    if not isinstance(data, dict):
        return None, "metrics.json is not a JSON object"
    return data, ""


def _positive_int(value: Any, default: int = 1) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else default


def tokens_per_step(metrics: dict[str, Any], config: dict[str, Any] | None) -> float | None:
    """Tokens per optimizer step: exact from metrics.json (world size included), else from the config.

    The config path cannot know how many devices `trainer.devices=auto` meant, and then counts one.
    """
    step, seen = metrics.get("global_step"), metrics.get("tokens_seen")
    if isinstance(step, int) and step > 0 and isinstance(seen, (int, float)) and seen > 0:
        return seen / step
    if not config:
        return None
    batch, context = config.get("data.batch_size"), config.get("model.context_length")
    if not isinstance(batch, int) or not isinstance(context, int):
        return None
    devices = config.get("trainer.devices")
    devices = len(devices) if isinstance(devices, tuple) else _positive_int(devices)
    accumulate = _positive_int(config.get("trainer.accumulate_grad_batches"))
    return float(batch * context * accumulate * devices * _positive_int(config.get("trainer.num_nodes")))


def read_events(run_dir: Path, layer: int) -> tuple[list[tuple[int, float]], tuple[int, np.ndarray] | None, str]:
    """(val/loss as (logged step, value), last attention map of `layer`, problem or "").

    All scalars are kept (size 0); of the images only the newest per tag (size 1: TensorBoard's reservoir
    always keeps the last item), so a long run's hundreds of maps are not all decoded into memory.
    """
    if not any(run_dir.glob(EVENT_GLOB)):
        return [], None, "no TensorBoard event file"
    from tensorboard.backend.event_processing import event_accumulator as ea

    guidance = {ea.SCALARS: 0, ea.IMAGES: 1, ea.TENSORS: 1, ea.HISTOGRAMS: 1, ea.AUDIO: 1, ea.COMPRESSED_HISTOGRAMS: 1}
    try:
        acc = ea.EventAccumulator(str(run_dir), size_guidance=guidance)
        acc.Reload()
        tags = acc.Tags()
        by_step: dict[int, float] = {}
        if VAL_LOSS_TAG in tags.get("scalars", []):
            for event in acc.Scalars(VAL_LOSS_TAG):
                by_step[event.step] = event.value  # a resumed run logs some steps twice: the later one wins
        image = None
        tag = IMAGE_TAG.format(layer=layer)
        if tag in tags.get("images", []):
            from PIL import Image

            event = acc.Images(tag)[-1]
            image = (event.step, np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")))
    except Exception as exc:  # a truncated or foreign file must not stop the report
        return [], None, f"unreadable event file ({type(exc).__name__}: {exc})"
    problems = [] if by_step else [f"no {VAL_LOSS_TAG} in the event file"]
    if image is None:
        problems.append(f"no {tag} image")
    return sorted(by_step.items()), image, "; ".join(problems)


def _curve_in_tokens(
    logged: list[tuple[int, float]], global_step: int | None, per_step: float
) -> list[tuple[float, float]]:
    """Logged steps -> tokens seen. Lightning logs a validation inside fit() at global_step - 1 (the step
    counter for loggers is bumped after validation), hence + 1; a final trainer.validate() after fit logs at
    global_step itself, hence the clip."""
    points = []
    for step, value in logged:
        steps = step + 1 if global_step is None else min(step + 1, global_step)
        points.append((steps * per_step, value))
    return points


def _from_events(logged: list[tuple[int, float]], per_step: float | None) -> dict[str, Any]:
    """Numbers of a run without metrics.json, from its val/loss curve so far (a killed or running job)."""
    step, last = logged[-1]
    best = min(value for _, value in logged)
    return {
        "val_loss": last,
        "val_ppl": math.exp(last) if last < 700 else math.inf,
        "best_val_loss": best,
        "global_step": step + 1,
        "tokens_seen": None if per_step is None else (step + 1) * per_step,
    }


def load_run(run_dir: Path, layer: int = 0) -> Run:
    """One row's worth of data; never raises for a missing or broken file, it notes it instead."""
    run = Run(path=Path(run_dir), status=OK, name=Path(run_dir).name)
    metrics, problem = read_metrics(run.path)
    configs = read_config(run.path)
    if configs is not None:
        run.raw_config, run.config = configs
    logged, run.attention_map, event_problem = read_events(run.path, layer)

    if metrics is None:
        run.status = INCOMPLETE
        run.notes.append(problem)
    else:
        run.metrics = metrics
        if metrics.get("status") == FAILED:
            run.status = FAILED
            run.notes.append(str(metrics.get("error") or "failed (no error message)"))
        elif metrics.get("status") != OK:
            run.status = INCOMPLETE
            run.notes.append(f"metrics.json has status {metrics.get('status')!r}")
    if configs is None:
        overrides = " ".join(map(str, run.metrics.get("overrides") or []))
        run.notes.append("no .hydra/config.yaml: knobs unknown" + (f" (overrides: {overrides})" if overrides else ""))

    per_step = tokens_per_step(run.metrics, run.config)
    if run.status == INCOMPLETE and metrics is None and logged:
        run.metrics.update(_from_events(logged, per_step))
        run.notes.append(f"numbers from the event file, up to step {run.metrics['global_step']}")
    if logged and per_step is not None:
        global_step = run.metrics.get("global_step")
        run.curve = _curve_in_tokens(logged, global_step if isinstance(global_step, int) else None, per_step)
    elif logged:
        run.notes.append("tokens per step unknown: not in the loss curves")
    if event_problem and run.status != FAILED:
        run.notes.append(event_problem)
    return run


def name_runs(runs: Sequence[Run]) -> None:
    """Each run's name: its folder relative to the folder holding all of them (the sweep's job folder name)."""
    if len(runs) == 1:
        runs[0].name = runs[0].path.name
        return
    root = Path(os.path.commonpath([r.path for r in runs]))
    for run in runs:
        run.name = run.path.relative_to(root).as_posix() if run.path != root else run.path.name


# --------------------------------------------------------------------------------------------- comparison
def _comparable(value: Any) -> Any:
    """True == 1 in Python; a bool and an int knob must still count as different values."""
    return (type(value) is bool, value)


def differing_knobs(runs: Sequence[Run]) -> list[str]:
    """Config keys whose values are not identical across the runs that have a config, in config order.

    A key missing from some configs differs (gqa's num_kv_heads against multihead). Runs without a config
    are left out: their settings are unknown, not different.
    """
    configs = [r.raw_config for r in runs if r.raw_config is not None]
    keys = list(dict.fromkeys(key for config in configs for key in config))
    return [key for key in keys if len({_comparable(c.get(key, ABSENT)) for c in configs}) > 1]


def is_seed_key(key: str) -> bool:
    return key == "seed" or key.endswith(".seed")


def sort_runs(runs: Iterable[Run]) -> list[Run]:
    """Finished runs by final val loss, then incomplete ones (partial losses are not comparable), failed last."""

    def key(run: Run) -> tuple[int, bool, float, str]:
        loss = run.number("val_loss")
        return STATUS_ORDER[run.status], loss is None, loss if loss is not None else 0.0, run.name

    return sorted(runs, key=key)


def format_value(value: Any) -> str:
    """A config value as the user would type it on the command line."""
    if value is ABSENT:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def knob_value(run: Run, key: str) -> Any:
    """Display value of a knob in one run: ABSENT when its config lacks the key, None-like "?" when unknown."""
    if run.config is None:
        return "?"
    return run.config.get(key, ABSENT)


def _short_names(knobs: Sequence[str]) -> dict[str, str]:
    """Last key part where it is unambiguous among the knobs ("num_kv_heads"), the full key otherwise."""
    lasts = [k.rsplit(".", 1)[-1] for k in knobs]
    return {k: last if lasts.count(last) == 1 else k for k, last in zip(knobs, lasts, strict=True)}


def _label(variant: str, values: dict[str, Any]) -> str:
    short = _short_names(list(values))
    parts = [f"{short[k]}={format_value(v)}" for k, v in values.items() if v is not ABSENT and v != "?"]
    return f"{variant} ({', '.join(parts)})" if parts else variant


def label_knobs(runs: Sequence[Run], knobs: Sequence[str]) -> list[str]:
    """The knobs worth naming in a legend: those with two or more values among the runs that have them.

    gqa's num_kv_heads=2 against multihead differs only by being there; the variant name already says that,
    and naming every such knob makes legends too long to read.
    """
    keep = []
    for key in knobs:
        values = {_comparable(r.raw_config[key]) for r in runs if r.raw_config is not None and key in r.raw_config}
        if key != VARIANT_KEY and len(values) > 1:
            keep.append(key)
    return keep


def _elide(text: str, limit: int = 36) -> str:
    """Start and end of a long folder name: a sweep's timestamp and a job's overrides are what tell runs apart."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[-(limit - 1 - head) :]}"


def _unique(labels: list[str], runs: Sequence[Run]) -> list[str]:
    """Identical configs run twice would share a label: add the (shortened) folder name to those."""
    return [
        f"{lab} [{_elide(run.name)}]" if labels.count(lab) > 1 else lab for lab, run in zip(labels, runs, strict=True)
    ]


def run_labels(runs: Sequence[Run], knobs: Sequence[str]) -> list[str]:
    """Legend names: the variant plus the knobs that take several values; folder name added to duplicates."""
    named = label_knobs(runs, knobs)
    return _unique([_label(r.variant, {k: knob_value(r, k) for k in named}) for r in runs], runs)


def group_by_seed(runs: Sequence[Run], knobs: Sequence[str]) -> list[Group]:
    """Runs with equal non-seed knobs form one group; sorted like runs (best mean val loss first)."""
    other = [k for k in knobs if not is_seed_key(k)]
    named = [k for k in label_knobs(runs, knobs) if not is_seed_key(k)]
    groups: dict[Any, Group] = {}
    for run in runs:
        if run.raw_config is None:
            key: Any = ("?", str(run.path))  # settings unknown: never pooled with anything
        else:
            key = (run.variant, tuple(_comparable(run.raw_config.get(k, ABSENT)) for k in other))
        if key not in groups:
            values = {k: knob_value(run, k) for k in other}
            groups[key] = Group(run.variant, values, [], _label(run.variant, {k: values[k] for k in named}))
        groups[key].runs.append(run)
    result = list(groups.values())
    labels = [g.label for g in result]
    for group in result:
        if labels.count(group.label) > 1:
            group.label = f"{group.label} [{_elide(group.runs[0].name)}]"

    def order(group: Group) -> tuple[bool, float, str]:
        mean = group.stat("val_loss")[0]
        return mean is None, mean if mean is not None else 0.0, group.label

    return sorted(result, key=order)


# ----------------------------------------------------------------------------------------------- tables
def run_row(run: Run, knobs: Sequence[str]) -> dict[str, Any]:
    """One report.csv row: raw numbers (None for missing), knob values as typed on a command line."""
    params = run.metrics.get("params") if isinstance(run.metrics.get("params"), dict) else {}
    row: dict[str, Any] = {"run": run.name, "variant": run.variant}
    row.update({k: format_value(knob_value(run, k)) for k in knobs})
    row.update(
        {
            "params_total": params.get("total"),
            "params_attention": params.get("attention"),
            "kv_cache_bytes_per_token": run.metrics.get("kv_cache_bytes_per_token"),
            "val_loss": run.metrics.get("val_loss"),
            "best_val_loss": run.metrics.get("best_val_loss"),
            "val_ppl": run.metrics.get("val_ppl"),
            "tokens_per_sec": run.metrics.get("tokens_per_sec"),
            "peak_memory_mb": run.metrics.get("peak_memory_mb"),
            "wall_time_sec": run.metrics.get("wall_time_sec"),
            "global_step": run.metrics.get("global_step"),
            "tokens_seen": run.metrics.get("tokens_seen"),
            "status": run.status,
            "note": "; ".join(run.notes),
        }
    )
    return row


def group_row(group: Group) -> dict[str, Any]:
    """One report_grouped.csv row: mean and std per number, n finished runs, the seeds pooled."""
    first = group.runs[0]
    params = first.metrics.get("params") if isinstance(first.metrics.get("params"), dict) else {}
    seeds = [format_value(r.config.get("seed", ABSENT)) for r in group.runs if r.config is not None]
    row: dict[str, Any] = {"group": group.label, "variant": group.variant}
    row.update({k: format_value(v) for k, v in group.knobs.items()})
    row.update({"n": len(group.finished), "n_not_finished": len(group.runs) - len(group.finished)})
    row["seeds"] = " ".join(s for s in seeds if s)
    for key in GROUP_STATS:
        mean, std, _ = group.stat(key)
        row[f"{key}_mean"], row[f"{key}_std"] = mean, std
    row.update(
        {
            "params_total": params.get("total"),
            "params_attention": params.get("attention"),
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
}


def _markdown(
    runs: Sequence[Run],
    knobs: Sequence[str],
    groups: Sequence[Group],
    plots: dict[str, Path | None],
    sources: Sequence[Path],
) -> str:
    """report.md: the run table, the seed groups when there are any, the problems in full, the plots."""
    # attention.name is the variant column already; in the CSV it stays, for completeness
    md_knobs = [k for k in knobs if k != VARIANT_KEY]
    counts = {s: sum(r.status == s for r in runs) for s in STATUS_ORDER}
    lines = [
        f"# Comparison of {len(runs)} runs",
        "",
        f"Generated {datetime.now():%Y-%m-%d %H:%M:%S} from: " + ", ".join(f"`{s}`" for s in sources),
        "",
        f"{counts[OK]} finished, {counts[INCOMPLETE]} incomplete, {counts[FAILED]} failed. "
        + ("Knobs that differ: " + ", ".join(f"`{k}`" for k in knobs) + "." if knobs else "The configs do not differ.")
        + " Sorted by final val loss; incomplete and failed runs last.",
        "",
    ]
    header = ["run", "variant", *md_knobs, *(MD_HEADERS[c] for c in RUN_COLUMNS_AFTER[:-2]), "status", "note"]
    body = []
    for run in runs:
        row = run_row(run, knobs)
        cells = [row["run"], row["variant"], *(row[k] or "—" for k in md_knobs)]
        cells += [_fmt(row[c], NUMBER_SPECS[c]) for c in RUN_COLUMNS_AFTER[:-2]]
        body.append([*cells, run.status, _md_cell(row["note"], 60)])
    lines += _md_table(header, body)

    if any(len(g.runs) > 1 for g in groups):
        lines += ["", "## Seed groups", "", "Runs whose configs differ only by the seed: mean ± sample std.", ""]
        header = ["group", "n", "seeds", "val loss", "best val loss", "val ppl", "tokens/s"]
        specs = (".4f", ".4f", ".2f", ",.0f")
        body = []
        for group in groups:
            row = group_row(group)
            stats = [_fmt_stat(*group.stat(k)[:2], spec) for k, spec in zip(GROUP_STATS, specs, strict=True)]
            failed = f" ({row['n_not_finished']} not finished)" if row["n_not_finished"] else ""
            body.append([group.label, f"{row['n']}{failed}", row["seeds"] or "—", *stats])
        lines += _md_table(header, body)

    problems = [r for r in runs if r.notes]
    if problems:
        lines += ["", "## Notes", ""]
        lines += [f"- `{r.name}` ({r.status}): {_md_cell('; '.join(r.notes))}" for r in problems]

    lines += ["", "## Plots", ""]
    for name, path in plots.items():
        lines.append(f"![{name}]({path.name})" if path is not None else f"- {name}: nothing to plot")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_tables(
    runs: Sequence[Run],
    knobs: Sequence[str],
    groups: Sequence[Group],
    out: Path,
    plots: dict[str, Path | None] | None = None,
    sources: Sequence[Path] = (),
) -> dict[str, Path]:
    """report.csv (one row per run, runs in the given order), report_grouped.csv (always, n=1 groups
    included, so scripts can rely on it) and report.md."""
    out.mkdir(parents=True, exist_ok=True)
    run_columns = [*RUN_COLUMNS_BEFORE, *knobs, *RUN_COLUMNS_AFTER]
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
        "params_total",
        "params_attention",
        "kv_cache_bytes_per_token",
    ]
    written = {
        "report.csv": _write_csv(out / "report.csv", [run_row(r, knobs) for r in runs], run_columns),
        "report_grouped.csv": _write_csv(out / "report_grouped.csv", [group_row(g) for g in groups], group_columns),
    }
    md = out / "report.md"
    md.write_text(_markdown(runs, knobs, groups, plots or {}, sources))
    written["report.md"] = md
    return written


# ------------------------------------------------------------------------------------------------- plots
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


def _bars(
    items: list[tuple[str, float, float | None, int]], path: Path, xlabel: str, title: str, spec: str, zoom: bool
) -> None:
    """Horizontal bars (labels can be long), first item on top, error bar = std, value written at the end."""
    fig = _figure(8.0, 1.2 + 0.38 * len(items))
    ax = fig.add_subplot()
    labels = [label for label, *_ in items]
    means = [mean for _, mean, _, _ in items]
    stds = [std or 0.0 for _, _, std, _ in items]
    ypos = list(range(len(items)))
    colors = _colors(len(items))
    ax.barh(ypos, means, color=[colors[i % len(colors)] for i in ypos], alpha=0.85)
    for y, (_, mean, std, _) in zip(ypos, items, strict=True):
        if std is not None:  # only where there were several seeds: a zero-width bar would suggest std 0
            ax.errorbar(mean, y, xerr=std, fmt="none", ecolor="black", capsize=4, linewidth=1.2)
    ax.set_yticks(ypos, labels, fontsize=8)
    ax.invert_yaxis()
    lo, hi = min(m - s for m, s in zip(means, stds, strict=True)), max(m + s for m, s in zip(means, stds, strict=True))
    if zoom:  # losses of comparable runs differ in the 2nd decimal: from 0 every bar would look the same
        span = hi - lo if hi > lo else abs(hi) * 0.1 or 1.0
        ax.set_xlim(max(0.0, lo - 0.6 * span), hi + 0.45 * span)
        title += " (axis not from 0)"
    else:
        ax.set_xlim(0, hi * 1.25 if hi > 0 else 1.0)
    for y, (_, mean, std, n) in zip(ypos, items, strict=True):
        text = format(mean, spec) + (f" ± {format(std, spec)} (n={n})" if std is not None else "")
        ax.annotate(text, (mean + (std or 0.0), y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    if any(n > 1 for *_, n in items):
        title += ", mean ± std over seeds"
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=DPI)


def _group_items(groups: Sequence[Group], key: str) -> list[tuple[str, float, float | None, int]]:
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


# --------------------------------------------------------------------------------------------------- CLI
def default_out(sources: Sequence[Path]) -> Path:
    """Next to the input: the run or sweep folder given, or the folder holding all of several inputs."""
    resolved = list(dict.fromkeys(Path(s).resolve() for s in sources))
    return resolved[0] if len(resolved) == 1 else Path(os.path.commonpath(resolved))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR", help="run folders, sweep folders")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the run/sweep folder given; with several, the folder that holds them all)",
    )
    p.add_argument("--layer", type=int, default=0, help="layer of the attention maps to show side by side")
    return p.parse_args(argv)


def _error(message: str) -> int:
    print(f"compare: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Discover, load, compare, write; returns the exit code (2: bad paths or no run found)."""
    args = parse_args(argv)
    if args.layer < 0:
        return _error(f"--layer {args.layer}: layers count from 0.")
    try:
        run_dirs = discover_runs(args.paths)
    except CompareError as exc:
        return _error(str(exc))
    if not run_dirs:
        where = ", ".join(str(p) for p in args.paths)
        return _error(f"no run folders (folders with metrics.json or .hydra/) in {where}.")

    runs = [load_run(d, args.layer) for d in run_dirs]
    name_runs(runs)
    knobs = differing_knobs(runs)
    runs = sort_runs(runs)
    groups = group_by_seed(runs, knobs)
    labels = run_labels(runs, knobs)

    out = args.out if args.out is not None else default_out(args.paths)
    out.mkdir(parents=True, exist_ok=True)
    drawn = {
        "val_loss_vs_tokens.png": plot_val_loss_vs_tokens(runs, labels, out / "val_loss_vs_tokens.png"),
        "final_val_loss.png": plot_final_val_loss(groups, out / "final_val_loss.png"),
        "throughput.png": plot_throughput(groups, out / "throughput.png"),
        "attention_maps.png": plot_attention_maps(runs, labels, args.layer, out / "attention_maps.png"),
    }
    plots = {name: (out / name if labels_drawn else None) for name, labels_drawn in drawn.items()}
    for name, path in plots.items():
        if path is None:
            (out / name).unlink(missing_ok=True)  # a stale plot from an earlier comparison would mislead
    written = write_tables(runs, knobs, groups, out, plots, [Path(p) for p in args.paths])

    counts = ", ".join(f"{sum(r.status == s for r in runs)} {s}" for s in STATUS_ORDER)
    print(f"{len(runs)} runs ({counts}); knobs that differ: {', '.join(knobs) or 'none'}")
    for run in runs:
        if run.status != OK:
            print(f"  {run.status}: {run.name}: {'; '.join(run.notes)}", file=sys.stderr)
    for path in [*written.values(), *(p for p in plots.values() if p is not None)]:
        print(path)
    return 0
