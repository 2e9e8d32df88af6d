"""Finding run folders and loading them: curves in tokens seen, killed runs, each run counted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_lab.analysis.runs import FAILED, INCOMPLETE, OK, discover_runs, flatten_config, load_run, read_config
from attention_lab.cli.compare import main
from attention_lab.errors import UserError

from .fake_runs import CONTEXT, GQA, GQA_BAD, KNOWN_COLUMNS, MULTIHEAD, TOKENS_PER_STEP, make_run, read_csv


def test_curves_are_in_tokens_seen(tmp_path: Path) -> None:
    """Lightning logs a validation inside fit() at global_step - 1: step 49 is 50 steps of tokens."""
    run = load_run(make_run(tmp_path, "run", GQA, curve=((49, 3.0), (99, 2.5), (149, 2.2))))
    expected = [(50 * TOKENS_PER_STEP, 3.0), (100 * TOKENS_PER_STEP, 2.5), (150 * TOKENS_PER_STEP, 2.2)]
    assert [x for x, _ in run.curve] == [x for x, _ in expected]
    assert [y for _, y in run.curve] == pytest.approx([y for _, y in expected])  # events store float32
    step, image = run.attention_map
    assert step == 150 and image.shape == (20, 36, 3)


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_a_killed_run_shows_as_incomplete_with_numbers_from_its_events(tmp_path: Path) -> None:
    make_run(tmp_path, "0_attention=multihead", MULTIHEAD)
    make_run(tmp_path, "1_attention=gqa", GQA, curve=((49, 2.0), (99, 1.9)), metrics=False)
    make_run(tmp_path, "2_attention=gqa", GQA_BAD, status=FAILED)
    assert main([str(tmp_path)]) == 0
    _, rows = read_csv(tmp_path / "report.csv")
    assert [r["status"] for r in rows] == [OK, INCOMPLETE, FAILED]  # a lower partial loss does not rank first
    assert float(rows[1]["val_loss"]) == pytest.approx(1.9) and rows[1]["global_step"] == "100"
    assert "no metrics.json" in rows[1]["note"]


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
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


def test_a_missing_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a folder"):
        discover_runs([tmp_path / "missing"])


def test_flatten_config_drops_locations_instrumentation_and_private_keys() -> None:
    config = {
        "attention": {"name": "gqa", "num_kv_heads": 2},
        "data": {"_target_": "x.Y", "batch_size": 4, "cache_dir": ".cache"},
        "trainer": {"default_root_dir": "/tmp/run", "devices": [0, 1]},
        "paths": {"work_dir": "/tmp"},
        "hydra": {"run": {"dir": "/tmp"}},
        "logger": {"name": "tb"},
        "callbacks": {"ckpt": {"every": 1}},
        "ckpt_path": None,
        "optim": {"betas": [0.9, [0.95]]},
        "seed": 1,
    }
    assert flatten_config(config) == {
        "attention.name": "gqa",
        "attention.num_kv_heads": 2,
        "data.batch_size": 4,
        "trainer.devices": (0, 1),  # lists frozen: config values are compared as set members
        "optim.betas": (0.9, (0.95,)),
        "seed": 1,
    }
    assert flatten_config(["not", "a", "mapping"]) == {}


def test_read_config_compares_raw_values_and_shows_resolved_ones(tmp_path: Path) -> None:
    raw, resolved = read_config(make_run(tmp_path, "run", GQA))
    assert raw["data.context_length"] == "${model.context_length}"
    assert resolved["data.context_length"] == CONTEXT
    assert resolved["data.seed"] == 1337
    assert raw["optim.betas"] == (0.9, 0.95)
    assert not [k for k in raw if k.startswith("paths.") or k.endswith(("_target_", "cache_dir", "default_root_dir"))]
    assert read_config(tmp_path / "nowhere") is None
