"""The corpus benchmark's parts that can be checked in milliseconds: the generated corpus is deterministic and
each smaller corpus is a prefix of a bigger one, and the peak-memory probe sees memory a child really touched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import attention_lab.bench.corpus as corpus_bench
from attention_lab.cli.bench import build_parser
from attention_lab.data import load_corpus


def test_generated_corpus_is_deterministic_and_sizes_share_a_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus_bench, "FILE_BYTES", 10_000)
    big = corpus_bench.generate_corpus(tmp_path / "big", 0.03)
    small = corpus_bench.generate_corpus(tmp_path / "small", 0.01)
    again = corpus_bench.generate_corpus(tmp_path / "again", 0.03)
    assert len(big) == 3 and len(small) == 1
    assert [p.read_bytes() for p in big] == [p.read_bytes() for p in again]
    assert small[0].read_bytes() == big[0].read_bytes()
    assert all(9_990 <= p.stat().st_size <= 10_000 for p in big)  # a character is never cut in half
    assert load_corpus(tmp_path / "big").count("\n\n") > 3
    other_seed = corpus_bench.generate_corpus(tmp_path / "seed1", 0.01, seed=1)
    assert other_seed[0].read_bytes() != small[0].read_bytes()


def test_peak_rss_sees_what_the_child_touched() -> None:
    idle = corpus_bench.peak_rss_of([sys.executable, "-c", "pass"], env={})
    touched = corpus_bench.peak_rss_of([sys.executable, "-c", "b = bytearray(300 * 2**20)"], env={})
    assert idle["returncode"] == touched["returncode"] == 0
    assert touched["peak_rss_mib"] >= 300 > idle["peak_rss_mib"]
    failed = corpus_bench.peak_rss_of([sys.executable, "-c", "raise SystemExit(3)"], env={})
    assert failed["returncode"] == 3


def test_the_command_line_has_the_corpus_benchmark() -> None:
    args = build_parser().parse_args(["corpus", "--sizes", "5", "10", "--workers", "1", "--out", "x"])
    assert args.sizes == [5, 10] and args.workers == [1] and args.out == Path("x") and args.steps == 30
