"""The corpus: the built-in CPython prose, or the text of a file, a folder or a glob, read deterministically."""

from __future__ import annotations

import functools
import logging
import os
from glob import glob
from pathlib import Path

from .tokenizers import DataConfigError

log = logging.getLogger(__name__)

DEFAULT_CORPUS = "the English prose of CPython's pydoc_data.topics"
# Suffixes a folder walk picks up (compared lower-case); "" is a file without a suffix (README, LICENSE).
TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ""})
FIX_PATH = (
    "point data.path at a text file, a folder of .txt/.md/.rst files or a glob pattern, "
    "or use data=default for the built-in corpus"
)


@functools.lru_cache(maxsize=1)
def default_corpus_text() -> str:
    """The built-in corpus: every `pydoc_data.topics` entry (CPython's language reference, ~465k characters).

    It ships with every CPython, so the default run needs no download. Topics are joined in sorted key order
    with a blank line between them, which makes the text deterministic for a given Python version.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def _read_text(path: Path) -> str:
    """Text of one file, decoded so that no corpus file can stop a run.

    UTF-8 (a leading BOM is dropped); undecodable bytes become U+FFFD with a warning rather than an error,
    since a few bad bytes in a large corpus should not cost the whole run. Newlines are normalised to "\\n" so
    the token cache key does not depend on the platform that wrote the file.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        log.warning("%s is not valid UTF-8 (%s); undecodable bytes are replaced by U+FFFD", path, err.reason)
        text = raw.decode("utf-8-sig", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


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


def load_corpus(path: str | os.PathLike[str] | None = None) -> str:
    """The training text: the built-in corpus for `None`, else the text of a file, a folder or a glob.

    Several files are joined, in sorted path order, with one blank line between them (leading and trailing
    newlines of each file are dropped first so the separator is always exactly one blank line).
    """
    if path is None:
        return default_corpus_text()
    path = os.fspath(path)
    files = _corpus_files(path)
    texts = [_read_text(f) for f in files]
    text = texts[0] if len(texts) == 1 else "\n\n".join(t.strip("\n") for t in texts)
    if not text.strip():
        names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataConfigError(f"data.path={path} holds no text (read {names}): {FIX_PATH}")
    log.info("corpus: %d characters from %d file(s) under %s", len(text), len(files), path)
    return text
