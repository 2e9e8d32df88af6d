"""Learning rates tuned per attention variant: the search (`hparams_search=lr`) and the file it writes, which
any run (a comparison preset included) can train with (`tuned=<file>`).

Why: one `optim.lr` for every variant handicaps the variants it does not suit, so a comparison at a shared lr
measures the lr as much as the attention. The search runs one Optuna study per variant (the Optuna sweeper
samples every swept setting, so a variant list would become one more sampled parameter, not a grid):
- `TuningRecorder`, a Hydra callback of the hparams_search configs: before the first trial it refuses a search
  that cannot give one value per variant and writes `<sweep>/search.yaml` (what is searched, the budget); after
  each trial `<sweep>/tuned.yaml` holds the best finished trial so far (lowest final val_loss, the value Optuna
  minimises); at the end of the study that entry replaces the variant's entry in the project file
  (`outputs/tuned/lr.yaml`), so several studies fill one file.
- `apply_tuned(cfg)`: `tuned=<file>` sets this run's optim settings from the entry of its variant (the configured
  ones are the fallback, with a warning), before validation; the values trained with are what the checkpoint,
  metrics.json (`tuned`) and the run's `.hydra/config.yaml` (read by compare) record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .. import config
from ..config.tuned import OPTIM_KEYS, read_tuned, retune_command
from ..errors import USAGE_EXIT, UserError
from .summary import METRICS_FILE

log = logging.getLogger(__name__)

SEARCH_FILE = "search.yaml"  # <sweep>/: what the study searches and its budget (Optuna writes no multirun.yaml)
SWEEP_TUNED_FILE = "tuned.yaml"  # <sweep>/: the study's best trial so far, in the project file's format
# Settings an entry records as `tuned_on` (with every attention.* setting); a run that differs gets a warning.
TUNED_ON = (
    "model.d_model",
    "model.n_layers",
    "model.context_length",
    "model.position",
    "model.match_params",
    "data.tokenizer",
    "data.path",
    "data.batch_size",
)
HEADER = (
    "# Optimizer settings tuned per attention variant, written by `attention-lab train hparams_search=lr\n"
    "# attention=<variant>` (each study replaces its variant's entry). Train with them:\n"
    "#   attention-lab train experiment=compare_modern tuned={path}\n"
)


# ------------------------------------------------------------------------------------------------ applying
class TunedSettings(L.Callback):
    """metrics.json's `tuned`: the file, the variant, the settings taken from it and the configured ones."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {"tuned": self.record}


def apply_tuned(cfg: DictConfig) -> TunedSettings | None:
    """Set cfg.optim from the `tuned` file's entry for this run's variant (its label: the variant, or a
    model.layers pattern). No entry: the configured settings, with a warning. None when `tuned` is not set."""
    if cfg.get("tuned") is None:
        return None
    path = str(cfg.tuned)
    entries = read_tuned(path)
    variant = config.attention_label(cfg)
    record: dict[str, Any] = {"file": str(Path(path).resolve()), "variant": variant, "applied": {}}
    entry = entries.get(variant)
    if entry is None:
        record["note"] = f"no entry for {variant}: trained at the configured optim settings"
        log.warning(
            "tuned=%s has no entry for %s (it has: %s): training at the configured optim.lr=%s; tune it with: %s",
            path,
            variant,
            ", ".join(entries) or "none",
            cfg.optim.lr,
            retune_command(variant),
        )
        return TunedSettings(record)
    values = {key: entry[key] for key in OPTIM_KEYS if key in entry}
    configured = {f"optim.{key}": cfg.optim[key] for key in values}
    for key, value in values.items():
        cfg.optim[key] = value
    record["applied"] = {f"optim.{key}": value for key, value in values.items()}
    record["configured"] = configured
    record.update({key: entry[key] for key in ("val_loss", "trials", "budget", "sweep") if key in entry})
    _warn_if_tuned_elsewhere(cfg, path, variant, entry)
    _record_in_hydra_config(record)
    log.info("tuned=%s: %s trains with %s", path, variant, record["applied"])
    return TunedSettings(record)


def tuned_on(cfg: DictConfig) -> dict[str, Any]:
    """The settings a tuned value depends on: every attention.* setting and TUNED_ON."""
    keys = [f"attention.{key}" for key in (cfg.get("attention") or {})] + list(TUNED_ON)
    values = {key: OmegaConf.select(cfg, key, default=None) for key in keys}
    return {key: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for key, v in values.items()}


