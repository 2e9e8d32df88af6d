"""Length generalisation numbers of a run: val loss at each evaluation length and loss by token position.

Training with `eval.lengths` adds to metrics.json `val_loss_by_length` ({"256": 1.97, "512": null}: null when a
length does not apply, e.g. learned positions past the training context), `eval_not_applicable` (why),
`eval_tokens` (tokens evaluated per length) and `loss_by_position` (the mean loss per bucket of positions at the
longest length). Older runs have none of these: every function here then returns nothing, so the report looks
as it did before. Tables and plots only format what is computed here; the numbers are pooled over a seed
group's finished runs like the other group statistics.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .runs import Group, Run

LENGTH_KEY = "val_loss_by_length"
TAIL_KEY = "val_loss_tail_by_length"  # the same, over each window's last context_length positions only
REASONS_KEY = "eval_not_applicable"
TOKENS_KEY = "eval_tokens"
POSITION_KEY = "loss_by_position"
CONTEXT_KEY = "model.context_length"
SPEC = ".3f"  # length effects are large (learned vs rope past the context): 3 decimals keep the table narrow


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int_keys(raw: Any) -> dict[int, Any]:
    """{"256": x} -> {256: x}, sorted; keys that are not lengths are dropped (a hand-edited file must not crash)."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, value in raw.items():
        try:
            out[int(key)] = value
        except (TypeError, ValueError):
            continue
    return dict(sorted(out.items()))


def losses_by_length(run: Run, key: str = LENGTH_KEY) -> dict[int, float | None]:
    """Length -> val loss, None where not applicable (null). A non-finite loss is left out: it was evaluated,
    so it is not "n/a", but it is no number either, and shows as missing. `key`: TAIL_KEY for the tail losses."""
    out: dict[int, float | None] = {}
    for length, value in _int_keys(run.metrics.get(key)).items():
        if value is None or _finite(value) is not None:
            out[length] = _finite(value)
    return out


def eval_lengths(runs: Sequence[Run], key: str = LENGTH_KEY) -> list[int]:
    """Every evaluation length any run has, ascending; empty when no run was evaluated by length."""
    return sorted({length for run in runs for length in losses_by_length(run, key)})


def training_context(runs: Sequence[Run]) -> int | None:
    """model.context_length when every run has a config and they all agree; None otherwise (unknown or mixed)."""
    values = {(run.config or {}).get(CONTEXT_KEY) for run in runs}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class LengthStat:
    """Loss at one length over a group's runs: mean, sample std (None below two values), n values pooled.

    not_applicable: no run had a number, and at least one said null (n/a, not merely missing)."""

    mean: float | None
    std: float | None
    n: int
    not_applicable: bool = False

    def text(self, n_expected: int) -> str:
        """ "1.934 ± 0.012", "1.934" (one value), "n/a", "—" (missing); "(n=2)" when fewer runs than the group."""
        if self.mean is None:
            return "n/a" if self.not_applicable else "—"
        text = format(self.mean, SPEC) + ("" if self.std is None else f" ± {format(self.std, SPEC)}")
        return text + (f" (n={self.n})" if self.n < n_expected else "")


def length_stat(runs: Sequence[Run], length: int, key: str = LENGTH_KEY) -> LengthStat:
    """The loss at `length` pooled over `runs` (pass a group's finished runs)."""
    found = [by[length] for by in (losses_by_length(run, key) for run in runs) if length in by]
    values = [v for v in found if v is not None]
    if not values:
        return LengthStat(None, None, 0, not_applicable=bool(found))
    std = statistics.stdev(values) if len(values) > 1 else None
    return LengthStat(statistics.mean(values), std, len(values))


def evaluated(group: Group) -> list[Run]:
    """The group's finished runs that were evaluated by length: the ones its length numbers pool."""
    return [run for run in group.finished if losses_by_length(run)]


# --------------------------------------------------------------------------------------------------- tables
def column(length: int) -> str:
    return f"val_loss@{length}"


def csv_columns(lengths: Sequence[int], grouped: bool) -> list[str]:
    """`val_loss@256` per length; report_grouped.csv adds `val_loss@256_std` after each (n is its own column)."""
    if not grouped:
        return [column(length) for length in lengths]
    return [name for length in lengths for name in (column(length), f"{column(length)}_std")]


def run_cells(run: Run, lengths: Sequence[int]) -> dict[str, float | None]:
    """report.csv cells of one run: the loss, or None (an empty cell) where not applicable or missing."""
    by_length = losses_by_length(run)
    return {column(length): by_length.get(length) for length in lengths}


