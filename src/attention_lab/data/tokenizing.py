"""Tokenizing a corpus stream in blocks, in worker processes, with exactly the ids of one `encode` call.

The stream is cut into blocks of about `BLOCK_CHARS` characters, each ending at a *safe boundary*: just after
a "\\n" whose neighbours are both printable non-space ASCII ("...end.\\nNext..."). GPT-2's pre-tokenizer (a
regex; BPE merges never cross its pieces) always cuts on both sides of such a "\\n" and its lookahead
`\\s+(?!\\S)` cannot see past it, so encoding the blocks one by one gives the ids of encoding the whole text
at once. Cutting elsewhere would not: "a\\n\\nb" is one "\\n\\n" id, and "\\n  x" puts a space in the next
piece. (Characters are safe anywhere; the one rule serves both tokenizers.) A text without any safe boundary
stays one block.

Blocks go to `workers` processes; their ids come back in order, with at most 2 x workers blocks in flight,
so memory stays bounded whatever the corpus' size.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from .token_file import storage_dtype
from .tokenizers import Tokenizer

BLOCK_CHARS = 1 << 22  # ~4M characters per block: ~1 s of GPT-2 BPE, next to ~1 ms to ship it to a worker
MAX_DEFAULT_WORKERS = 4


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(setting: int | None) -> int:
    """`data.tokenize_workers`: null means min(4, available CPUs); 1 tokenizes in this process."""
    return min(MAX_DEFAULT_WORKERS, available_cpus()) if setting is None else max(1, int(setting))


def _safe(char: str) -> bool:
    return "!" <= char <= "~"  # printable ASCII, not space


def safe_cut(text: str, lo: int = 0) -> int:
    """The position just after the last safe "\\n" in text[lo:] (see the module docstring), or -1."""
    i = text.rfind("\n", lo, len(text) - 1)
    while i >= 1:
        if _safe(text[i - 1]) and _safe(text[i + 1]):
            return i + 1
        i = text.rfind("\n", lo, i)
    return -1


def blocks(chunks: Iterable[str], block_chars: int | None = None) -> Iterator[str]:
    """The stream regrouped into blocks of at least `block_chars` (default BLOCK_CHARS) characters that end at
    safe boundaries (the last block ends where the stream does). Their concatenation is the stream."""
    block_chars = block_chars or BLOCK_CHARS
    pending: list[str] = []
    size = searched = 0  # characters pending; of those, how many were already searched for a boundary
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size < block_chars:
            continue
        text = "".join(pending)
        cut = safe_cut(text, max(block_chars - 1, searched - 1))
        if cut < 0:  # no safe boundary yet: keep reading (a text without one stays one block)
            pending, searched = [text], size
            continue
        yield text[:cut]
        pending, size, searched = [text[cut:]], size - cut, 0
    if size:
        yield "".join(pending)


def encode_ids(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Ids of `text` in the cache's storage dtype (uint16 or uint32, by the vocabulary)."""
    return tokenizer.encode_array(text).astype(storage_dtype(tokenizer.vocab_size), copy=False)


_WORKER_TOKENIZER: Tokenizer | None = None


def _start_worker(tokenizer: Tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _encode_in_worker(text: str) -> np.ndarray:
    assert _WORKER_TOKENIZER is not None, "the worker was started without a tokenizer"
    return encode_ids(_WORKER_TOKENIZER, text)


def _context() -> multiprocessing.context.BaseContext:
    """fork on Linux: a worker starts in milliseconds with the tokenizer already built (a spawned one would
    import torch and Lightning first, seconds per worker); elsewhere the platform's default (spawn on macOS,
    where fork is unsafe): the tokenizer is then pickled (GPT-2 by name, characters by their list)."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


def _pooled(stream: Iterable[str], tokenizer: Tokenizer, workers: int) -> Iterator[np.ndarray]:
    pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_start_worker, initargs=(tokenizer,))
    inflight: deque[Future[np.ndarray]] = deque()
    try:
        for block in stream:
            inflight.append(pool.submit(_encode_in_worker, block))
            if len(inflight) >= 2 * workers:
                yield inflight.popleft().result()
        while inflight:
            yield inflight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def tokenize_stream(
    chunks: Iterable[str], tokenizer: Tokenizer, workers: int = 1, block_chars: int | None = None
) -> Iterator[np.ndarray]:
    """Ids of the stream, block by block and in order; their concatenation is `tokenizer.encode(whole text)`.

    `workers > 1` encodes the blocks in that many processes, unless the stream is a single block (a small
    corpus: starting processes would cost more than they save).
    """
    stream = blocks(chunks, block_chars)
    head = list(itertools.islice(stream, 2))
    rest = itertools.chain(head, stream)
    if workers <= 1 or len(head) < 2:
        for block in rest:
            yield encode_ids(tokenizer, block)
    else:
        yield from _pooled(rest, tokenizer, workers)