def _warn_if_tuned_elsewhere(cfg: DictConfig, path: str, variant: str, entry: dict[str, Any]) -> None:
    """The best lr moves with the width, the depth, the data and the batch: say when this run is not the
    setting the value was tuned on, and when its study had not finished."""
    then, now = entry.get("tuned_on") or {}, tuned_on(cfg)
    differ = [f"{key}={then[key]!r} (this run: {now[key]!r})" for key in now if key in then and then[key] != now[key]]
    if differ:
        log.warning(
            "tuned=%s: %s was tuned with other settings: %s; tune again with this run's settings for a fair value",
            path,
            variant,
            ", ".join(differ),
        )
    budget = entry.get("budget") or {}
    planned, ran = budget.get("n_trials"), entry.get("trials")
    if isinstance(planned, int) and isinstance(ran, int) and ran < planned:
        log.warning("tuned=%s: %s's entry is from an unfinished study (%d of %d trials)", path, variant, ran, planned)


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _record_in_hydra_config(record: dict[str, Any]) -> None:
    """Rewrite the run's `.hydra/config.yaml` with the settings it trains with: compare reads a run's settings
    there, and Hydra saved it before the task took the tuned values. A comment keeps the composed values."""
    if not HydraConfig.initialized() or not _is_rank_zero():
        return
    hydra = HydraConfig.get()
    if hydra.output_subdir is None:
        return
    file = Path(hydra.runtime.output_dir) / hydra.output_subdir / "config.yaml"
    if not file.is_file():
        return
    saved = OmegaConf.load(file)
    for key, value in record["applied"].items():
        OmegaConf.update(saved, key, value, merge=False)
    composed = ", ".join(f"{key}={value}" for key, value in record["configured"].items())
    applied = ", ".join(record["applied"])
    header = f"# {applied} from tuned={record['file']} for {record['variant']} (composed: {composed})\n"
    _write_atomically(file, header + OmegaConf.to_yaml(saved))


# ------------------------------------------------------------------------------------------------ writing
def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time: studies of different variants may end together and merge into one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_entries(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    body = yaml.safe_dump({k: dict(v) for k, v in entries.items()}, sort_keys=False, default_flow_style=False)
    _write_atomically(path, HEADER.format(path=path) + body)


def merge_entry(path: Path, variant: str, entry: Mapping[str, Any]) -> None:
    """Replace `variant`'s entry in the project file, keeping the others (a newer study of a variant replaces
    the older one: val losses of different budgets cannot be compared). A file that is not ours is refused."""
    with _locked(path):
        entries = read_tuned(path) if path.exists() else {}
        entries[variant] = dict(entry)
        write_entries(path, entries)


def searched_settings(cfg: DictConfig) -> dict[str, str]:
    """{setting: search expression} of a study: `hydra.sweeper.params` and command-line sweeps (the later wins,
    and a fixed value drops a setting from the search, as the Optuna sweeper does). A UserError when a swept
    setting is not an optim setting (Optuna would sample it: one variant would win the study) or none is."""
    params = cfg.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(cfg.hydra.overrides.task)
    final = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(arguments)}
    swept = {key: str(o.input_line).split("=", 1)[-1] for key, o in final.items() if o.is_sweep_override()}
    others = {key: value for key, value in swept.items() if not key.startswith("optim.")}
    if others:
        listed = ", ".join(f"{key}={value}" for key, value in others.items())
        first_key, first_value = next(iter(others.items()))
        one = first_value.split(",")[0]
        raise UserError(
            f"hparams_search runs one Optuna study of optim settings per variant; it cannot sweep {listed}: Optuna "
            "would sample each as one more parameter (not a grid), and one value would win the study. Run one "
            f"search per value instead, e.g. `attention-lab train hparams_search=lr {first_key}={one}` (for an "
            "experiment preset's sweep: drop experiment=... and pass its settings, e.g. trainer=cpu "
            "data.tokenizer=char for the compare_* presets)."
        )
    if not swept:
        raise UserError(
            "hparams_search searches nothing: optim.lr is fixed on the command line. Drop optim.lr=..., or search "
            "another optim setting, e.g. 'optim.warmup_steps=int(interval(0,60))'."
        )
    return swept


def _job_number(folder: Path) -> int:
    head = folder.name.split("_", 1)[0]
    return int(head) if head.isdigit() else sys.maxsize


