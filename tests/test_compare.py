"""scripts/compare.py on fake run folders: the files a run writes, made by hand, so no training is needed.

Each fake run has what train.py and Hydra leave behind: metrics.json, .hydra/config.yaml (with the
interpolations and per-run paths a real one has) and a TensorBoard event file with `val/loss` scalars and an
`attention/layer_0` image. Failed, incomplete and event-less runs are made by leaving files out.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from attention_lab.compare import (
    FAILED,
    INCOMPLETE,
    OK,
    RUN_COLUMNS_AFTER,
    RUN_COLUMNS_BEFORE,
    differing_knobs,
    discover_runs,
    group_by_seed,
    load_run,
    main,
    plot_val_loss_vs_tokens,
    run_labels,
)

BATCH, CONTEXT = 4, 16
TOKENS_PER_STEP = BATCH * CONTEXT
PLOTS = ("val_loss_vs_tokens.png", "final_val_loss.png", "throughput.png", "attention_maps.png")


def make_config(run_dir: Path, attention: dict[str, Any], seed: int) -> dict[str, Any]:
    """A config.yaml like Hydra's: interpolations left in, per-run output paths that must not count as knobs."""
    return {
        "attention": attention,
        "model": {"context_length": CONTEXT, "d_model": 32, "n_layers": 2, "emb_dropout": 0.1, "tie_weights": True},
        "data": {
            "_target_": "attention_lab.data.TextDataModule",
            "path": None,
            "tokenizer": "char",
            "context_length": "${model.context_length}",
            "batch_size": BATCH,
            "cache_dir": "${paths.cache_dir}",
            "seed": "${seed}",
        },
        "trainer": {"max_steps": 150, "devices": 1, "accumulate_grad_batches": 1, "default_root_dir": str(run_dir)},
        "paths": {
            "output_dir": "${hydra:runtime.output_dir}",
            "cache_dir": ".cache",
            "log_dir": str(run_dir.parent),
            "work_dir": str(run_dir),
        },
        "seed": seed,
        "optim": {"lr": 3e-3, "betas": [0.9, 0.95]},
    }


def make_run(
    root: Path,
    name: str,
    attention: dict[str, Any],
    *,
    seed: int = 1337,
    curve: tuple[tuple[int, float], ...] = ((49, 3.0), (99, 2.6), (149, 2.3)),
    tokens_per_sec: float = 1000.0,
    status: str = OK,
    events: bool = True,
    metrics: bool = True,
    image_value: int = 0,
) -> Path:
    """One run folder; the final val loss is the curve's last point, as in a real run."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(make_config(run_dir, attention, seed)), run_dir / ".hydra" / "config.yaml")
    overrides = [f"attention={attention['name']}", f"seed={seed}"]
    if metrics and status == FAILED:
        payload: dict[str, Any] = {
            "status": FAILED,
            "attention": attention["name"],
            "overrides": overrides,
            "error": "ConfigError: attention.num_kv_heads=3 must divide attention.num_heads=4",
        }
        (run_dir / "error.txt").write_text("Traceback ...\n")
    else:
        steps = curve[-1][0] + 1
        final, best = curve[-1][1], min(v for _, v in curve)
        payload = {
            "status": OK,
            "attention": attention["name"],
            "overrides": overrides,
            "val_loss": final,
            "val_ppl": math.exp(final),
            "best_val_loss": best,
            "best_val_ppl": math.exp(best),
            "train_loss": final + 0.1,
            "global_step": steps,
            "tokens_seen": steps * TOKENS_PER_STEP,
            "tokens_per_sec": tokens_per_sec,
            "params": {"total": 5000, "attention": 1000, "non_embedding": 4000},
            "kv_cache_bytes_per_token": 512,
            "peak_memory_mb": 300.0,
            "wall_time_sec": 12.5,
            "device": "cpu",
            "output_dir": str(run_dir),
        }
    if metrics:
        (run_dir / "metrics.json").write_text(json.dumps(payload))
    if events and status != FAILED:
        writer = SummaryWriter(log_dir=str(run_dir))
        for step, value in curve:
            writer.add_scalar("val/loss", value, step)
        image = np.full((20, 36, 3), image_value, dtype=np.uint8)
        image[:, : 18 + image_value % 18] = 200  # not a flat image, so a decoding mistake would show
        writer.add_image("attention/layer_0", image, curve[-1][0] + 1, dataformats="HWC")
        writer.close()
    return run_dir


MULTIHEAD = {"name": "multihead", "num_heads": 4, "dropout": 0.1}
GQA = {"name": "gqa", "num_heads": 4, "dropout": 0.1, "num_kv_heads": 2}
GQA_BAD = {"name": "gqa", "num_heads": 4, "dropout": 0.1, "num_kv_heads": 3}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-job sweep, compared once: multihead (2.3), gqa (2.2, better) and a failed gqa."""
    root = tmp_path_factory.mktemp("sweeps") / "2026-01-01_00-00-00"
    make_run(root, "0_attention=multihead", MULTIHEAD, tokens_per_sec=1000.0, image_value=10)
    make_run(root, "1_attention=gqa", GQA, curve=((49, 2.9), (99, 2.5), (149, 2.2)), tokens_per_sec=1200.0)
    make_run(root, "2_attention=gqa,attention.num_kv_heads=3", GQA_BAD, status=FAILED)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    assert main([str(root)]) == 0
    return root


