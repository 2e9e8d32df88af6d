"""Compare finished runs: one table (markdown + CSV) and a few plots from run and sweep folders.

    python scripts/compare.py outputs/sweeps/<sweep>                       # writes into the sweep folder
    python scripts/compare.py outputs/runs/<run>                           # one run: into its folder
    python scripts/compare.py outputs/runs/<a> outputs/sweeps/<b> --out cmp --layer 1  # any mix of runs and sweeps

A run folder is any folder holding `metrics.json` or `.hydra/`; any other folder given is searched for run
folders (a sweep, or `outputs/` as a whole). Everything is read from files a run already wrote, so comparing
never needs the model code, a GPU or a checkpoint:
- `metrics.json`: final numbers and status (training writes a `failed` one when a job raises);
- `.hydra/config.yaml`: the settings, flattened to `group.key` names; the knobs shown are only the keys whose
  values are not the same in every run, so a sweep's table shows what the sweep varied (locations and
  instrumentation: paths.*, hydra.*, logger.*, callbacks.*, output/cache dirs, ckpt_path, are never knobs);
- the TensorBoard event file: the `val/loss` curve and the last attention-map image of one layer.

A run that misses one of these still gets its row, with a note saying what is missing: a broken or killed job
must not hide the others. Status is `ok` (metrics.json says so; a missing event file only keeps it out of the
plots), `incomplete` (no metrics.json: numbers, if any, from the event file so far) or `failed` (with the
error). Runs whose configs differ only by their seed are also summarised as one group (mean ± sample std,
with n). Output goes to --out, by default into the one folder given (run or sweep) or, for several, into the
deepest folder holding them all: report.md, report.csv, report_grouped.csv, val_loss_vs_tokens.png,
final_val_loss.png, throughput.png and attention_maps.png.

Runs trained with `eval.lengths` (metrics.json `val_loss_by_length`, `loss_by_position`) add: a "Loss by
evaluation length" table in report.md (one row per seed group, one column per length, "mean ± std" or "n/a"
where a length does not apply, e.g. learned positions past the training context), `val_loss@<length>` columns
in report.csv and report_grouped.csv (with `val_loss@<length>_std` there), val_loss_vs_length.png (log2 length
axis, dashed line at the training context) and loss_by_position.png; with many lines both get one panel per
attention variant. Older runs without these fields are reported as before.

--baseline pairs every seed group with a baseline, seed by seed, and says whether it is better, worse or not
distinguishable (report.md "Paired against ...", report_paired.csv):

    python scripts/compare.py outputs/sweeps/<sweep> --baseline multihead              # a variant
    python scripts/compare.py outputs/sweeps/<sweep> --baseline outputs/sweeps/<sweep>/0  # a run's seed group
    python scripts/compare.py outputs/sweeps/<sweep> --baseline model.position=learned  # a setting's value

A variant name pairs each group with that variant's group of the same other settings (attention.* aside: in a
variants x model.d_model sweep, gqa at d_model=64 against multihead at d_model=64); a run folder (or a seed
group's label as report.md writes it) makes that run's seed group the one baseline of all; KEY=VALUE (a setting
that differs between the runs) pairs each group with the group at that value and every other setting equal
(multihead+rope against multihead+learned). Per seed both
finished, difference = group - baseline; over the n seeds: mean difference, 95% confidence interval
(t distribution, n-1 degrees of freedom) and a verdict: better or worse when the interval excludes 0 (lower is
better for losses, higher for val_acc), not distinguishable when it holds 0, n/a below 2 common seeds.
Compared: val_loss, val_acc when runs have it, and the tail loss at the longest evaluation length. Train every
variant with the same 3 or more seeds for the pairing to mean something.

Exit status 2, with one `error:` line on stderr, when a path is not a folder, no run is found, --out is a file,
--layer is negative or --baseline matches no variant, group or run folder compared.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..analysis import CompareError, Report, compare_runs
from .common import run_command


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
    p.add_argument(
        "--baseline",
        default=None,
        metavar="VARIANT|RUN|KEY=VALUE",
        help="pair every seed group with this attention variant's group of the same other settings, or with the "
        "seed group of this run folder (or group label), or with the group at KEY=VALUE and the same other settings: "
        "mean difference, 95%% CI and verdict per group",
    )
    return p.parse_args(argv)


def print_summary(report: Report) -> None:
    """Counts and knobs on one line, what went wrong per run on stderr, then every file written."""
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items())
    print(f"{len(report.runs)} runs ({counts}); knobs that differ: {', '.join(report.knobs) or 'none'}")
    for run in report.unfinished:
        print(f"  {run.status}: {run.name}: {'; '.join(run.notes)}", file=sys.stderr)
    for job in report.not_run:
        print(f"  never ran: {job}", file=sys.stderr)
    for reason, count in report.unsupported.items():
        print(f"  not trained ({count} job{'s' if count > 1 else ''}, by design): {reason}")
    for path in report.written:
        print(path)


def compare(argv: Sequence[str] | None = None) -> int:
    """Parse, compare, print; a user's mistake raises CompareError (a UserError)."""
    args = parse_args(argv)
    if args.layer < 0:
        raise CompareError(f"--layer {args.layer}: layers count from 0; give --layer 0 or more.")
    print_summary(compare_runs(args.paths, args.out, args.layer, args.baseline))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `compare` command: exit status 0, or 2 for a bad path or setting (one `error:` line on stderr)."""
    return run_command(compare, argv)
