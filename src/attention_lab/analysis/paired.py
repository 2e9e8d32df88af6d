"""Paired, multi-seed comparison against a baseline: is a variant better, worse, or not distinguishable?

Two seed groups trained with the same seeds share the data order and, with common random numbers, much of the
initialisation, so most seed-to-seed noise cancels in the per-seed difference d_s = metric(group, s) −
metric(baseline, s). The mean of d over the n seeds both groups finished gets a 95% confidence interval from
the t distribution with n − 1 degrees of freedom (mean ± t · sd / √n, sd the sample std of d); the verdict is
"better" or "worse" when that interval excludes 0, "not distinguishable" when it contains 0, and "n/a" below
two pairs. Comparing the groups' means with their ± std instead would keep the seed noise both groups share.

`--baseline` names an attention variant (each group is paired with that variant's group of the same other
settings: in a variants × width sweep, gqa at d_model=64 against multihead at d_model=64), a seed group's
label, or a run folder (its seed group is the one baseline of every group).
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .grouping import ABSENT, format_value, is_seed_key
from .lengths import TAIL_KEY, eval_lengths, losses_by_length
from .runs import PATTERN_KEY, VARIANT_KEY, CompareError, Group, Run

# t quantiles at 0.975 (two-sided 95%) for 1..30 degrees of freedom; beyond, the Cornish-Fisher series below
# is within 1e-6 of the exact value.
T_975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip
Z_975 = 1.959963984540054  # the normal quantile: the limit as the degrees of freedom grow
BETTER, WORSE, SAME = "better", "worse", "not distinguishable"
PAIRED_CSV = "report_paired.csv"
CSV_COLUMNS = (
    "group", "variant", "baseline", "metric", "better_if", "n", "seeds",
    "baseline_mean", "group_mean", "diff_mean", "diff_std", "ci_low", "ci_high", "verdict",
)  # fmt: skip


def t_critical(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (the 95% two-sided critical value)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be 1 or more, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z, v = Z_975, float(df)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4


# ------------------------------------------------------------------------------------------------- stats
@dataclass(frozen=True)
class PairedStat:
    """The paired comparison of one metric: means over the common seeds, the mean difference and its 95% CI."""

    seeds: tuple[Any, ...]  # the seeds both finished, in order
    baseline_mean: float | None
    group_mean: float | None
    diff_mean: float | None  # group − baseline
    diff_std: float | None  # sample std of the per-seed differences (None below two pairs)
    ci: tuple[float, float] | None
    verdict: str

    @property
    def n(self) -> int:
        return len(self.seeds)


def verdict(ci: tuple[float, float] | None, n: int, lower_is_better: bool) -> str:
    """better/worse when the CI lies on one side of 0 (strictly), not distinguishable when it holds 0."""
    if ci is None:
        return "n/a (no common seed)" if n == 0 else f"n/a ({n} seed)"
    low, high = ci
    if high < 0:
        return BETTER if lower_is_better else WORSE
    if low > 0:
        return WORSE if lower_is_better else BETTER
    return SAME


def paired_stat(group: dict[Any, float], baseline: dict[Any, float], lower_is_better: bool) -> PairedStat:
    """Pair the seed -> value maps on their common seeds; a CI from two pairs up."""
    seeds = tuple(s for s in baseline if s in group)
    if not seeds:
        return PairedStat((), None, None, None, None, None, verdict(None, 0, lower_is_better))
    diffs = [group[s] - baseline[s] for s in seeds]
    base_mean, group_mean = statistics.mean(baseline[s] for s in seeds), statistics.mean(group[s] for s in seeds)
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return PairedStat(seeds, base_mean, group_mean, mean, None, None, verdict(None, 1, lower_is_better))
    std = statistics.stdev(diffs)
    half = t_critical(len(diffs) - 1) * std / math.sqrt(len(diffs))
    ci = (mean - half, mean + half)
    return PairedStat(seeds, base_mean, group_mean, mean, std, ci, verdict(ci, len(diffs), lower_is_better))


# ----------------------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """A number compared per seed: its name in the tables, which direction is better, how to read it."""

    name: str
    lower_is_better: bool
    value: Callable[[Run], float | None]


def _tail_metric(length: int) -> Metric:
    return Metric(f"tail_loss@{length}", True, lambda run: losses_by_length(run, TAIL_KEY).get(length))


def metrics_for(runs: Sequence[Run]) -> list[Metric]:
    """val_loss always; val_acc when some run has it; the tail loss at the longest length evaluated by length."""
    metrics = [Metric("val_loss", True, lambda run: run.number("val_loss"))]
    if any(run.number("val_acc") is not None for run in runs):
        metrics.append(Metric("val_acc", False, lambda run: run.number("val_acc")))
    by_length = [losses_by_length(run, TAIL_KEY) for run in runs]
    tail = [n for n in eval_lengths(runs, TAIL_KEY) if any(losses.get(n) is not None for losses in by_length)]
    if tail:
        metrics.append(_tail_metric(tail[-1]))
    return metrics


def _seed_order(item: tuple[Any, Any]) -> tuple[bool, Any]:
    """Numbers in numeric order (2 before 10), anything else after them as text."""
    seed = item[0]
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (not number, seed if number else str(seed))


def seed_values(group: Group, metric: Metric) -> dict[Any, float]:
    """Seed -> the metric of the group's finished runs with a known seed and a finite value; a seed run twice
    counts once, with the mean of its runs (the pairs must be one per seed)."""
    found: dict[Any, list[float]] = {}
    for run in group.finished:
        seed, value = (run.config or {}).get("seed"), metric.value(run)
        if seed is not None and value is not None:
            found.setdefault(seed, []).append(value)
    return {seed: statistics.mean(values) for seed, values in sorted(found.items(), key=_seed_order)}


# ----------------------------------------------------------------------------------------------- pairing
@dataclass
class Pairing:
    """One group and its baseline group, or None with the reason there is none."""

    group: Group
    baseline: Group | None
    reason: str = ""


@dataclass
class Baseline:
    """What --baseline resolved to: a title for the report and one Pairing per group that is not a baseline."""

    title: str
    baselines: list[Group]
    pairings: list[Pairing]


def _raw(group: Group, key: str) -> Any:
    value = (group.runs[0].raw_config or {}).get(key, ABSENT)
    return (type(value) is bool, value)  # True == 1 in Python; a bool and an int setting still differ


def _same_or_absent(a: Group, b: Group, key: str) -> bool:
    return _raw(a, key) == _raw(b, key) or ABSENT in (_raw(a, key)[1], _raw(b, key)[1])


def _describe(group: Group, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={format_value(group.knobs.get(k, ABSENT))}" for k in keys) or "the same settings"


def _match(group: Group, candidates: Sequence[Group], knobs: Sequence[str], variant: str) -> Pairing:
    """The baseline-variant group with the same settings, attention.* aside (variants differ there by design).

    Several match (a sweep of attention.num_heads too): keep those that agree on the attention settings both
    variants have. Still several, or none: the group is left unpaired, with the reason."""
    other = [k for k in knobs if not is_seed_key(k) and k != VARIANT_KEY]
    plain = [k for k in other if not k.startswith("attention.") and k != PATTERN_KEY]
    found = [b for b in candidates if all(_raw(b, k) == _raw(group, k) for k in plain)]
    if len(found) > 1:
        shared = [k for k in other if k.startswith("attention.")]
        found = [
            b
            for b in found
            if all(_raw(b, k) == _raw(group, k) for k in shared if ABSENT not in (_raw(b, k)[1], _raw(group, k)[1]))
        ]
    if len(found) == 1:
        return Pairing(group, found[0])
    if not found:
        return Pairing(group, None, f"no {variant} group with {_describe(group, plain)}")
    return Pairing(group, None, f"{len(found)} {variant} groups match: " + "; ".join(b.label for b in found))


def _setting_baseline(spec: str, groups: Sequence[Group], knobs: Sequence[str]) -> Baseline:
    """`--baseline model.position=learned`: the groups with that setting are the baselines; every other group is
    paired with the one that agrees on all the other settings (its own variant, width, ...)."""
    key, _, value = spec.partition("=")
    if key == VARIANT_KEY:  # attention.name=multihead is the variant baseline, with its rules for attention.* knobs
        return resolve_baseline(value, groups, knobs)
    if is_seed_key(key):
        raise CompareError(
            f"--baseline {spec}: runs are paired over their seeds, so a seed cannot be the baseline; give a variant "
            "name, a setting that differs (e.g. model.position=learned) or a run folder."
        )
    if key not in knobs:
        raise CompareError(
            f"--baseline {spec}: {key} does not differ between the runs compared; give one of the settings that "
            f"do ({', '.join(k for k in knobs if not is_seed_key(k)) or 'none'}) or a variant name."
        )
    baselines = [g for g in groups if format_value(g.knobs.get(key, ABSENT)) == value]
    if not baselines:
        values = sorted({format_value(g.knobs.get(key, ABSENT)) for g in groups})
        raise CompareError(f"--baseline {spec}: no group has {key}={value}; its values here: {', '.join(values)}.")
    others = [k for k in knobs if not is_seed_key(k) and k != key]
    pairings = []
    for group in (g for g in groups if g not in baselines):
        # a setting only one side has (gqa's num_kv_heads against multihead) does not keep them apart
        found = [b for b in baselines if all(_same_or_absent(b, group, k) for k in others)]
        reason = "" if len(found) == 1 else f"{len(found)} groups with {spec} and {_describe(group, others)}"
        pairings.append(Pairing(group, found[0] if len(found) == 1 else None, reason))
    return Baseline(spec, baselines, sorted(pairings, key=lambda p: p.baseline is None))


def _one_baseline(groups: Sequence[Group], spec: str) -> Group | None:
    """The group a run folder or a group label names, or None."""
    labelled = [g for g in groups if g.label == spec]
    if len(labelled) == 1:
        return labelled[0]
    path = Path(spec)
    if not path.is_dir():
        return None
    target = path.resolve()
    return next((g for g in groups if any(r.path.resolve() == target for r in g.runs)), None)


def resolve_baseline(spec: str, groups: Sequence[Group], knobs: Sequence[str]) -> Baseline:
    """Pair every group with its baseline; CompareError naming --baseline when `spec` matches nothing.

    Runs without a config (settings, and so the seed, unknown) are never paired."""
    known = [g for g in groups if g.runs[0].raw_config is not None]
    variants = sorted({g.variant for g in known})
    if re.fullmatch(r"[\w.]+=\S+", spec) and not Path(spec).exists():  # KEY=VALUE (a label has spaces)
        return _setting_baseline(spec, known, knobs)
    if spec in variants:
        baselines = [g for g in known if g.variant == spec]
        pairings = [_match(g, baselines, knobs, spec) for g in known if g.variant != spec]
        return Baseline(spec, baselines, sorted(pairings, key=lambda p: p.baseline is None))  # unpaired last
    one = _one_baseline(known, spec)
    if one is None:
        where = "a run folder among the runs compared" if Path(spec).is_dir() else "a variant, group or run folder"
        labels = ", ".join(f"'{g.label}'" for g in known[:8]) + (", ..." if len(known) > 8 else "")
        raise CompareError(
            f"--baseline {spec} is not {where}: give an attention variant of the runs ({', '.join(variants)}), "
            f"a seed group's label ({labels}) or one of the run folders compared."
        )
    return Baseline(one.label, [one], [Pairing(g, one) for g in known if g is not one])


# ------------------------------------------------------------------------------------------------ writing
def paired_rows(baseline: Baseline, metrics: Sequence[Metric]) -> list[tuple[Pairing, Metric, PairedStat | None]]:
    """One row per (group, metric) the group has: an unpaired group or one without a common seed is shown in
    every metric's table (with its reason or n/a), a metric the group never recorded gets no row."""
    rows = []
    for metric in metrics:
        for pairing in baseline.pairings:
            has_metric = metric.name == "val_loss" or bool(seed_values(pairing.group, metric))
            if pairing.baseline is None:
                if has_metric:
                    rows.append((pairing, metric, None))
                continue
            stat = paired_stat(
                seed_values(pairing.group, metric), seed_values(pairing.baseline, metric), metric.lower_is_better
            )
            if stat.n or has_metric:
                rows.append((pairing, metric, stat))
    return rows