KNOWN_COLUMNS = {*RUN_COLUMNS_BEFORE, *RUN_COLUMNS_AFTER}  # everything that is not a knob column


def test_rows_sorted_by_val_loss_with_the_failed_run_last(sweep: Path) -> None:
    _, rows = read_csv(sweep / "report.csv")
    assert [r["run"] for r in rows] == [
        "1_attention=gqa",
        "0_attention=multihead",
        "2_attention=gqa,attention.num_kv_heads=3",
    ]
    assert [r["status"] for r in rows] == [OK, OK, FAILED]
    assert [float(r["val_loss"]) for r in rows[:2]] == [2.2, 2.3]
    assert rows[2]["val_loss"] == ""
    assert "must divide" in rows[2]["note"]
    assert rows[0]["params_total"] == "5000" and rows[0]["kv_cache_bytes_per_token"] == "512"


def test_knob_columns_are_exactly_the_knobs_that_differ(sweep: Path) -> None:
    header, rows = read_csv(sweep / "report.csv")
    assert [c for c in header if c not in KNOWN_COLUMNS] == ["attention.name", "attention.num_kv_heads"]
    assert "model.d_model" not in header and "seed" not in header
    assert [r["attention.num_kv_heads"] for r in rows] == ["2", "", "3"]  # multihead has no such knob
    assert [r["attention.name"] for r in rows] == ["gqa", "multihead", "gqa"]


def test_plots_are_valid_images(sweep: Path) -> None:
    for name in PLOTS:
        image = mpimg.imread(sweep / name)
        assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 300, name
        assert image.std() > 0.01, f"{name} is blank"


def test_report_md_has_every_run_and_the_error(sweep: Path) -> None:
    md = (sweep / "report.md").read_text()
    for name in ("1_attention=gqa", "0_attention=multihead", "2_attention=gqa,attention.num_kv_heads=3"):
        assert name in md
    assert "must divide attention.num_heads=4" in md
    assert "| 2.2000 |" in md
    for name in PLOTS:
        assert f"]({name})" in md


def test_runs_that_differ_only_by_seed_form_one_group(tmp_path: Path) -> None:
    losses, speeds = [2.10, 2.20, 2.45], [1000.0, 1100.0, 1300.0]
    for i, (loss, speed) in enumerate(zip(losses, speeds, strict=True)):
        make_run(tmp_path, f"{i}_seed={i}", GQA, seed=i, curve=((49, 3.0), (99, loss)), tokens_per_sec=speed)
    assert main([str(tmp_path)]) == 0

    header, rows = read_csv(tmp_path / "report.csv")
    assert [c for c in header if c not in KNOWN_COLUMNS] == ["seed"]
    assert len(rows) == 3
    _, groups = read_csv(tmp_path / "report_grouped.csv")
    assert len(groups) == 1
    group = groups[0]
    assert group["n"] == "3" and group["seeds"] == "0 1 2"
    assert float(group["val_loss_mean"]) == pytest.approx(statistics.mean(losses))
    assert float(group["val_loss_std"]) == pytest.approx(statistics.stdev(losses))
    assert float(group["tokens_per_sec_mean"]) == pytest.approx(statistics.mean(speeds))
    assert float(group["tokens_per_sec_std"]) == pytest.approx(statistics.stdev(speeds))
    assert "## Seed groups" in (tmp_path / "report.md").read_text()


def test_seed_groups_keep_different_configs_apart(tmp_path: Path) -> None:
    for i in range(2):
        make_run(tmp_path, f"gqa_{i}", GQA, seed=i)
        make_run(tmp_path, f"mha_{i}", MULTIHEAD, seed=i)
    runs = [load_run(d) for d in discover_runs([tmp_path])]
    groups = group_by_seed(runs, differing_knobs(runs))
    assert sorted((g.variant, len(g.runs)) for g in groups) == [("gqa", 2), ("multihead", 2)]


