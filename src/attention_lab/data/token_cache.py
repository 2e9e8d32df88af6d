"""Token ids cached on disk once per (corpus content, tokenizer), and verified before they are trusted.

A cache is only worth having if a bad one cannot slip through: a file of zeros or a truncated array is a valid
`.npy` with in-range ids, and training on it would fail silently (a model that learns garbage, not an error).
So each `tokens-*.npy` has a JSON sidecar (`tokens-*.npy.json`) that records what the ids were made from (the
full hashes of the text and of the tokenizer state) and what they are (count, dtype, a BLAKE2b checksum of their
bytes). A read recomputes all of it; any mismatch costs a warning naming the failed check and a re-tokenization,
which then rewrites both files. Hashing the ids is a few ms per MB, negligible next to tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .tokenizers import Tokenizer

log = logging.getLogger(__name__)

# Bump when the cache layout or the corpus -> ids rules change; it is part of the tokenizer hash, so every
# older cache file simply stops matching any key. 2: the verification sidecar.
_CACHE_FORMAT = 2
_CHECKSUM = "blake2b"


class _CacheMismatch(Exception):
    """A cache file that fails verification; the message says which check failed."""


def _storage_dtype(vocab_size: int) -> np.dtype:
    """Smallest dtype for the ids on disk: GPT-2's 50257 ids fit uint16, halving the cache versus int32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def _cache_key(text: str, tokenizer: Tokenizer) -> dict[str, Any]:
    """What the ids are a function of: the cache format, the text and the tokenizer's full state (as hashes)."""
    tok_key = json.dumps({"format": _CACHE_FORMAT, **tokenizer.state()}, sort_keys=True)
    return {
        "format": _CACHE_FORMAT,
        "tokenizer": tokenizer.name,
        "text_sha256": _sha256(text),
        "tokenizer_sha256": _sha256(tok_key),
    }


def _cache_path(key: dict[str, Any], cache_dir: str | os.PathLike[str]) -> Path:
    name = f"tokens-{key['tokenizer']}-{key['text_sha256'][:20]}-{key['tokenizer_sha256'][:12]}.npy"
    return Path(cache_dir).expanduser() / name


def token_cache_path(text: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike[str]) -> Path:
    """Cache file for (corpus content, tokenizer): the key hashes the text and the tokenizer's full state.

    Hashing the content (not the path) means an edited corpus is re-tokenized and a moved one is not; hashing
    the state means two char tokenizers with different vocabularies never share ids.
    """
    return _cache_path(_cache_key(text, tokenizer), cache_dir)


def sidecar_path(cache_path: Path) -> Path:
    """The JSON file next to a cache file that says what its ids are, so that a read can verify them."""
    return cache_path.with_name(cache_path.name + ".json")


def _checksum(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids).data, digest_size=32).hexdigest()


def _verified_ids(path: Path, key: dict[str, Any], vocab_size: int) -> np.ndarray:
    """The cached ids after every check has passed; `_CacheMismatch` names the first check that failed."""
    meta_path = sidecar_path(path)
    if not meta_path.is_file():
        raise _CacheMismatch(f"its sidecar {meta_path.name} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _CacheMismatch(f"its sidecar is unreadable ({err})") from err
    if not isinstance(meta, dict):
        raise _CacheMismatch("its sidecar is not a JSON object")
    for field, expected in key.items():
        if meta.get(field) != expected:
            raise _CacheMismatch(f"sidecar {field} is {meta.get(field)!r}, expected {expected!r}")
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise _CacheMismatch(f"the ids are unreadable ({err})") from err
    dtype = _storage_dtype(vocab_size)
    if ids.ndim != 1 or ids.dtype != dtype or meta.get("dtype") != dtype.name:
        raise _CacheMismatch(
            f"the ids have shape {ids.shape} and dtype {ids.dtype} (sidecar: {meta.get('dtype')!r}), "
            f"expected 1-D {dtype.name}"
        )
    if meta.get("num_ids") != ids.size:
        raise _CacheMismatch(f"the file holds {ids.size} ids but the sidecar says {meta.get('num_ids')!r}")
    if meta.get("checksum") != f"{_CHECKSUM}:{_checksum(ids)}":
        raise _CacheMismatch(f"the {_CHECKSUM} checksum of the ids does not match the sidecar's")
    if ids.size and int(ids.max()) >= vocab_size:
        raise _CacheMismatch(f"id {int(ids.max())} is outside the vocabulary [0, {vocab_size})")
    return ids


def _read_cache(path: Path, key: dict[str, Any], vocab_size: int) -> np.ndarray | None:
    """Verified cached ids, or None (with a warning unless the cache is simply cold) to re-tokenize."""
    if not path.is_file() and not sidecar_path(path).is_file():
        return None
    try:
        return _verified_ids(path, key, vocab_size)
    except _CacheMismatch as err:
        log.warning("not using the token cache %s: %s; re-tokenizing and rewriting it", path, err)
        return None


def _replace_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write to a temporary file in the same folder, then rename over the target.

    `os.replace` is atomic on one filesystem, so concurrent DDP ranks or sweep jobs that tokenize the same
    corpus never see a half-written file; the last writer wins with identical content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_cache(path: Path, key: dict[str, Any], ids: np.ndarray) -> None:
    """Write the ids, then their sidecar, each atomically.

    Ids first: a reader that comes between the two writes (or after a crash between them) finds ids whose
    sidecar is missing or describes other ids, fails verification and re-tokenizes; it never trusts them.
    """
    meta = {**key, "num_ids": int(ids.size), "dtype": ids.dtype.name, "checksum": f"{_CHECKSUM}:{_checksum(ids)}"}
    _replace_atomically(path, lambda f: np.save(f, ids, allow_pickle=False))
    _replace_atomically(sidecar_path(path), lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))


def _encode(text: str, tokenizer: Tokenizer) -> np.ndarray:
    return np.asarray(tokenizer.encode(text), dtype=_storage_dtype(tokenizer.vocab_size))


def load_tokens(text: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike[str] | None) -> torch.Tensor:
    """All token ids of `text` as a 1-D int64 tensor, tokenized once and then read (verified) from `cache_dir`.

    The whole text goes through `tokenizer.encode`, so `<|endoftext|>` in a corpus becomes GPT-2's special
    end-of-text id, exactly as in a prompt. `cache_dir=None` disables the cache. A cache that cannot be written
    (read-only folder) only costs a warning: the ids are still returned.
    """
    if cache_dir is None:
        return torch.from_numpy(_encode(text, tokenizer).astype(np.int64))  # (N,)
    key = _cache_key(text, tokenizer)
    path = _cache_path(key, cache_dir)
    ids = _read_cache(path, key, tokenizer.vocab_size)
    if ids is None:
        ids = _encode(text, tokenizer)
        try:
            _write_cache(path, key, ids)
            log.info("cached %d %s tokens in %s", ids.size, tokenizer.name, path)
        except OSError as err:
            log.warning("could not write the token cache %s (%s); continuing without it", path, err)
    return torch.from_numpy(ids.astype(np.int64))  # (N,)