def _csv_row(pairing: Pairing, metric: Metric, stat: PairedStat | None) -> dict[str, Any]:
    row: dict[str, Any] = {"group": pairing.group.label, "variant": pairing.group.variant, "metric": metric.name}
    row["better_if"] = "lower" if metric.lower_is_better else "higher"
    if stat is None:
        return row | {"verdict": f"unpaired: {pairing.reason}"}
    assert pairing.baseline is not None
    row |= {"baseline": pairing.baseline.label, "n": stat.n, "seeds": " ".join(map(format_value, stat.seeds))}
    row |= {"baseline_mean": stat.baseline_mean, "group_mean": stat.group_mean, "diff_mean": stat.diff_mean}
    row |= {"diff_std": stat.diff_std, "verdict": stat.verdict}
    if stat.ci is not None:
        row["ci_low"], row["ci_high"] = stat.ci
    return row


def _num(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def _markdown(baseline: Baseline, rows: Sequence[tuple[Pairing, Metric, PairedStat | None]]) -> list[str]:
    intro = (
        f"Each seed group against its baseline (`--baseline {baseline.title}`: "
        + ", ".join(f"`{g.label}`" for g in baseline.baselines)
        + "), seed by seed: difference = group − baseline over the seeds both finished (n pairs); the means are "
        "over those seeds. 95% CI: mean difference ± t(0.975, n−1) · sd / √n, sd the sample std of the "
        "differences. better / worse: the CI excludes 0; not distinguishable: it contains 0; n/a: under 2 pairs."
    )
    lines = ["", f"## Paired against {baseline.title}", "", intro]
    for metric in dict.fromkeys(m for _, m, _ in rows):
        direction = "lower" if metric.lower_is_better else "higher"
        lines += ["", f"### {metric.name} ({direction} is better)", ""]
        header = "| group | baseline | n | baseline mean | group mean | difference | 95% CI | verdict |"
        lines += [header, "|" + "---|" * 8]
        for pairing, _, stat in (r for r in rows if r[1] is metric):
            if stat is None:
                lines.append(f"| {pairing.group.label} | — | 0 | — | — | — | — | unpaired: {pairing.reason} |")
                continue
            assert pairing.baseline is not None
            ci = "—" if stat.ci is None else f"[{stat.ci[0]:+.4f}, {stat.ci[1]:+.4f}]"
            cells = [pairing.group.label, pairing.baseline.label, str(stat.n), _num(stat.baseline_mean)]
            cells += [_num(stat.group_mean), _num(stat.diff_mean, "+.4f"), ci, stat.verdict]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _insert_section(report_md: Path, lines: list[str]) -> None:
    """Right after the run and seed-group tables (before the first later section), so it is read with them."""
    text = report_md.read_text()
    section = "\n".join(lines) + "\n"
    at = text.find("\n## ", text.find("\n## Seed groups") + 1)  # searched from 0 when there are no seed groups
    if at < 0:
        report_md.write_text(text.rstrip("\n") + "\n" + section)
    else:
        report_md.write_text(text[:at].rstrip("\n") + "\n" + section + text[at:])


def write_paired(baseline: Baseline, runs: Sequence[Run], report_md: Path, out: Path) -> dict[str, Path]:
    """report_paired.csv (raw numbers, one row per group and metric) and the "Paired against" section of
    report.md."""
    rows = paired_rows(baseline, metrics_for(runs))
    path = out / PAIRED_CSV
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in (_csv_row(*r) for r in rows):
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    _insert_section(report_md, _markdown(baseline, rows))
    return {PAIRED_CSV: path}