def test_a_single_run_folder_reports_into_itself(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "2026-01-01_00-00-00_attention=gqa", GQA)
    assert main([str(run_dir)]) == 0
    header, rows = read_csv(run_dir / "report.csv")
    assert len(rows) == 1 and rows[0]["variant"] == "gqa"
    assert not set(header) - KNOWN_COLUMNS  # one run: nothing differs
    assert (run_dir / "attention_maps.png").is_file()


def test_no_runs_is_exit_code_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "report.csv").exists()


def test_a_run_without_event_file_is_in_the_table_but_not_in_the_plots(tmp_path: Path) -> None:
    make_run(tmp_path, "0_attention=multihead", MULTIHEAD)
    make_run(tmp_path, "1_attention=gqa", GQA, curve=((49, 2.9), (149, 2.2)), events=False)
    assert main([str(tmp_path), "--out", str(tmp_path / "cmp")]) == 0
    _, rows = read_csv(tmp_path / "cmp" / "report.csv")
    assert [(r["variant"], r["status"]) for r in rows] == [("gqa", OK), ("multihead", OK)]
    assert "no TensorBoard event file" in rows[0]["note"]

    runs = [load_run(d) for d in discover_runs([tmp_path])]
    drawn = plot_val_loss_vs_tokens(runs, run_labels(runs, differing_knobs(runs)), tmp_path / "curves.png")
    assert drawn == ["multihead"]
    for name in PLOTS:
        assert (tmp_path / "cmp" / name).is_file()


def test_a_killed_run_shows_as_incomplete_with_numbers_from_its_events(tmp_path: Path) -> None:
    make_run(tmp_path, "0_attention=multihead", MULTIHEAD)
    make_run(tmp_path, "1_attention=gqa", GQA, curve=((49, 2.0), (99, 1.9)), metrics=False)
    make_run(tmp_path, "2_attention=gqa", GQA_BAD, status=FAILED)
    assert main([str(tmp_path)]) == 0
    _, rows = read_csv(tmp_path / "report.csv")
    assert [r["status"] for r in rows] == [OK, INCOMPLETE, FAILED]  # a lower partial loss does not rank first
    assert float(rows[1]["val_loss"]) == pytest.approx(1.9) and rows[1]["global_step"] == "100"
    assert "no metrics.json" in rows[1]["note"]


def test_a_mix_of_runs_and_sweeps_counts_each_run_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweeps" / "s1"
    make_run(sweep, "0_attention=multihead", MULTIHEAD)
    make_run(sweep, "1_attention=gqa", GQA)
    single = make_run(tmp_path / "runs", "2026-01-01_attention=gqa", {**GQA, "dropout": 0.0})
    assert main([str(sweep), str(sweep / "1_attention=gqa"), str(single)]) == 0
    header, rows = read_csv(tmp_path / "report.csv")  # default: the folder holding all inputs
    assert len(rows) == 3
    assert [c for c in header if c not in KNOWN_COLUMNS] == [
        "attention.name",
        "attention.dropout",
        "attention.num_kv_heads",
    ]


def test_curves_are_in_tokens_seen(tmp_path: Path) -> None:
    """Lightning logs a validation inside fit() at global_step - 1: step 49 is 50 steps of tokens."""
    run = load_run(make_run(tmp_path, "run", GQA, curve=((49, 3.0), (99, 2.5), (149, 2.2))))
    expected = [(50 * TOKENS_PER_STEP, 3.0), (100 * TOKENS_PER_STEP, 2.5), (150 * TOKENS_PER_STEP, 2.2)]
    assert [x for x, _ in run.curve] == [x for x, _ in expected]
    assert [y for _, y in run.curve] == pytest.approx([y for _, y in expected])  # events store float32
    step, image = run.attention_map
    assert step == 150 and image.shape == (20, 36, 3)


def test_differing_knobs_compare_raw_values_and_tell_bools_from_ints(tmp_path: Path) -> None:
    make_run(tmp_path, "a", {"name": "causal", "dropout": 0.1, "qkv_bias": True})
    make_run(tmp_path, "b", {"name": "causal", "dropout": 0.1, "qkv_bias": 1})
    runs = [load_run(d) for d in discover_runs([tmp_path])]
    # paths.*, trainer.default_root_dir and the unresolvable ${hydra:...} differ per run but are not knobs
    assert differing_knobs(runs) == ["attention.qkv_bias"]
