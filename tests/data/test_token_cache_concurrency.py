"""Jobs that start together on one cold token cache (a parallel sweep, DDP ranks): exactly one tokenizes, the
others wait and read its file, and every job can read its ids to the end of the run.

Before the cache folder was locked, each job tokenized, renamed its own file into place and remembered that
file's identity; the job whose file was replaced then refused to read (seen as a parallel sweep job recorded
as `invalid` in CI).
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pytest

from attention_lab.data import CharTokenizer, load_tokens, tokenize_corpus
from attention_lab.data.corpus import CorpusSource

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks the test process (Linux)")

JOBS = 3


def _job(text: str, tokenizer: CharTokenizer, cache: Path, start: object, done: object, results: object) -> None:
    """One job: start with the others, take the ids, wait until every job has them, then read them all."""
    try:
        start.wait(timeout=60)
        ids = tokenize_corpus(CorpusSource.from_text(text), tokenizer, cache)
        done.wait(timeout=60)
        results.put(("ok", np.asarray(ids.open()).astype(np.int64).tolist()))
    except BaseException as err:  # reported to the test, which names it
        results.put(("error", f"{type(err).__name__}: {err}"))


def test_concurrent_jobs_on_a_cold_cache_tokenize_once_and_all_read_their_ids(tmp_path: Path) -> None:
    text = "the quick brown fox jumps over the lazy dog. " * 20_000  # ~0.9 M characters: tokenizing takes a while
    tokenizer = CharTokenizer.from_text(text)
    context = multiprocessing.get_context("fork")
    encodes = context.Value("i", 0)
    encode = tokenizer.encode_array

    def counting(piece: str) -> np.ndarray:
        with encodes.get_lock():
            encodes.value += 1
        return encode(piece)

    tokenizer.encode_array = counting  # type: ignore[method-assign]  # inherited by the forked jobs
    start, done, results = context.Barrier(JOBS), context.Barrier(JOBS), context.Queue()
    jobs = [
        context.Process(target=_job, args=(text, tokenizer, tmp_path / "cache", start, done, results))
        for _ in range(JOBS)
    ]
    for job in jobs:
        job.start()
    outcomes = [results.get(timeout=120) for _ in jobs]
    for job in jobs:
        job.join(timeout=30)

    errors = [detail for status, detail in outcomes if status != "ok"]
    assert not errors, errors
    expected = encode(text).astype(np.int64).tolist()
    assert all(ids == expected for _, ids in outcomes)
    assert encodes.value == 1, f"{encodes.value} jobs tokenized the same cold cache"


def test_a_filesystem_without_locks_costs_a_warning_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(fd: int, operation: int) -> None:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    text = "no locks here. " * 50
    tokenizer = CharTokenizer.from_text(text)
    with caplog.at_level(logging.WARNING, logger="attention_lab.data.token_cache"):
        ids = load_tokens(text, tokenizer, tmp_path)
        again = load_tokens(text, tokenizer, tmp_path)  # the cache written without a lock is read back
    assert ids.tolist() == again.tolist() == tokenizer.encode(text)
    assert "could not lock the token cache folder" in caplog.text and "No locks available" in caplog.text
