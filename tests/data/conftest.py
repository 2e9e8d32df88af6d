"""Fixtures shared by the data tests: a tiny repetitive corpus, as text and as a file.

Tiny on purpose (1800 characters, 28 distinct): the char tokenizer, the cache and the datamodule are exercised
end to end in milliseconds on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_TINY_TEXT = "the quick brown fox jumps over the lazy dog. " * 40  # 1800 characters, 28 distinct


@pytest.fixture
def tiny_text() -> str:
    return _TINY_TEXT


@pytest.fixture
def tiny_corpus(tmp_path: Path, tiny_text: str) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(tiny_text, encoding="utf-8")
    return path
