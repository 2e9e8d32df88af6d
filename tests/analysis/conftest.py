"""Fixtures shared by the analysis tests (fixtures only: helpers live in fake_runs and are imported)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_lab.analysis.runs import FAILED
from attention_lab.cli.compare import main

from .fake_runs import GQA, GQA_BAD, MULTIHEAD, make_run


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
