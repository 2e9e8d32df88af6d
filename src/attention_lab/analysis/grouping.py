"""What tells runs apart: the settings that differ, the order, the legend labels and the seed groups.

Only the keys whose values are not the same in every run are shown ("knobs"), so a sweep's table shows what
the sweep varied. Runs whose configs differ only by their seed are summarised as one group (mean ± sample
std, with n), since a single seed says little about a variant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .runs import PATTERN_KEY, STATUS_ORDER, VARIANT_KEY, Group, Run


class _Absent:
    """Marks a key a run's config does not have (gqa has num_kv_heads, multihead has not): a value of its own."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()


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
    """Display value of a knob in one run: ABSENT when its config lacks the key, "?" when it has no config."""
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
        if key not in (VARIANT_KEY, PATTERN_KEY) and len(values) > 1:  # the variant label names both
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


def _group_key(run: Run, other: Sequence[str]) -> Any:
    """Equal for runs that differ only by seed; a run of unknown settings is never pooled with anything."""
    if run.raw_config is None:
        return ("?", str(run.path))
    return (run.variant, tuple(_comparable(run.raw_config.get(k, ABSENT)) for k in other))


def group_by_seed(runs: Sequence[Run], knobs: Sequence[str]) -> list[Group]:
    """Runs with equal non-seed knobs form one group; sorted like runs (best mean val loss first)."""
    other = [k for k in knobs if not is_seed_key(k)]
    named = [k for k in label_knobs(runs, knobs) if not is_seed_key(k)]
    groups: dict[Any, Group] = {}
    for run in runs:
        key = _group_key(run, other)
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
