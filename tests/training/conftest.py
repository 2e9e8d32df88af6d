"""Fixtures of the training tests: one torch thread, a tiny corpus, and a trained checkpoint shared by the
resume tests (training it once per session instead of once per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import one_torch_thread
from tests.training.helpers import CORPUS, LEAN_CALLBACKS, finished_overrides, make_cfg


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: with two on the shared 2-core machine, a step of the tiny GPT waits for a busy core
    and takes ~10x longer (measured: a 4-step run 3.9 s with two threads, 0.4 s with one)."""
    with one_torch_thread():
        yield


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained to trainer.max_steps=4 (validated at 2 and 4): its folder, with checkpoints/last.ckpt
    at step 4 and the corpus it was trained on (corpus.txt). Tests only read it."""
    from attention_lab.training.task import train

    root = tmp_path_factory.mktemp("finished")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS)
    with one_torch_thread():
        train(make_cfg(root, [*finished_overrides(corpus), *LEAN_CALLBACKS]))
    assert (root / "run" / "checkpoints" / "last.ckpt").is_file()
    return root
