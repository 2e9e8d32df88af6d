"""Token ids cached on disk once per (corpus content, tokenizer), and verified before they are trusted.

Each cache is a flat `tokens-*.bin` (raw little-endian ids, uint16 or uint32: the format nanoGPT users know;
see token_file.py) with a JSON sidecar `tokens-*.bin.json` that records what the ids were made from (the full
hashes of the text and of the tokenizer state) and what they are (count, dtype, byte order, a BLAKE2b checksum
of the file's bytes). A file of zeros, a truncated file or the ids of another tokenizer would all be valid
ids, and training on them would fail silently, so a read re-checks everything: the sidecar's key, the file's
size against the count (a truncation costs no read), then the checksum and the largest id in one streaming
pass (~1 s per GB, in bounded memory). Any mismatch costs a warning naming the failed check and a
re-tokenization, which rewrites both files. During the run the file is only mapped, never loaded whole.

Jobs of a parallel sweep and DDP ranks start together on the same cold cache. Each run remembers the identity
of the file it verified and refuses a file replaced under it, so two jobs that both tokenized and both renamed
their result into place would fail one of them. A lock on the cache folder prevents that: reads verify under a
shared lock, and a job that must write takes the exclusive lock, looks again (the job that held it may have
just written a good cache) and only then tokenizes. A good cache is never replaced.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .corpus import CorpusSource, scan_corpus
from .token_file import TokenFile, TokenIds, as_array, file_identity, storage_dtype
from .tokenizers import Tokenizer
from .tokenizing import tokenize_stream

log = logging.getLogger(__name__)

# Bump when the cache layout or the corpus -> ids rules change; it is part of the tokenizer hash, so every
# older cache file simply stops matching any key. 2: the verification sidecar. 3: flat .bin ids, memory-mapped.
_CACHE_FORMAT = 3
_CHECKSUM = "blake2b"
_READ_BYTES = 1 << 24  # verification reads the file in 16 MiB pieces (a multiple of every id size)


class _CacheMismatch(Exception):
    """A cache file that fails verification; the message says which check failed."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def _cache_key(text_sha256: str, tokenizer: Tokenizer) -> dict[str, Any]:
    """What the ids are a function of: the cache format, the text and the tokenizer's full state (as hashes)."""
    tok_key = json.dumps({"format": _CACHE_FORMAT, **tokenizer.state()}, sort_keys=True)
    return {
        "format": _CACHE_FORMAT,
        "tokenizer": tokenizer.name,
        "text_sha256": text_sha256,
        "tokenizer_sha256": _sha256(tok_key),
    }


def _cache_path(key: dict[str, Any], cache_dir: str | os.PathLike[str]) -> Path:
    name = f"tokens-{key['tokenizer']}-{key['text_sha256'][:20]}-{key['tokenizer_sha256'][:12]}.bin"
    return Path(cache_dir).expanduser() / name


def token_cache_path(text: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike[str]) -> Path:
    """Cache file for (corpus content, tokenizer): the key hashes the text and the tokenizer's full state.

    Hashing the content (not the path) means an edited corpus is re-tokenized and a moved one is not; hashing
    the state means two char tokenizers with different vocabularies never share ids.
    """
    return _cache_path(_cache_key(_sha256(text), tokenizer), cache_dir)


def sidecar_path(cache_path: Path) -> Path:
    """The JSON file next to a cache file that says what its ids are, so that a read can verify them."""
    return cache_path.with_name(cache_path.name + ".json")


# --- verification ------------------------------------------------------------------------------------------


def _read_sidecar(path: Path, key: dict[str, Any]) -> dict[str, Any]:
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
    return meta


def _file_checks(path: Path, dtype: np.dtype) -> tuple[str, int]:
    """(checksum, largest id) of the file, read in bounded pieces (never mapped: no resident pages stay)."""
    digest, top = hashlib.blake2b(digest_size=32), -1
    buffer = bytearray(_READ_BYTES)
    with path.open("rb") as f:
        while n := f.readinto(buffer):
            piece = memoryview(buffer)[:n]
            digest.update(piece)
            top = max(top, int(np.frombuffer(piece, dtype=dtype).max()))
    return f"{_CHECKSUM}:{digest.hexdigest()}", top


def _verified_file(path: Path, key: dict[str, Any], vocab_size: int) -> TokenFile:
    """The cache as a TokenFile after every check has passed; `_CacheMismatch` names the first that failed."""
    meta = _read_sidecar(path, key)
    dtype = storage_dtype(vocab_size)
    if meta.get("dtype") != dtype.name or meta.get("byteorder") != "little":
        raise _CacheMismatch(
            f"the sidecar says dtype {meta.get('dtype')!r}, byte order {meta.get('byteorder')!r}; "
            f"expected {dtype.name}, little (vocabulary of {vocab_size})"
        )
    num_ids = meta.get("num_ids")
    if not isinstance(num_ids, int) or isinstance(num_ids, bool) or num_ids < 0:
        raise _CacheMismatch(f"the sidecar's num_ids is {num_ids!r}, not a count")
    if not path.is_file():
        raise _CacheMismatch(f"the ids file {path.name} is missing")
    identity = file_identity(path)
    size = identity[1]
    if size != num_ids * dtype.itemsize:
        raise _CacheMismatch(
            f"the file holds {size / dtype.itemsize:g} ids ({size} bytes) but the sidecar says {num_ids} "
            f"ids of {dtype.name}: it was truncated or overwritten"
        )
    checksum, top = _file_checks(path, dtype)
    if meta.get("checksum") != checksum:
        raise _CacheMismatch(f"the {_CHECKSUM} checksum of the ids does not match the sidecar's")
    if top >= vocab_size:
        raise _CacheMismatch(f"id {top} is outside the vocabulary [0, {vocab_size})")
    if file_identity(path) != identity:
        raise _CacheMismatch("the file changed while it was being verified")
    return TokenFile(path, dtype, 0, num_ids, identity)


