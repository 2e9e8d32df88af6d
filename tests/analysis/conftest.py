"""Fixtures shared by the analysis tests (fixtures only: helpers live in fake_runs and are imported)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_lab.analysis.runs import FAILED
from attention_lab.cli.compare import main

from .fake_runs import GQA, GQA_BAD, LEARNED_BY_LENGTH, MULTIHEAD, ROPE_BY_LENGTH, ROPE_BY_POSITION, make_run


@pytest.fixture(scope="package")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-job sweep, compared once: multihead (2.3), gqa (2.2, better) and a failed gqa."""
    root = tmp_path_factory.mktemp("sweeps") / "2026-01-01_00-00-00"
    make_run(root, "0_attention=multihead", MULTIHEAD, tokens_per_sec=1000.0, image_value=10)
    make_run(root, "1_attention=gqa", GQA, curve=((49, 2.9), (99, 2.5), (149, 2.2)), tokens_per_sec=1200.0)
    make_run(root, "2_attention=gqa,attention.num_kv_heads=3", GQA_BAD, status=FAILED)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    assert main([str(root)]) == 0
    return root


@pytest.fixture(scope="package")
def length_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs evaluated by length, compared once: gqa with rope and with learned positions, 3 seeds each (learned:
    n/a past the training context, no per-position curve), and one older multihead run without length fields."""
    root = tmp_path_factory.mktemp("lengths") / "sweep"
    for seed in range(3):
        by_length = {n: losses[seed] for n, losses in ROPE_BY_LENGTH.items()}
        rope = {"position": "rope", "by_length": by_length, "by_position": ROPE_BY_POSITION[seed]}
        make_run(root, f"rope_{seed}", GQA, seed=seed, events=False, **rope)
        by_length = {n: None if losses is None else losses[seed] for n, losses in LEARNED_BY_LENGTH.items()}
        make_run(root, f"learned_{seed}", GQA, seed=seed, position="learned", by_length=by_length, events=False)
    make_run(root, "old", MULTIHEAD, curve=((49, 3.0), (149, 2.4)), events=False)
    assert main([str(root)]) == 0
    return root
