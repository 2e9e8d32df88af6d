"""The corpus: the built-in CPython prose, or the text of a file, a folder or a glob, read deterministically.

A corpus can be larger than memory, so it is read as a stream (`CorpusSource.chunks`): pieces of about 1 MiB
whose concatenation is exactly the text `load_corpus` returns. Nothing downstream (the cache key, the char
vocabulary, tokenization) needs the whole text at once.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import numpy as np

from .tokenizers import DataConfigError

log = logging.getLogger(__name__)

DEFAULT_CORPUS = "the English prose of CPython's pydoc_data.topics"
# Suffixes a folder walk picks up (compared lower-case); "" is a file without a suffix (README, LICENSE).
TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ""})
FIX_PATH = (
    "point data.path at a text file, a folder of .txt/.md/.rst files or a glob pattern, "
    "or use data=default for the built-in corpus"
)
READ_BYTES = 1 << 20  # bytes read (and characters yielded, for text in memory) per piece of the stream


@functools.lru_cache(maxsize=1)
def default_corpus_text() -> str:
    """The built-in corpus: every `pydoc_data.topics` entry (CPython's language reference, ~465k characters).

    It ships with every CPython, so the default run needs no download. Topics are joined in sorted key order
    with a blank line between them, which makes the text deterministic for a given Python version.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


# ----------------------------------------------------------------------------------------------------------
# Which files
# ----------------------------------------------------------------------------------------------------------


def _is_text_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TEXT_SUFFIXES


def _folder_files(folder: Path) -> list[Path]:
    """Text files under `folder`, recursively, in sorted relative-path order.

    A file counts when its suffix is .txt, .md or .rst (any case) or it has none; anything under a hidden
    name (".git/", ".DS_Store") is skipped. Sorting makes the corpus, and so its cache key, deterministic.
    """
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if _is_text_file(path):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _glob_files(pattern: str) -> list[Path]:
    """Files a glob matches (`**` recurses); a matched folder contributes its text files by the folder rule.

    A file matched by the pattern is taken whatever its suffix: the pattern already says what the user wants.
    """
    files: list[Path] = []
    for match in sorted(glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            files.extend(_folder_files(path))
        elif path.is_file():
            files.append(path)
    return list(dict.fromkeys(files))  # drop duplicates, keep order


def _corpus_files(path: str) -> list[Path]:
    """The files `data.path` names: a file, a folder or a glob pattern (tried in that order)."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = _folder_files(p)
        if not files:
            suffixes = ", ".join(sorted(s or "(none)" for s in TEXT_SUFFIXES))
            raise DataConfigError(f"data.path={path} is a folder without text files (suffixes {suffixes}): {FIX_PATH}")
        return files
    if any(ch in path for ch in "*?["):
        files = _glob_files(os.path.expanduser(path))
        if not files:
            raise DataConfigError(f"data.path={path} matches no files: {FIX_PATH}")
        return files
    raise DataConfigError(f"data.path={path} does not exist: {FIX_PATH}")


# ----------------------------------------------------------------------------------------------------------
# Reading, as a stream
# ----------------------------------------------------------------------------------------------------------


def _decode(decoder: codecs.IncrementalDecoder, raw: bytes, final: bool, path: Path) -> str:
    """Strict UTF-8 until the first bad byte, then U+FFFD for every undecodable byte, with one warning.

    A few bad bytes in a large corpus should not cost the whole run. The incremental decoder keeps its buffer
    when it raises, so decoding the same bytes again with `errors="replace"` loses nothing.
    """
    try:
        return decoder.decode(raw, final)
    except UnicodeDecodeError as err:
        log.warning("%s is not valid UTF-8 (%s); undecodable bytes are replaced by U+FFFD", path, err.reason)
        decoder.errors = "replace"
        return decoder.decode(raw, final)


def _file_chunks(path: Path, read_bytes: int) -> Iterator[str]:
    """The text of one file in pieces: UTF-8 (a leading BOM dropped), newlines normalised to "\\n".

    Normalising makes the token cache key independent of the platform that wrote the file. A piece that ends
    in "\\r" holds it back, since it may be the first half of a "\\r\\n" split between two reads.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    held = ""
    with path.open("rb") as f:
        raw = f.read(max(read_bytes, len(codecs.BOM_UTF8)))
        final = not raw
        raw = raw.removeprefix(codecs.BOM_UTF8)  # as decode("utf-8-sig"): one leading BOM only
        while True:
            text = held + _decode(decoder, raw, final, path)
            held = "\r" if not final and text.endswith("\r") else ""
            text = text[: len(text) - len(held)].replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if final:
                return
            raw = f.read(read_bytes)
            final = not raw


def _strip_newlines(pieces: Iterable[str]) -> Iterator[str]:
    """The stream with its leading and trailing "\\n"s removed (trailing ones are held until text follows)."""
    started, pending = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip("\n")
            started = bool(piece)
        body = piece.rstrip("\n")
        if body:
            yield pending + body
            pending = piece[len(body) :]
        else:
            pending += piece


@dataclass(frozen=True)
class CorpusSource:
    """Where the corpus' text comes from: files (read lazily, as a stream) or a text already in memory.

    Several files are joined, in sorted path order, with one blank line between them (leading and trailing
    newlines of each file are dropped first so the separator is always exactly one blank line); one file is
    taken as it is.
    """

    files: tuple[Path, ...] = ()
    text: str | None = None
    label: str = DEFAULT_CORPUS  # what messages call it: the data.path value, or the built-in corpus

    @classmethod
    def from_text(cls, text: str, label: str = "a text in memory") -> CorpusSource:
        return cls(text=text, label=label)

    def chunks(self, read_bytes: int = READ_BYTES) -> Iterator[str]:
        """The text in pieces; their concatenation is the corpus."""
        if self.text is not None:
            for start in range(0, len(self.text), read_bytes):
                yield self.text[start : start + read_bytes]
            return
        if len(self.files) == 1:
            yield from _file_chunks(self.files[0], read_bytes)
            return
        for i, path in enumerate(self.files):
            if i:
                yield "\n\n"
            yield from _strip_newlines(_file_chunks(path, read_bytes))

    def no_text_error(self) -> DataConfigError:
        if self.text is not None:
            return DataConfigError(f"{self.label} holds no text: {FIX_PATH}")
        names = ", ".join(str(f) for f in self.files[:3]) + (" ..." if len(self.files) > 3 else "")
        return DataConfigError(f"data.path={self.label} holds no text (read {names}): {FIX_PATH}")


def corpus_source(path: str | os.PathLike[str] | None = None) -> CorpusSource:
    """The corpus `data.path` names (None: the built-in one); only the file list is read now."""
    if path is None:
        return CorpusSource(text=default_corpus_text())
    path = os.fspath(path)
    return CorpusSource(files=tuple(_corpus_files(path)), label=path)


def load_corpus(path: str | os.PathLike[str] | None = None) -> str:
    """The training text as one string: the built-in corpus for `None`, else the text of a file, a folder or a
    glob (see `CorpusSource`). For a corpus bigger than memory, stream `corpus_source(path).chunks()` instead."""
    source = corpus_source(path)
    if source.text is not None:
        return source.text
    text = "".join(source.chunks())
    if not text.strip():
        raise source.no_text_error()
    log.info("corpus: %d characters from %d file(s) under %s", len(text), len(source.files), source.label)
    return text


# ----------------------------------------------------------------------------------------------------------
# One pass over the stream: what the token cache key and the char vocabulary need
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusScan:
    """The corpus' content hash (the token cache key), its length, and its distinct characters if asked for."""

    sha256: str
    num_chars: int
    chars: str | None  # sorted distinct characters (data.tokenizer=char), else None


def _distinct(piece: str) -> set[str]:
    """Distinct characters of a piece; ASCII pieces by a byte histogram (~20x faster than set())."""
    if piece.isascii():
        counts = np.bincount(np.frombuffer(piece.encode("ascii"), dtype=np.uint8), minlength=128)
        return {chr(c) for c in np.flatnonzero(counts)}
    return set(piece)


def scan_corpus(source: CorpusSource, chars: bool = False) -> CorpusScan:
    """Hash the text (sha256 of its UTF-8) in one streaming pass, and collect its characters when `chars`.

    Raises DataConfigError when the corpus holds nothing but whitespace.
    """
    digest, count, seen, has_text = hashlib.sha256(), 0, set(), False
    for piece in source.chunks():
        digest.update(piece.encode("utf-8", errors="surrogatepass"))
        count += len(piece)
        has_text = has_text or bool(piece.strip())
        if chars:
            seen |= _distinct(piece)
    if not has_text:
        raise source.no_text_error()
    if source.files:
        log.info("corpus: %d characters from %d file(s) under %s", count, len(source.files), source.label)
    return CorpusScan(digest.hexdigest(), count, "".join(sorted(seen)) if chars else None)