def _read_cache(path: Path, key: dict[str, Any], vocab_size: int, warn: bool = True) -> TokenFile | None:
    """The verified cache, or None (with a warning unless the cache is simply cold) to re-tokenize."""
    if not path.is_file() and not sidecar_path(path).is_file():
        return None
    try:
        return _verified_file(path, key, vocab_size)
    except _CacheMismatch as err:
        if warn:
            log.warning("not using the token cache %s: %s; re-tokenizing and rewriting it", path, err)
        return None


@contextmanager
def _folder_lock(folder: Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock (`flock`) on the cache folder itself, released when the block ends.

    The folder, not a lock file beside the caches: nothing is added to the folder and nothing must be cleaned
    up. A folder that cannot be created or opened (read-only) is used without a lock: nothing will be written
    there anyway. A filesystem that refuses locks costs a warning, and the jobs go on unlocked. The lock is
    per folder, so tokenizing one corpus briefly holds up readers of another.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as err:  # a filesystem without locks (some network mounts): go on as before the lock
            log.warning(
                "could not lock the token cache folder %s (%s): jobs that start together on a cold cache may each "
                "tokenize, and one of them may then stop and need a restart",
                folder,
                err,
            )
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# --- writing -----------------------------------------------------------------------------------------------


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


def _write_cache(path: Path, key: dict[str, Any], pieces: Iterable[np.ndarray], dtype: np.dtype) -> TokenFile:
    """Stream the ids into the file (checksummed on the way), then write their sidecar, each atomically.

    Ids first: a reader that comes between the two writes (or after a crash between them) finds ids whose
    sidecar is missing or describes other ids, fails verification and re-tokenizes; it never trusts them.
    """
    digest, count = hashlib.blake2b(digest_size=32), 0

    def write_ids(f: IO[bytes]) -> None:
        nonlocal count
        for ids in pieces:
            data = memoryview(np.ascontiguousarray(ids, dtype=dtype)).cast("B")
            f.write(data)
            digest.update(data)
            count += len(ids)

    _replace_atomically(path, write_ids)
    identity = file_identity(path)
    meta = {**key, "num_ids": count, "dtype": dtype.name, "byteorder": "little"}
    meta["checksum"] = f"{_CHECKSUM}:{digest.hexdigest()}"
    _replace_atomically(sidecar_path(path), lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))
    return TokenFile(path, dtype, 0, count, identity)


# --- the entry points --------------------------------------------------------------------------------------


def tokenize_corpus(
    source: CorpusSource,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike[str] | None,
    workers: int = 1,
    text_sha256: str | None = None,
) -> TokenIds:
    """All ids of the corpus: a verified cache file (tokenized into it first when cold), never a whole array.

    `workers` processes tokenize a cold cache (tokenizing.py); the file is byte-identical for any number.
    `text_sha256` (from a `scan_corpus` the caller already made) saves a pass over the text. `cache_dir=None`
    disables the cache: the ids are then held in memory (2 or 4 bytes each). A cache that cannot be written
    (read-only folder) only costs a warning, and the ids are held in memory too.
    """
    dtype = storage_dtype(tokenizer.vocab_size)
    if cache_dir is None:
        return _in_memory(source, tokenizer, workers, dtype)
    key = _cache_key(text_sha256 or scan_corpus(source).sha256, tokenizer)
    path = _cache_path(key, cache_dir)
    with _folder_lock(path.parent, exclusive=False):
        cached = _read_cache(path, key, tokenizer.vocab_size, warn=False)
    if cached is not None:
        return cached
    with _folder_lock(path.parent, exclusive=True):
        cached = _read_cache(path, key, tokenizer.vocab_size)  # another job may have written it meanwhile
        if cached is not None:
            return cached
        try:
            token_file = _write_cache(path, key, tokenize_stream(source.chunks(), tokenizer, workers), dtype)
        except OSError as err:
            log.warning("could not write the token cache %s (%s); holding the ids in memory", path, err)
            token_file = None
    if token_file is None:
        return _in_memory(source, tokenizer, workers, dtype)
    log.info("cached %d %s tokens in %s", len(token_file), tokenizer.name, path)
    return token_file


def _in_memory(source: CorpusSource, tokenizer: Tokenizer, workers: int, dtype: np.dtype) -> np.ndarray:
    pieces = list(tokenize_stream(source.chunks(), tokenizer, workers))
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype)  # (N,)


def load_tokens(
    text: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike[str] | None, workers: int = 1
) -> torch.Tensor:
    """All token ids of `text` (a string in memory) as a 1-D int64 tensor, through the same verified cache.

    The whole text goes through the tokenizer, so `<|endoftext|>` in a corpus becomes GPT-2's special
    end-of-text id, exactly as in a prompt. For a corpus bigger than memory use `tokenize_corpus`, which
    returns the cache file without reading it.
    """
    ids = tokenize_corpus(CorpusSource.from_text(text), tokenizer, cache_dir, workers, _sha256(text))
    return torch.from_numpy(np.array(as_array(ids), dtype=np.int64))  # (N,)
