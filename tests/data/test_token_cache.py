"""Tests of attention_lab.data.token_cache: ids are tokenized once per (text, tokenizer) into a flat `.bin`, and
a cache file is used only after it is verified against its sidecar.

The verification tests damage a cache in the ways that a flat file of in-range ids cannot show by itself (a
file of zeros, a short or truncated file, one changed id, ids of another width, a missing or stale sidecar) and
require that `load_tokens` returns the true ids, says in a warning which check failed, and rewrites a cache
that the next call reads without tokenizing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from attention_lab.data import CharTokenizer, GPT2Tokenizer, Tokenizer, load_tokens, token_cache_path
from attention_lab.data.token_cache import sidecar_path

LOGGER = "attention_lab.data.token_cache"


@pytest.fixture
def tok(tiny_text: str) -> CharTokenizer:
    return CharTokenizer.from_text(tiny_text)


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """The token cache's warnings so far, as one string."""
    caplog.set_level(logging.WARNING, logger=LOGGER)

    def text() -> str:
        return "\n".join(r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING)

    return text


def _count_encode(monkeypatch: pytest.MonkeyPatch, tokenizer: Tokenizer) -> list[str]:
    """Spy on `tokenizer.encode_array` (what the cache calls): the returned list grows by the text of every call."""
    calls: list[str] = []
    encode = tokenizer.encode_array

    def counting(text: str) -> np.ndarray:
        calls.append(text)
        return encode(text)

    monkeypatch.setattr(tokenizer, "encode_array", counting)
    return calls


def _read_bin(path: Path, dtype: str = "<u2") -> np.ndarray:
    return np.fromfile(path, dtype=dtype)


def _true_ids(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)  # (N,)


def _assert_cache_holds(path: Path, ids: torch.Tensor, tokenizer: Tokenizer, text: str, calls: list[str]) -> None:
    """The cache at `path` holds `ids` and the next load reads it without tokenizing."""
    assert np.array_equal(_read_bin(path).astype(np.int64), ids.numpy())
    before = len(calls)
    assert torch.equal(load_tokens(text, tokenizer, path.parent), ids)
    assert len(calls) == before, "a rewritten cache was not trusted on the next read"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, sidecar_path(path).name])


# --- caching -----------------------------------------------------------------------------------------------


