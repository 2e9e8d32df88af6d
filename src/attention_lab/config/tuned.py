"""The file of optimizer settings tuned per attention variant (`tuned=<file>`): its format and its checks.

Here, beside the other settings' checks, because `validate` reads it before anything trains; the search that
writes it and the code that applies it live in training/tuning.py.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from . import ConfigError, check_value
from .schema import OptimSchema

OPTIM_KEYS = tuple(f.name for f in fields(OptimSchema))
# An entry's other keys: what the value was tuned on and with what budget (not applied to a run).
RECORD_KEYS = ("val_loss", "trials", "ok_trials", "budget", "tuned_on", "search", "sweep", "best_run")


def retune_command(variant: str) -> str:
    return f"attention-lab train hparams_search=lr attention={variant}"


def read_tuned(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The file's entries {variant: {lr: ..., val_loss: ..., ...}}, every value checked; a ConfigError naming
    `tuned=<path>` and the fix otherwise."""
    setting = f"tuned={path}"
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"{setting} does not exist: tune first ({retune_command('<variant>')} writes outputs/tuned/lr.yaml), "
            "point tuned at that file, or drop tuned to train at the configured optim.lr."
        )
    try:
        entries = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{setting} is not readable YAML ({exc}): fix the file or tune again.") from None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise ConfigError(
            f"{setting} must map each variant to its settings (e.g. `gqa: {{lr: 0.003}}`), as "
            f"{retune_command('<variant>')} writes it: fix the file or tune again."
        )
    for variant, entry in entries.items():
        _check_entry(setting, str(variant), entry)
    return {str(variant): entry for variant, entry in entries.items()}


def _check_entry(setting: str, variant: str, entry: dict[str, Any]) -> None:
    for key in entry:
        if key in OPTIM_KEYS or key in RECORD_KEYS:
            continue
        close = difflib.get_close_matches(str(key), OPTIM_KEYS + RECORD_KEYS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"{setting}: {variant}.{key} is not an entry key: {hint}the optim settings it may set are "
            f"{', '.join(OPTIM_KEYS)}; fix the file or tune again ({retune_command(variant)})."
        )
    if not any(key in OPTIM_KEYS for key in entry):
        raise ConfigError(
            f"{setting}: {variant} sets no optim setting (e.g. lr): fix the file or tune again "
            f"({retune_command(variant)})."
        )
    rules = {f.name: f.metadata["rule"] for f in fields(OptimSchema)}
    for key in OPTIM_KEYS:
        if key in entry:
            try:
                check_value(f"{variant}.{key}", entry[key], rules[key])
            except ConfigError as err:
                raise ConfigError(f"{setting}: {err} Fix the file or tune again ({retune_command(variant)}).") from None