def group_cells(group: Group, lengths: Sequence[int]) -> dict[str, float | None]:
    """report_grouped.csv cells of one group: mean and std over its finished runs."""
    cells: dict[str, float | None] = {}
    for length in lengths:
        stat = length_stat(group.finished, length)
        cells[column(length)], cells[f"{column(length)}_std"] = stat.mean, stat.std
    return cells


def markdown_rows(
    groups: Sequence[Group], lengths: Sequence[int], key: str = LENGTH_KEY
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the "Loss by evaluation length" table: one row per group evaluated by length.

    Groups rather than runs: a lone run is a group of one, and a seed group's spread is what says whether two
    position schemes really differ at a length. The training context's column is marked, since that is where
    learned positions stop and the others start to extrapolate.
    """
    context = training_context([run for group in groups for run in evaluated(group)])
    header = ["group", "n", *(f"@{n}" + (" (train)" if n == context else "") for n in lengths)]
    rows = []
    for group in groups:
        runs = evaluated(group)
        if runs:
            rows.append([group.label, str(len(runs)), *(length_stat(runs, n, key).text(len(runs)) for n in lengths)])
    return header, rows


def not_applicable_reasons(runs: Sequence[Run]) -> list[str]:
    """One line per distinct reason from eval_not_applicable, with the lengths it was given for."""
    by_reason: dict[str, set[int]] = {}
    for run in runs:
        for length, reason in _int_keys(run.metrics.get(REASONS_KEY)).items():
            by_reason.setdefault(str(reason), set()).add(length)
    return [f"n/a at {', '.join(map(str, sorted(ns)))}: {reason}" for reason, ns in by_reason.items()]


def tokens_note(runs: Sequence[Run]) -> str:
    """How many tokens each length was evaluated on, when every run reporting it agrees; "" otherwise."""
    seen: dict[int, set[Any]] = {}
    for run in runs:
        for length, tokens in _int_keys(run.metrics.get(TOKENS_KEY)).items():
            seen.setdefault(length, set()).add(tokens)
    if not seen or any(len(v) != 1 for v in seen.values()):
        return ""
    tokens = {length: values.pop() for length, values in seen.items()}
    if not all(isinstance(t, int) for t in tokens.values()):
        return ""
    if len(set(tokens.values())) == 1:
        return f"Each length is evaluated on {next(iter(tokens.values())):,} tokens."
    return "Tokens evaluated: " + ", ".join(f"@{n} {t:,}" for n, t in tokens.items()) + "."


# ----------------------------------------------------------------------------------------- position curves
@dataclass(frozen=True)
class PositionCurve:
    """Mean loss per bucket of token positions at `length`; loss None where a bucket had no number."""

    length: int
    bucket_size: int
    loss: tuple[float | None, ...]

    @property
    def centres(self) -> list[float]:
        return [(i + 0.5) * self.bucket_size for i in range(len(self.loss))]


def position_curve(run: Run) -> PositionCurve | None:
    """The run's loss_by_position, or None when it has none (older runs, null) or it is malformed."""
    raw = run.metrics.get(POSITION_KEY)
    if not isinstance(raw, dict) or not isinstance(raw.get("loss"), list) or not raw["loss"]:
        return None
    length, bucket = raw.get("length"), raw.get("bucket_size")
    if not (isinstance(length, int) and isinstance(bucket, int) and bucket > 0):
        return None
    return PositionCurve(length, bucket, tuple(_finite(v) for v in raw["loss"]))


def group_position_curve(runs: Sequence[Run]) -> tuple[PositionCurve, list[float | None], int] | None:
    """(mean curve, std per bucket or None, n runs) over the runs whose curve has the first one's shape.

    Runs of one seed group share their eval settings, so the shapes agree; one that does not is left out
    rather than averaged bucket by bucket with different positions.
    """
    curves = [c for c in map(position_curve, runs) if c is not None]
    if not curves:
        return None
    shape = (curves[0].length, curves[0].bucket_size, len(curves[0].loss))
    curves = [c for c in curves if (c.length, c.bucket_size, len(c.loss)) == shape]
    means: list[float | None] = []
    stds: list[float | None] = []
    for i in range(shape[2]):
        values = [v for v in (c.loss[i] for c in curves) if v is not None]
        means.append(statistics.mean(values) if values else None)
        stds.append(statistics.stdev(values) if len(values) > 1 else None)
    return PositionCurve(shape[0], shape[1], tuple(means)), stds, len(curves)
