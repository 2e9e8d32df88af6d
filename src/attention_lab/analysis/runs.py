"""Finding run folders and reading what a run left behind, without the model code, a GPU or a checkpoint.

A run folder is any folder holding `metrics.json` or `.hydra/`; any other folder given is searched for run
folders (a sweep, or `outputs/` as a whole). Three files are read:
- `metrics.json`: final numbers and status (training writes a `failed` one when a job raises);
- `.hydra/config.yaml`: the settings, flattened to `group.key` names, without locations and instrumentation
  (paths.*, hydra.*, logger.*, callbacks.*, output/cache dirs, ckpt_path): they differ per run or do not
  change what is learned, and would only be noise;
- the TensorBoard event file (see `events`): the `val/loss` curve and the last attention map of one layer.

A run that misses one of these still loads, with a note saying what is missing: a broken or killed job must
not hide the others. Status is `ok` (metrics.json says so), `incomplete` (no metrics.json: numbers, if any,
from the event file so far) or `failed` (with the error).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from ..config import flatten
from ..errors import UserError
from .events import curve_in_tokens, numbers_from_curve, read_events, tokens_per_step

METRICS_FILE = "metrics.json"
HYDRA_DIR = ".hydra"
VARIANT_KEY = "attention.name"
PATTERN_KEY = "model.layers"  # a per-layer pattern is part of what the variant is: its label names it

OK, INCOMPLETE, FAILED = "ok", "incomplete", "failed"
STATUS_ORDER = {OK: 0, INCOMPLETE: 1, FAILED: 2}

# Config keys that are locations or instrumentation, not experiment settings: they differ between runs (every
# run has its own folder) or do not change what is learned, and would only add noise columns.
IGNORED_PREFIXES = ("paths.", "hydra.", "logger.", "callbacks.")
IGNORED_LAST_PARTS = {
    "output_dir",
    "default_root_dir",
    "dirpath",
    "save_dir",
    "cache_dir",
    "log_dir",
    "ckpt_path",
    "tokenize_workers",  # how fast the cache is built, not what a run learns
}
# Settings added after runs were made, with the value those older runs trained with: an old run then groups
# with new runs of the same settings instead of showing "-" and a knob that differs only by its absence.
ADDED_SETTINGS: dict[str, Any] = {
    "model.position": "learned",
    "model.rope_base": 10000.0,
    "eval.lengths": [],
    "eval.position_buckets": 16,
    "model.mlp_ratio": 4,
    "model.init": "gpt2",
    "model.mlp_hidden": None,
    "model.match_params": None,
    "attention.qk_norm": False,  # off is also what a variant without these settings does
    "attention.logit_softcap": 0.0,
    "attention.sinks": False,
    "model.layers": None,
    "model.bias": True,
}
UNSUPPORTED = "unsupported"  # metrics.json of a sweep job whose (variant, position) pair cannot exist


class CompareError(UserError):
    """A path given to compare is not usable (not a folder, no run in it); the CLI prints it as one line."""


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
    """Hydra writes .hydra/ when a job starts and training writes metrics.json at its end: either marks a run."""
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


# ------------------------------------------------------------------------------------------------- config
def _freeze(value: Any) -> Any:
    """Lists become tuples so that config values can be compared as set members."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key.rsplit(".", 1)[-1] in IGNORED_LAST_PARTS


def flatten_config(node: Any) -> dict[str, Any]:
    """{"attention": {"name": "gqa"}} -> {"attention.name": "gqa"}, without locations and instrumentation."""
    if not isinstance(node, dict):  # a YAML file that is not a mapping holds no settings
        return {}
    return {key: _freeze(value) for key, value in flatten(node).items() if not _ignored(key)}


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
    for key, value in ADDED_SETTINGS.items():
        raw.setdefault(key, _freeze(value))
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


# ------------------------------------------------------------------------------------------------ loading
def _apply_metrics(run: Run, metrics: dict[str, Any] | None, problem: str) -> None:
    """Status and notes from metrics.json: missing -> incomplete; its own status `failed` -> failed."""
    if metrics is None:
        run.status = INCOMPLETE
        run.notes.append(problem)
        return
    run.metrics = metrics
    if metrics.get("status") == FAILED:
        run.status = FAILED
        run.notes.append(str(metrics.get("error") or "failed (no error message)"))
    elif metrics.get("status") != OK:
        run.status = INCOMPLETE
        run.notes.append(f"metrics.json has status {metrics.get('status')!r}")


def _apply_curve(run: Run, logged: list[tuple[int, float]], from_events: bool) -> None:
    """The loss curve in tokens seen; a run without metrics.json also takes its numbers from the curve."""
    per_step = tokens_per_step(run.metrics, run.config)
    if from_events and logged:
        run.metrics.update(numbers_from_curve(logged, per_step))
        run.notes.append(f"numbers from the event file, up to step {run.metrics['global_step']}")
    if logged and per_step is not None:
        global_step = run.metrics.get("global_step")
        run.curve = curve_in_tokens(logged, global_step if isinstance(global_step, int) else None, per_step)
    elif logged:
        run.notes.append("tokens per step unknown: not in the loss curves")


def load_run(run_dir: Path, layer: int = 0) -> Run:
    """One row's worth of data; never raises for a missing or broken file, it notes it instead."""
    run = Run(path=Path(run_dir), status=OK, name=Path(run_dir).name)
    metrics, problem = read_metrics(run.path)
    configs = read_config(run.path)
    if configs is not None:
        run.raw_config, run.config = configs
    logged, run.attention_map, event_problem = read_events(run.path, layer)

    _apply_metrics(run, metrics, problem)
    if configs is None:
        overrides = " ".join(map(str, run.metrics.get("overrides") or []))
        run.notes.append("no .hydra/config.yaml: knobs unknown" + (f" (overrides: {overrides})" if overrides else ""))
    _apply_curve(run, logged, from_events=metrics is None)
    if event_problem and run.status != FAILED:
        run.notes.append(event_problem)
    return run


def name_runs(runs: Sequence[Run]) -> None:
    """Each run's name: its folder relative to the folder holding all of them (the sweep's job folder name)."""
    root = Path(os.path.commonpath([r.path for r in runs]))
    for run in runs:
        run.name = run.path.relative_to(root).as_posix() if run.path != root else run.path.name
