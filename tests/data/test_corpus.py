"""Tests of attention_lab.data.corpus: which files a path, folder or glob reads, in what order, and the errors
that name `data.path` and the fix (the corpus order is part of the token cache key, so it must be stable)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from attention_lab.data import DataConfigError, default_corpus_text, load_corpus


def test_default_corpus_is_large_and_deterministic() -> None:
    from pydoc_data.topics import topics

    text = default_corpus_text()
    assert len(text) > 400_000
    assert text == "\n\n".join(topics[k] for k in sorted(topics))
    assert load_corpus(None) == text


def test_load_corpus_file(tiny_corpus: Path, tiny_text: str) -> None:
    assert load_corpus(str(tiny_corpus)) == tiny_text
    assert load_corpus(tiny_corpus) == tiny_text  # PathLike too


def test_load_corpus_folder_is_recursive_sorted_and_filters_suffixes(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bravo\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.rst").write_text("charlie", encoding="utf-8")
    (tmp_path / "sub" / "notes").write_text("delta", encoding="utf-8")
    (tmp_path / "code.py").write_text("print('no')", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden", encoding="utf-8")
    assert load_corpus(str(tmp_path)) == "alpha\n\nbravo\n\ncharlie\n\ndelta"


def test_load_corpus_glob(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("one", encoding="utf-8")
    (tmp_path / "two.txt").write_text("two", encoding="utf-8")
    (tmp_path / "skip.md").write_text("skip", encoding="utf-8")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "three.txt").write_text("three", encoding="utf-8")
    assert load_corpus(str(tmp_path / "*.txt")) == "one\n\ntwo"
    assert load_corpus(str(tmp_path / "**" / "*.txt")) == "three\n\none\n\ntwo"


def test_load_corpus_replaces_bad_bytes_and_normalises_newlines(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9\r\nbar\r\n")
    assert load_corpus(str(path)) == "caf\ufffd\nbar\n"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: p / "nothing-*.txt", "matches no files"),
        (lambda p: p, "folder without text files"),
    ],
)
def test_bad_corpus_path_names_the_path_and_the_fix(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    bad = str(make(tmp_path))
    with pytest.raises(DataConfigError, match=message) as info:
        load_corpus(bad)
    assert f"data.path={bad}" in str(info.value)
    assert "data=default" in str(info.value)


def test_empty_corpus_raises(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(DataConfigError, match="no text"):
        load_corpus(str(tmp_path / "empty.txt"))