def best_entry(sweep_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """(variant, entry) of the trial with the lowest final val_loss among the finished ones (status ok);
    None before one has finished. Each trial's settings are read from its `.hydra/config.yaml`."""
    search = OmegaConf.load(sweep_dir / SEARCH_FILE)
    records = []
    for folder in sorted(p for p in sweep_dir.iterdir() if (p / METRICS_FILE).is_file()):
        metrics = json.loads((folder / METRICS_FILE).read_text())
        records.append((folder, metrics))
    finished = [
        (metrics["val_loss"], _job_number(folder), folder, metrics)
        for folder, metrics in records
        if metrics.get("status") == "ok" and isinstance(metrics.get("val_loss"), float | int)
        if math.isfinite(metrics["val_loss"])
    ]
    if not finished:
        return None
    val_loss, _, folder, metrics = min(finished, key=lambda item: item[:2])
    trial = OmegaConf.load(folder / ".hydra" / "config.yaml")
    entry: dict[str, Any] = {key.split(".", 1)[1]: OmegaConf.select(trial, key) for key in search.search}
    if "warmup_steps" in entry and metrics.get("warmup_steps_used") is not None:
        entry["warmup_steps"] = metrics["warmup_steps_used"]  # what it trained with: cut when >= max_steps
    entry.update(
        val_loss=float(val_loss),
        trials=len(records),
        ok_trials=len(finished),
        budget={
            "n_trials": int(search.n_trials),
            "max_steps": metrics.get("max_steps"),
            "tokens_per_trial": metrics.get("tokens_seen"),
            "seed": trial.get("seed"),
        },
        tuned_on=tuned_on(trial),
        search=dict(search.search),
        sweep=str(sweep_dir),
        best_run=folder.name,
    )
    return str(metrics.get("attention") or trial.attention.name), entry


def _check_settings(cfg: DictConfig) -> None:
    """The study's fixed settings, validated once before the first trial (the sweep's own pre-check rebuilds
    jobs from a multirun.yaml, which the Optuna sweeper does not write): a typo fails in seconds, not once per
    trial. The searched settings are checked by each trial."""
    task = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    del task["hydra"]
    task.paths.output_dir = str(Path(cfg.hydra.sweep.dir) / "check")  # ${hydra:...} resolves only inside a job
    config.validate(task, multirun=True)


class TuningRecorder(Callback):
    """The Hydra callback of `hparams_search=...`: checks the study, records its best trial, merges it into
    `save_to`. A user's mistake stops the search before anything trains (exit 2, one message)."""

    def __init__(self, save_to: str) -> None:
        self.save_to = Path(save_to)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if config.get("tuned") is not None:
                raise UserError(
                    f"tuned={config.tuned} cannot be combined with hparams_search: the search sets the optim "
                    "settings itself. Drop tuned=..."
                )
            search = searched_settings(config)
            _check_settings(config)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_EXIT) from None
        sweep_dir = Path(config.hydra.sweep.dir)
        study = {"variant": config.attention.name, "search": search, "n_trials": config.hydra.sweeper.n_trials}
        _write_atomically(sweep_dir / SEARCH_FILE, OmegaConf.to_yaml({**study, "save_to": str(self.save_to)}))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:  # a single run of the same settings (a resumed trial)
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if not (sweep_dir / SEARCH_FILE).is_file():
            return
        best = best_entry(sweep_dir)
        if best is not None:
            variant, entry = best
            write_entries(sweep_dir / SWEEP_TUNED_FILE, {variant: entry})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        best = best_entry(sweep_dir)  # again: with a parallel launcher the last trial to end is not the last one
        if best is None:
            print(f"tuned: no trial of {sweep_dir} finished: nothing written to {self.save_to}", file=sys.stderr)
            return
        variant, entry = best
        write_entries(sweep_dir / SWEEP_TUNED_FILE, {variant: entry})
        _check_against_optuna(sweep_dir, entry)
        try:
            merge_entry(self.save_to, variant, entry)
        except UserError as err:  # a hand-broken project file is left as it is; the study's value is kept
            print(f"error: {err}\nthe study's value is in {sweep_dir / SWEEP_TUNED_FILE}", file=sys.stderr)
            return
        values = " ".join(f"optim.{key}={entry[key]:.4g}" for key in OPTIM_KEYS if key in entry)
        print(
            f"tuned: {variant} {values} (val loss {entry['val_loss']:.4f}, best of {entry['ok_trials']} finished "
            f"trials of {entry['budget']['max_steps']} steps) -> {self.save_to}\n"
            f"train with it: attention-lab train attention={variant} tuned={self.save_to}",
            file=sys.stderr,
            flush=True,
        )


def _check_against_optuna(sweep_dir: Path, entry: dict[str, Any]) -> None:
    """Optuna's own record of its best trial must name the same lr (it minimised the val_loss we read)."""
    results = sweep_dir / "optimization_results.yaml"
    if not results.is_file():
        return
    value = (OmegaConf.load(results).get("best_params") or {}).get("optim.lr")
    if value is not None and "lr" in entry and not math.isclose(float(entry["lr"]), float(value), rel_tol=1e-9):
        log.warning("Optuna's best optim.lr=%s differs from the best finished trial's %s", value, entry["lr"])
