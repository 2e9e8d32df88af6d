"""Run folders that are never shared: named by time and overrides, created exclusively.

Two runs started in the same second (or two sweeps, or parallel launcher jobs) would otherwise get the same
`<time>_<overrides>` folder and mix their checkpoints, events and metrics. The `unique_dir` resolver creates
the folder itself with an exclusive mkdir and, when the name is taken, tries `-2`, `-3`, ... Hydra caches a
resolver's value per config and copies that cache to every job of a sweep, so one run or sweep resolves to
one folder, and a later `mkdir(exist_ok=True)` by Hydra finds it in place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from omegaconf import OmegaConf

MAX_SUFFIX = 120  # folder names are capped at 255 bytes; the full overrides are in .hydra/overrides.yaml
MAX_TRIES = 1000


def run_suffix(overrides: str) -> str:
    """ "_attention=gqa,..." after the timestamp in run folder names; shortened (with a hash) when too long."""
    if not overrides:
        return ""
    overrides = overrides.replace("/", "_")
    if len(overrides) > MAX_SUFFIX:
        digest = hashlib.sha1(overrides.encode()).hexdigest()[:8]
        overrides = f"{overrides[: MAX_SUFFIX - 9]}-{digest}"
    return f"_{overrides}"


def unique_dir(base: str) -> str:
    """Create `base` (or `base-2`, `base-3`, ...) exclusively and return the path that was created."""
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, MAX_TRIES + 1):
        candidate = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"{MAX_TRIES} folders named {base}[-N] exist already: clean up {Path(base).parent}")


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("run_suffix", run_suffix, replace=True)
    # use_cache: resolved once per run or sweep (Hydra copies the cache into each job's config)
    OmegaConf.register_new_resolver("unique_dir", unique_dir, replace=True, use_cache=True)
