"""Paired, multi-seed comparison against a baseline (`compare --baseline`): t quantiles, CIs and verdicts on
hand-made numbers, pairing by seed and by the other settings, and what report.md and report_paired.csv say."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from attention_lab.analysis.grouping import differing_knobs, group_by_seed
from attention_lab.analysis.paired import (
    Metric,
    metrics_for,
    paired_rows,
    paired_stat,
    resolve_baseline,
    seed_values,
    t_critical,
)
from attention_lab.analysis.runs import FAILED, OK, CompareError, Group, Run, discover_runs, load_run
from attention_lab.cli.compare import main

from .fake_runs import GQA, MULTIHEAD, make_run, read_csv
from .test_cli_compare import assert_one_error_line

MQA = {"name": "mqa", "num_heads": 4, "dropout": 0.1}
VARIANTS = {"multihead": MULTIHEAD, "gqa": GQA, "mqa": MQA}
VAL_LOSS = Metric("val_loss", True, lambda run: run.number("val_loss"))


def paired_run(
    root: Path, variant: str, seed: int, loss: float, *, status: str = OK, acc: float | None = None, **settings: Any
) -> Path:
    """A finished run (no event file: the pairing reads metrics.json only) with model/data settings changed, e.g.
    model={"d_model": 64}, data={"num_pairs": 8}; val_acc added when given."""
    name = "_".join([variant, *(f"{k}{v}" for s in settings.values() for k, v in s.items()), f"s{seed}"])
    run_dir = make_run(root, name, VARIANTS[variant], seed=seed, curve=((149, loss),), events=False, status=status)
    config_path = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_path)
    for group, values in settings.items():
        for key, value in values.items():
            OmegaConf.update(config, f"{group}.{key}", value, force_add=True)
    OmegaConf.save(config, config_path)
    if acc is not None:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        (run_dir / "metrics.json").write_text(json.dumps(metrics | {"val_acc": acc}))
    return run_dir


def load_groups(root: Path) -> tuple[list[Group], list[str]]:
    runs = [load_run(d) for d in discover_runs([root])]
    knobs = differing_knobs(runs)
    return group_by_seed(runs, knobs), knobs


# ----------------------------------------------------------------------------------------------- t quantiles
@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (40, 2.021), (120, 1.980), (10**9, 1.960)],
)
def test_t_critical_has_the_textbook_values(df: int, expected: float) -> None:
    assert t_critical(df) == pytest.approx(expected, abs=5e-4)


def _t_cdf(t: float, df: int) -> float:
    """P(T <= t) by Simpson's rule on the t density: an independent check of the table and the series."""
    x = np.linspace(0.0, t, 20001)
    density = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = density * (1 + x * x / df) ** (-(df + 1) / 2)
    return 0.5 + (x[1] - x[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())


@pytest.mark.parametrize("df", [*range(1, 34), 50, 100])
def test_t_critical_is_the_0975_quantile_in_the_table_and_beyond(df: int) -> None:
    assert _t_cdf(t_critical(df), df) == pytest.approx(0.975, abs=1e-7)


def test_t_critical_needs_one_degree_of_freedom() -> None:
    with pytest.raises(ValueError, match="1 or more"):
        t_critical(0)


# -------------------------------------------------------------------------------------- CI and verdicts
BASE = {0: 2.0, 1: 2.1, 2: 2.2}  # seed-to-seed spread 0.1: larger than the effects below


def test_a_consistent_small_gain_is_better_although_the_group_means_overlap() -> None:
    """d = -0.10, -0.10, -0.08: mean -0.09333, sd 0.011547, CI = mean ± 4.302653 · sd / √3 = mean ± 0.028684."""
    stat = paired_stat({0: 1.9, 1: 2.0, 2: 2.12}, BASE, lower_is_better=True)
    assert stat.seeds == (0, 1, 2) and stat.n == 3
    assert (stat.baseline_mean, stat.group_mean) == pytest.approx((2.1, 2.006667), abs=1e-6)
    assert stat.diff_mean == pytest.approx(-0.093333, abs=1e-6)
    assert stat.diff_std == pytest.approx(0.011547, abs=1e-6)
    assert stat.ci == pytest.approx((-0.122018, -0.064649), abs=1e-6)
    assert stat.verdict == "better"


def test_a_consistent_loss_is_worse_and_direction_follows_the_metric() -> None:
    worse = paired_stat({0: 2.1, 1: 2.2, 2: 2.28}, BASE, lower_is_better=True)
    assert worse.ci == pytest.approx((0.064649, 0.122018), abs=1e-6)
    assert worse.verdict == "worse"
    # the same numbers as an accuracy (higher is better) are better
    assert paired_stat({0: 2.1, 1: 2.2, 2: 2.28}, BASE, lower_is_better=False).verdict == "better"


def test_differences_of_both_signs_are_not_distinguishable() -> None:
    """d = +0.10, -0.10, +0.05: mean 0.016667, sd 0.104083, CI half-width 0.258557: it holds 0."""
    stat = paired_stat({0: 2.1, 1: 2.0, 2: 2.25}, BASE, lower_is_better=True)
    assert stat.diff_mean == pytest.approx(0.016667, abs=1e-6)
    assert stat.ci == pytest.approx((-0.241891, 0.275224), abs=1e-6)
    assert stat.verdict == "not distinguishable"


def test_one_common_seed_has_a_difference_but_no_interval() -> None:
    stat = paired_stat({0: 2.1, 7: 1.0}, BASE, lower_is_better=True)
    assert stat.seeds == (0,) and stat.diff_mean == pytest.approx(0.1)
    assert stat.ci is None and stat.diff_std is None
    assert stat.verdict == "n/a (1 seed)"
    assert paired_stat({7: 1.0}, BASE, lower_is_better=True).verdict == "n/a (no common seed)"


# ---------------------------------------------------------------------------------------------- pairing
def _run(seed: Any, loss: float, status: str = OK) -> Run:
    return Run(path=Path(f"r{seed}"), status=status, metrics={"val_loss": loss}, config={"seed": seed})


def test_only_seeds_both_groups_finished_are_paired() -> None:
    baseline = Group("multihead", {}, [_run(s, 2.0 + s / 10) for s in (0, 1, 2, 3)])
    # seed 2 failed, seed 4 has no baseline, seed 10 sorts after 3 (numbers in numeric order)
    runs = [_run(0, 1.9), _run(1, 2.0), _run(2, 0.1, FAILED), _run(4, 1.0), _run(10, 1.0), _run(3, 2.2)]
    values = seed_values(Group("gqa", {}, runs), VAL_LOSS)
    assert list(values) == [0, 1, 3, 4, 10]
    stat = paired_stat(values, seed_values(baseline, VAL_LOSS), lower_is_better=True)
    assert stat.seeds == (0, 1, 3)
    assert stat.diff_mean == pytest.approx((-0.1 - 0.1 - 0.1) / 3)


def test_a_seed_run_twice_counts_once_with_its_mean() -> None:
    values = seed_values(Group("gqa", {}, [_run(0, 2.0), _run(0, 2.2), _run(1, 3.0)]), VAL_LOSS)
    assert values == pytest.approx({0: 2.1, 1: 3.0})


def test_each_group_is_paired_with_the_baseline_of_the_same_width_and_pairs(tmp_path: Path) -> None:
    """variants x model.d_model x data.num_pairs: gqa@64,8 against multihead@64,8, never another width; a
    width the baseline was not trained at stays unpaired, with the reason."""
    for width in (32, 64):
        for pairs in (4, 8):
            for seed in (0, 1):
                for variant, loss in (("multihead", 2.0), ("gqa", 1.9)):
                    cell = width / 100 + pairs / 1000  # every cell has its own level: a wrong pairing shows
                    paired_run(
                        tmp_path, variant, seed, loss + cell, model={"d_model": width}, data={"num_pairs": pairs}
                    )
    paired_run(tmp_path, "gqa", 0, 1.5, model={"d_model": 128}, data={"num_pairs": 4})
    groups, knobs = load_groups(tmp_path)
    baseline = resolve_baseline("multihead", groups, knobs)
    assert len(baseline.baselines) == 4 and len(baseline.pairings) == 5
    for pairing in baseline.pairings:
        group = pairing.group
        if group.knobs["model.d_model"] == 128:
            assert pairing.baseline is None
            assert pairing.reason == "no multihead group with model.d_model=128, data.num_pairs=4"
            continue
        assert pairing.baseline is not None
        for key in ("model.d_model", "data.num_pairs"):
            assert pairing.baseline.knobs[key] == group.knobs[key]
        stat = paired_stat(seed_values(group, VAL_LOSS), seed_values(pairing.baseline, VAL_LOSS), True)
        assert stat.diff_mean == pytest.approx(-0.1)


def test_shared_attention_settings_break_a_tie_between_baseline_groups(tmp_path: Path) -> None:
    """attention.num_heads swept too: gqa with 8 heads against multihead with 8; num_kv_heads, which only gqa
    has, does not count."""
    for heads in (4, 8):
        for variant in ("multihead", "gqa"):
            paired_run(tmp_path, variant, 0, 2.0 + heads / 100, attention={"num_heads": heads})
    groups, knobs = load_groups(tmp_path)
    (pairing_4, pairing_8) = sorted(resolve_baseline("multihead", groups, knobs).pairings, key=lambda p: p.group.label)
    assert pairing_4.baseline is not None and pairing_4.baseline.knobs["attention.num_heads"] == 4
    assert pairing_8.baseline is not None and pairing_8.baseline.knobs["attention.num_heads"] == 8


def test_a_setting_baseline_pairs_each_group_with_the_same_variant_at_that_setting(tmp_path: Path) -> None:
    """`--baseline model.position=learned` over variants x schemes: multihead+rope against multihead+learned,
    gqa+rope against gqa+learned; a group whose variant has no learned run stays unpaired."""
    for variant, level in (("multihead", 2.0), ("gqa", 2.5)):
        for seed in (0, 1, 2):
            paired_run(tmp_path, variant, seed, level, model={"position": "learned"})
            paired_run(tmp_path, variant, seed, level - 0.3 + seed / 100, model={"position": "rope"})
    paired_run(tmp_path, "mqa", 0, 1.0, model={"position": "rope"})
    groups, knobs = load_groups(tmp_path)
    baseline = resolve_baseline("model.position=learned", groups, knobs)
    assert sorted(g.label for g in baseline.baselines) == ["gqa (position=learned)", "multihead (position=learned)"]
    paired = {p.group.label: p for p in baseline.pairings}
    for variant in ("multihead", "gqa"):
        pairing = paired[f"{variant} (position=rope)"]
        assert pairing.baseline is not None and pairing.baseline.variant == variant
        stat = paired_stat(seed_values(pairing.group, VAL_LOSS), seed_values(pairing.baseline, VAL_LOSS), True)
        assert stat.diff_mean == pytest.approx(-0.29) and stat.n == 3
    assert paired["mqa (position=rope)"].baseline is None
    with pytest.raises(CompareError, match=r"no group has model.position=alibi; its values here: learned, rope"):
        resolve_baseline("model.position=alibi", groups, knobs)
    with pytest.raises(CompareError, match=r"model.d_model does not differ between the runs compared"):
        resolve_baseline("model.d_model=64", groups, knobs)


def test_a_group_label_or_a_run_folder_is_the_one_baseline_of_all(tmp_path: Path) -> None:
    gqa_run = paired_run(tmp_path, "gqa", 0, 1.9, model={"d_model": 32})
    paired_run(tmp_path, "gqa", 1, 2.0, model={"d_model": 32})
    paired_run(tmp_path, "gqa", 0, 2.0, model={"d_model": 64})
    paired_run(tmp_path, "multihead", 0, 2.0, model={"d_model": 32})
    paired_run(tmp_path, "mqa", 0, 2.0, model={"d_model": 32})
    groups, knobs = load_groups(tmp_path)
    for spec in (str(gqa_run), "gqa (d_model=32)"):
        baseline = resolve_baseline(spec, groups, knobs)
        assert [g.label for g in baseline.baselines] == ["gqa (d_model=32)"]
        labels = sorted(p.group.label for p in baseline.pairings)
        assert labels == ["gqa (d_model=64)", "mqa (d_model=32)", "multihead (d_model=32)"]
    with pytest.raises(CompareError, match=r"--baseline sdpa is not a variant.*\(gqa, mqa, multihead\)"):
        resolve_baseline("sdpa", groups, knobs)


# --------------------------------------------------------------------------------------- report and CLI
@pytest.fixture(scope="module")
def paired_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 seeds per variant, compared once against multihead: gqa a little better every seed, mqa mixed; mqa's
    seed 2 failed (2 pairs); val_acc higher for gqa."""
    root = tmp_path_factory.mktemp("paired") / "sweep"
    for seed, base in enumerate((2.0, 2.1, 2.2)):
        paired_run(root, "multihead", seed, base, acc=0.50 + seed / 100)
        paired_run(root, "gqa", seed, base + (-0.1, -0.1, -0.08)[seed], acc=0.55 + seed / 100)
        paired_run(root, "mqa", seed, base + (0.1, -0.05, 0.0)[seed], status=FAILED if seed == 2 else OK)
    assert main([str(root), "--baseline", "multihead"]) == 0
    return root


def test_report_md_has_the_paired_section_after_the_seed_groups(paired_sweep: Path) -> None:
    md = (paired_sweep / "report.md").read_text()
    assert md.index("## Seed groups") < md.index("## Paired against multihead") < md.index("## Notes")
    section = md.split("## Paired against multihead", 1)[1].split("\n## ", 1)[0]
    loss, acc = section.split("### val_loss (lower is better)")[1].split("### val_acc (higher is better)")
    table = [line for line in loss.splitlines() if line.startswith("|")]
    assert table[0] == "| group | baseline | n | baseline mean | group mean | difference | 95% CI | verdict |"
    assert table[2:] == [
        "| gqa | multihead | 3 | 2.1000 | 2.0067 | -0.0933 | [-0.1220, -0.0646] | better |",
        "| mqa | multihead | 2 | 2.0500 | 2.0750 | +0.0250 | [-0.9280, +0.9780] | not distinguishable |",
    ]  # mqa: d = +0.1, -0.05 (seed 2 failed): sd 0.106066, CI = 0.025 ± 12.706205 · 0.075 = 0.025 ± 0.952965
    acc_rows = [line for line in acc.splitlines() if line.startswith("| gqa")]
    assert acc_rows == ["| gqa | multihead | 3 | 0.5100 | 0.5600 | +0.0500 | [+0.0500, +0.0500] | better |"]
    assert "| mqa" not in acc  # mqa runs have no val_acc: no row


def test_report_paired_csv_has_the_raw_numbers(paired_sweep: Path) -> None:
    header, rows = read_csv(paired_sweep / "report_paired.csv")
    assert header[:5] == ["group", "variant", "baseline", "metric", "better_if"]
    by = {(r["variant"], r["metric"]): r for r in rows}
    assert set(by) == {("gqa", "val_loss"), ("mqa", "val_loss"), ("gqa", "val_acc")}
    gqa = by["gqa", "val_loss"]
    assert (gqa["baseline"], gqa["n"], gqa["seeds"], gqa["better_if"]) == ("multihead", "3", "0 1 2", "lower")
    numbers = [float(gqa[k]) for k in ("baseline_mean", "group_mean", "diff_mean", "diff_std", "ci_low", "ci_high")]
    assert numbers == pytest.approx([2.1, 2.006667, -0.093333, 0.011547, -0.122018, -0.064649], abs=1e-6)
    assert gqa["verdict"] == "better"
    assert by["mqa", "val_loss"]["seeds"] == "0 1" and by["gqa", "val_acc"]["better_if"] == "higher"


def test_an_unknown_baseline_is_one_error_line_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paired_run(tmp_path, "gqa", 0, 1.9)
    paired_run(tmp_path, "multihead", 0, 2.0)
    assert main([str(tmp_path), "--baseline", "mha"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--baseline mha", "gqa, multihead", "run folder")
    assert not (tmp_path / "report.md").exists()
    # a folder that is not among the runs compared says so
    assert main([str(tmp_path / "gqa_s0"), "--baseline", str(tmp_path / "multihead_s0")]) == 2
    assert_one_error_line(capsys.readouterr().err, "is not a run folder among the runs compared")


def test_a_run_folder_as_baseline_pairs_every_group_with_its_seed_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in (0, 1):
        paired_run(tmp_path, "multihead", seed, 2.0 + seed / 10)
        paired_run(tmp_path, "gqa", seed, 1.9 + seed / 10 + seed / 100)
    assert main([str(tmp_path), "--baseline", str(tmp_path / "gqa_s1"), "--out", str(tmp_path / "cmp")]) == 0
    assert str(tmp_path / "cmp" / "report_paired.csv") in capsys.readouterr().out.splitlines()
    _, rows = read_csv(tmp_path / "cmp" / "report_paired.csv")
    assert [(r["group"], r["baseline"], r["n"]) for r in rows] == [("multihead", "gqa", "2")]
    # d = 0.10, 0.09: mean 0.095, sd 0.007071, CI ± 12.706205 · 0.005 = ± 0.063531: worse
    assert float(rows[0]["ci_low"]) == pytest.approx(0.031469, abs=1e-6) and rows[0]["verdict"] == "worse"
    assert "## Paired against gqa\n" in (tmp_path / "cmp" / "report.md").read_text()


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_the_tail_loss_at_the_longest_length_is_paired_too(tmp_path: Path) -> None:
    """Runs evaluated by length: the loss of the last context_length positions at the longest length (64)."""
    for seed in (0, 1, 2):
        by_length = {16: 2.0 + seed / 10, 64: 2.5 + seed / 10}
        make_run(tmp_path, f"mh_{seed}", MULTIHEAD, seed=seed, position="rope", by_length=by_length, events=False)
        by_length = {16: 2.0 + seed / 10, 64: 2.3 + seed / 10 + seed / 100}
        make_run(tmp_path, f"gqa_{seed}", GQA, seed=seed, position="rope", by_length=by_length, events=False)
    assert main([str(tmp_path), "--baseline", "multihead"]) == 0
    _, rows = read_csv(tmp_path / "report_paired.csv")
    tail = [r for r in rows if r["metric"] == "tail_loss@64"]
    assert len(tail) == 1 and tail[0]["better_if"] == "lower" and tail[0]["verdict"] == "better"
    assert float(tail[0]["diff_mean"]) == pytest.approx(-0.19, abs=1e-9)  # -0.20, -0.19, -0.18
    assert "### tail_loss@64 (lower is better)" in (tmp_path / "report.md").read_text()


def test_attention_name_as_a_setting_is_the_variant_baseline_and_a_seed_is_refused(tmp_path: Path) -> None:
    """Review: `--baseline attention.name=multihead` left gqa unpaired (multihead has no num_kv_heads), while
    `--baseline multihead` paired it; and `--baseline seed=0` said no group had seed 0."""
    for seed in (0, 1, 2):
        paired_run(tmp_path, "multihead", seed, 2.0)
        paired_run(tmp_path, "gqa", seed, 1.9 + seed / 100)
    groups, knobs = load_groups(tmp_path)
    by_setting = resolve_baseline("attention.name=multihead", groups, knobs)
    assert [p.baseline is not None for p in by_setting.pairings] == [True]
    assert by_setting.pairings[0].baseline.variant == "multihead"
    with pytest.raises(CompareError, match="paired over their seeds, so a seed cannot be the baseline"):
        resolve_baseline("seed=0", groups, knobs)


def test_a_group_without_common_seeds_has_a_row_in_every_metric_it_recorded(tmp_path: Path) -> None:
    """Review: a group with no common seed vanished from the val_acc table (only val_loss said n/a)."""
    paired_run(tmp_path, "multihead", 0, 2.0, acc=0.5)
    paired_run(tmp_path, "multihead", 1, 2.0, acc=0.5)
    paired_run(tmp_path, "gqa", 2, 1.9, acc=0.6)
    groups, knobs = load_groups(tmp_path)
    baseline = resolve_baseline("multihead", groups, knobs)
    runs = [run for group in groups for run in group.runs]
    rows = [
        (pairing.group.variant, metric.name, stat) for pairing, metric, stat in paired_rows(baseline, metrics_for(runs))
    ]
    assert [(variant, name) for variant, name, _ in rows] == [("gqa", "val_loss"), ("gqa", "val_acc")]
    assert all(stat is not None and stat.n == 0 for _, _, stat in rows)


def test_a_layer_pattern_is_a_variant_paired_with_the_uniform_baseline(tmp_path: Path) -> None:
    """model.layers=sliding_window*3+multihead (attention group multihead) against uniform multihead: labelled by
    its pattern, paired seed by seed on the other settings, and model.layers is not a column of its own."""
    hybrid = "sliding_window*3+multihead"
    for seed in (0, 1, 2):
        paired_run(tmp_path, "multihead", seed, 2.0 + seed / 100)
        run_dir = paired_run(tmp_path / "hybrid", "multihead", seed, 1.9 + seed / 100, model={"layers": hybrid})
        metrics = json.loads((run_dir / "metrics.json").read_text())
        (run_dir / "metrics.json").write_text(json.dumps(metrics | {"attention": hybrid}))
    groups, knobs = load_groups(tmp_path)
    assert sorted(g.label for g in groups) == ["multihead", hybrid]
    (pairing,) = resolve_baseline("multihead", groups, knobs).pairings
    assert pairing.group.variant == hybrid and pairing.baseline is not None
    stat = paired_stat(seed_values(pairing.group, VAL_LOSS), seed_values(pairing.baseline, VAL_LOSS), True)
    assert stat.diff_mean == pytest.approx(-0.1) and stat.n == 3