def test_tokens_are_cached_once_and_reused(tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = CharTokenizer.from_text(tiny_text)
    first = load_tokens(tiny_text, tok, tmp_path)
    path = token_cache_path(tiny_text, tok, tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([path, sidecar_path(path)])
    assert path.suffix == ".bin" and path.stat().st_size == 2 * len(first)  # flat uint16: compact on disk
    assert np.array_equal(_read_bin(path), first.numpy())  # raw little-endian ids, no header

    def fail(text: str) -> list[int]:
        raise AssertionError("re-tokenized although the cache exists")

    monkeypatch.setattr(tok, "encode", fail)
    monkeypatch.setattr(tok, "encode_array", fail)
    second = load_tokens(tiny_text, tok, tmp_path)
    assert second.dtype == torch.int64 and second.ndim == 1
    assert torch.equal(first, second)
    assert tok.decode(second) == tiny_text


def test_a_good_cache_is_read_without_encoding_or_warning(
    tok: CharTokenizer, tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings: Callable[[], str]
) -> None:
    calls = _count_encode(monkeypatch, tok)
    first = load_tokens(tiny_text, tok, tmp_path)
    assert len(calls) == 1
    for _ in range(2):
        assert torch.equal(load_tokens(tiny_text, tok, tmp_path), first)
    assert len(calls) == 1
    assert warnings() == ""  # a cold cache is not a problem worth a warning


def test_sidecar_records_what_the_ids_are(tok: CharTokenizer, tiny_text: str, tmp_path: Path) -> None:
    ids = load_tokens(tiny_text, tok, tmp_path)
    meta = json.loads(sidecar_path(token_cache_path(tiny_text, tok, tmp_path)).read_text(encoding="utf-8"))
    assert meta["num_ids"] == len(ids) == len(tiny_text)
    assert meta["dtype"] == "uint16" and meta["byteorder"] == "little"
    assert meta["tokenizer"] == "char" and meta["format"] == 3
    algorithm, digest = meta["checksum"].split(":")
    assert algorithm == "blake2b" and len(digest) == 64


def test_cache_key_depends_on_text_and_tokenizer(tiny_text: str, tmp_path: Path) -> None:
    tok = CharTokenizer.from_text(tiny_text)
    other_vocab = CharTokenizer.from_text(tiny_text + "Z")
    path = token_cache_path(tiny_text, tok, tmp_path)
    assert path != token_cache_path(tiny_text + " ", tok, tmp_path)
    assert path != token_cache_path(tiny_text, other_vocab, tmp_path)
    assert path != token_cache_path(tiny_text, GPT2Tokenizer(), tmp_path)


def test_no_cache_dir_tokenizes_every_time(tok: CharTokenizer, tiny_text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _true_ids(tok, tiny_text)
    calls = _count_encode(monkeypatch, tok)
    assert torch.equal(load_tokens(tiny_text, tok, None), expected)
    assert torch.equal(load_tokens(tiny_text, tok, None), expected)
    assert len(calls) == 2


def test_gpt2_tokens_of_default_corpus_keep_endoftext_semantics(tmp_path: Path) -> None:
    tok = GPT2Tokenizer()
    tokens = load_tokens("a<|endoftext|>b", tok, tmp_path)
    assert tokens.tolist() == tok.encode("a<|endoftext|>b")
    assert 50256 in tokens.tolist()


# --- verification: damaged ids -----------------------------------------------------------------------------


def test_corrupt_cache_is_rebuilt(tiny_text: str, tmp_path: Path) -> None:
    tok = CharTokenizer.from_text(tiny_text)
    path = token_cache_path(tiny_text, tok, tmp_path)
    path.write_bytes(b"not a token file")
    tokens = load_tokens(tiny_text, tok, tmp_path)
    assert tok.decode(tokens) == tiny_text
    assert torch.equal(torch.from_numpy(_read_bin(path).astype(np.int64)), tokens)
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, sidecar_path(path).name])


def _zeros(path: Path, ids: np.ndarray) -> None:
    np.zeros_like(ids).tofile(path)


def _short(path: Path, ids: np.ndarray) -> None:
    ids[: len(ids) // 2].tofile(path)


def _cut_bytes(path: Path, ids: np.ndarray) -> None:
    path.write_bytes(path.read_bytes()[:-101])  # mid-id


def _one_id_changed(path: Path, ids: np.ndarray) -> None:
    changed = ids.copy()
    changed[7] = (int(changed[7]) + 1) % int(ids.max() + 1)
    changed.tofile(path)


def _uint32(path: Path, ids: np.ndarray) -> None:
    ids.astype("<u4").tofile(path)


def _big_endian(path: Path, ids: np.ndarray) -> None:
    ids.astype(">u2").tofile(path)


@pytest.mark.parametrize(
    ("damage", "failed_check"),
    [
        (_zeros, "checksum"),
        (_short, "but the sidecar says"),
        (_cut_bytes, "truncated"),
        (_one_id_changed, "checksum"),
        (_uint32, "but the sidecar says"),
        (_big_endian, "checksum"),
    ],
    ids=["all-zeros", "short-file", "truncated-file", "one-id-changed", "wider-ids", "big-endian"],
)
def test_damaged_ids_are_rebuilt(
    damage: Callable[[Path, np.ndarray], None],
    failed_check: str,
    tok: CharTokenizer,
    tiny_text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warnings: Callable[[], str],
) -> None:
    expected = _true_ids(tok, tiny_text)
    load_tokens(tiny_text, tok, tmp_path)  # a genuine cache and sidecar
    path = token_cache_path(tiny_text, tok, tmp_path)
    genuine = path.read_bytes()
    damage(path, _read_bin(path))
    assert path.read_bytes() != genuine

    calls = _count_encode(monkeypatch, tok)
    assert torch.equal(load_tokens(tiny_text, tok, tmp_path), expected)
    assert len(calls) == 1  # re-tokenized
    assert failed_check in warnings() and str(path) in warnings()
    _assert_cache_holds(path, expected, tok, tiny_text, calls)


@pytest.mark.parametrize("damage", [_zeros, _short], ids=["all-zeros", "short-file"])
def test_a_plausible_bin_without_sidecar_is_not_trusted(
    damage: Callable[[Path, np.ndarray], None],
    tok: CharTokenizer,
    tiny_text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warnings: Callable[[], str],
) -> None:
    """A flat file of the right dtype with in-range ids, placed at the cache path, is not enough."""
    expected = _true_ids(tok, tiny_text)
    path = token_cache_path(tiny_text, tok, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    damage(path, expected.numpy().astype(np.uint16))

    calls = _count_encode(monkeypatch, tok)
    assert torch.equal(load_tokens(tiny_text, tok, tmp_path), expected)
    assert len(calls) == 1
    assert "sidecar" in warnings() and "missing" in warnings()
    _assert_cache_holds(path, expected, tok, tiny_text, calls)


# --- verification: damaged or stale sidecar ----------------------------------------------------------------


def _edit(field: str, value: Any) -> Callable[[Path], None]:
    def edit(meta_path: Path) -> None:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta[field] = value(meta[field]) if callable(value) else value
        meta_path.write_text(json.dumps(meta), encoding="utf-8")

    return edit


@pytest.mark.parametrize(
    ("damage", "failed_check"),
    [
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_text("{", encoding="utf-8"), "unreadable"),
        (lambda p: p.write_bytes(b"\xff\xfe"), "unreadable"),
        (lambda p: p.write_text("[]", encoding="utf-8"), "not a JSON object"),
        (_edit("num_ids", lambda n: n + 1), "but the sidecar says"),
        (_edit("checksum", "blake2b:" + "0" * 64), "checksum"),
        (_edit("dtype", "uint32"), "dtype"),
        (_edit("byteorder", "big"), "byte order"),
        (_edit("num_ids", "many"), "not a count"),
        (_edit("tokenizer_sha256", "0" * 64), "tokenizer_sha256"),
        (_edit("text_sha256", "0" * 64), "text_sha256"),
        (_edit("format", 1), "format"),
    ],
    ids=[
        "missing",
        "bad-json",
        "bad-utf8",
        "not-an-object",
        "wrong-count",
        "wrong-checksum",
        "wrong-dtype",
        "wrong-byteorder",
        "count-not-a-number",
        "other-tokenizer",
        "other-text",
        "old-format",
    ],
)
def test_damaged_or_stale_sidecar_is_rebuilt(
    damage: Callable[[Path], None],
    failed_check: str,
    tok: CharTokenizer,
    tiny_text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warnings: Callable[[], str],
) -> None:
    expected = _true_ids(tok, tiny_text)
    load_tokens(tiny_text, tok, tmp_path)
    path = token_cache_path(tiny_text, tok, tmp_path)
    genuine = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    damage(sidecar_path(path))

    calls = _count_encode(monkeypatch, tok)
    assert torch.equal(load_tokens(tiny_text, tok, tmp_path), expected)
    assert len(calls) == 1
    assert failed_check in warnings()
    assert json.loads(sidecar_path(path).read_text(encoding="utf-8")) == genuine  # rewritten
    _assert_cache_holds(path, expected, tok, tiny_text, calls)


def test_cache_of_another_tokenizer_copied_over_is_rebuilt(
    tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings: Callable[[], str]
) -> None:
    """Files renamed to another key (same dtype, ids in range) are caught by the full hashes in the sidecar."""
    tok = CharTokenizer.from_text(tiny_text)
    other = CharTokenizer.from_text(tiny_text + "Z")  # "Z" sorts before the lower-case letters: their ids shift
    load_tokens(tiny_text, tok, tmp_path)
    src, dst = token_cache_path(tiny_text, tok, tmp_path), token_cache_path(tiny_text, other, tmp_path)
    shutil.copy(src, dst)
    shutil.copy(sidecar_path(src), sidecar_path(dst))
    expected = _true_ids(other, tiny_text)
    assert not torch.equal(expected, _true_ids(tok, tiny_text))

    calls = _count_encode(monkeypatch, other)
    assert torch.equal(load_tokens(tiny_text, other, tmp_path), expected)
    assert len(calls) == 1
    assert "tokenizer_sha256" in warnings()


# --- writing -----------------------------------------------------------------------------------------------


def test_an_unwritable_cache_only_warns_and_leaves_no_temporary_files(
    tok: CharTokenizer, tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings: Callable[[], str]
) -> None:
    def fail(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(os, "replace", fail)
    assert torch.equal(load_tokens(tiny_text, tok, tmp_path), _true_ids(tok, tiny_text))
    assert "could not write the token cache" in warnings()
    assert list(tmp_path.iterdir()) == []


def test_ids_written_without_their_sidecar_are_not_trusted(
    tok: CharTokenizer, tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings: Callable[[], str]
) -> None:
    """A crash (or a concurrent reader) between the two writes sees ids without a sidecar and re-tokenizes."""
    real_replace = os.replace

    def ids_only(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if os.fspath(dst).endswith(".json"):
            raise OSError("interrupted")
        real_replace(src, dst)

    expected = _true_ids(tok, tiny_text)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", ids_only)
        assert torch.equal(load_tokens(tiny_text, tok, tmp_path), expected)
    path = token_cache_path(tiny_text, tok, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

    calls = _count_encode(monkeypatch, tok)
    assert torch.equal(load_tokens(tiny_text, tok, tmp_path), expected)
    assert len(calls) == 1
    assert "missing" in warnings()
    _assert_cache_holds(path, expected, tok, tiny_text, calls)


def test_ids_outside_the_vocabulary_are_caught_even_with_a_matching_checksum(
    tok: CharTokenizer, tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings: Callable[[], str]
) -> None:
    """uint16 holds ids up to 65535, far past a 28-character vocabulary: the largest id is checked too."""
    import hashlib

    expected = _true_ids(tok, tiny_text)
    load_tokens(tiny_text, tok, tmp_path)
    path = token_cache_path(tiny_text, tok, tmp_path)
    bad = _read_bin(path).copy()
    bad[3] = tok.vocab_size
    bad.tofile(path)
    meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    meta["checksum"] = "blake2b:" + hashlib.blake2b(path.read_bytes(), digest_size=32).hexdigest()
    sidecar_path(path).write_text(json.dumps(meta), encoding="utf-8")

    calls = _count_encode(monkeypatch, tok)
    assert torch.equal(load_tokens(tiny_text, tok, tmp_path), expected)
    assert len(calls) == 1
    assert f"id {tok.vocab_size} is outside the vocabulary" in warnings()
    _assert_cache_holds(path, expected, tok, tiny_text, calls)


def test_a_sidecar_without_its_ids_is_rebuilt(
    tok: CharTokenizer, tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings: Callable[[], str]
) -> None:
    expected = _true_ids(tok, tiny_text)
    load_tokens(tiny_text, tok, tmp_path)
    path = token_cache_path(tiny_text, tok, tmp_path)
    path.unlink()
    calls = _count_encode(monkeypatch, tok)
    assert torch.equal(load_tokens(tiny_text, tok, tmp_path), expected)
    assert len(calls) == 1 and "missing" in warnings()
    _assert_cache_holds(path, expected, tok, tiny_text, calls)
