"""Sweep job folder names that say what differs: `3_attention=gqa,seed=1`, not `3_attention.dropout=0.0,...`.

Hydra names a job by all its overrides, sorted, so the variant hides behind settings every job of the sweep
shares (a preset's `experiment=...`, a fixed `data.tokenizer=char`) and long names get cut. Here a job is named by
the overrides whose values differ between the sweep's jobs, the variant first (`attention`, `model.layers`, then
`attention.*`), the rest sorted. The jobs are read back from the sweep's `multirun.yaml` (Hydra writes it before
any job starts, on a cluster too), so every job, in any launcher's worker, computes the same names, and a resumed
sweep finds its folders again. When the jobs cannot be rebuilt (Optuna picks them as it goes), every override
names the job, as before.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .run_dir import run_suffix
from .sweep import jobs_of

VARIANT_KEYS = ("attention", "model.layers")  # what a job is, before how it is set


def _parsed(overrides: list[str], excluded: set[str]) -> list[tuple[str, str]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [(o.key_or_group, str(o.input_line)) for o in parsed if o.key_or_group not in excluded]


@functools.lru_cache(maxsize=16)
def _varying_keys(multirun_yaml: str, mtime: float, excluded: frozenset[str]) -> frozenset[str] | None:
    """Keys whose override differs between the sweep's jobs (or is missing from some); None: jobs unknown."""
    try:
        jobs = jobs_of(OmegaConf.load(multirun_yaml))
    except (OSError, ValueError):
        return None
    if not jobs:
        return None
    lines = [dict(_parsed(job, set(excluded))) for job in jobs]
    keys = set().union(*lines)
    return frozenset(k for k in keys if len({line.get(k) for line in lines}) > 1)


def _order(key: str) -> tuple[int, str]:
    if key in VARIANT_KEYS:
        return (VARIANT_KEYS.index(key), key)
    return (2 if key.startswith("attention.") else 3, key)


def job_suffix(task: Any, sweep_dir: Any, excluded: Any) -> str:
    """`_attention=gqa,seed=1`: the part of a sweep job's folder name after its number (see the module)."""
    exclude = frozenset(
        str(k) for k in (OmegaConf.to_container(excluded) if OmegaConf.is_config(excluded) else excluded)
    )
    overrides = [str(o) for o in (OmegaConf.to_container(task) if OmegaConf.is_config(task) else task)]
    own = _parsed(overrides, set(exclude))
    path = Path(str(sweep_dir)) / "multirun.yaml"
    varying = _varying_keys(str(path), path.stat().st_mtime, exclude) if path.is_file() else None
    kept = [(k, line) for k, line in own if varying is None or k in varying] or own
    return run_suffix(",".join(line for _, line in sorted(kept, key=lambda item: _order(item[0]))))
