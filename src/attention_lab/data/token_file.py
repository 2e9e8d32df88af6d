"""Token ids in a flat `.bin` file, read a few windows at a time through a memory map.

The file is what nanoGPT users know: raw little-endian ids, uint16 when the vocabulary fits (GPT-2's 50257 ids
do) and uint32 otherwise, no header (`np.memmap(path, dtype=np.uint16, mode="r")` reads it). A `TokenFile` is a
span of such a file: the path, the dtype, the first id and the number of ids, plus the identity of the file
that was verified. It holds no mapping and no ids, so a dataset that holds one pickles in bytes (spawned DDP
ranks and DataLoader workers do not receive the corpus) and costs no memory until a batch is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .tokenizers import DataConfigError


def storage_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (ids 0 .. vocab_size - 1 <= 65535), else uint32; little-endian either way."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def file_identity(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime in ns): changes when the file is replaced or rewritten."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class TokenFile:
    """Ids [start, start + length) of a flat little-endian `.bin` file, opened only while a batch is read.

    Mapping the file for each batch (as nanoGPT's get_batch does) instead of once keeps the pages a long
    epoch touches from piling up in the process' resident memory. `identity` is the file's (inode, size,
    mtime) when it was verified: a file replaced or rewritten during the run is refused, not read unverified.
    """

    path: Path
    dtype: np.dtype
    start: int
    length: int
    identity: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: slice) -> TokenFile:
        """A sub-span (how the train/val split cuts the file); only plain slices."""
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"a TokenFile takes slices with step 1 (got {index!r}); read ids with open()")
        first, stop, _ = index.indices(self.length)
        return replace(self, start=self.start + first, length=max(0, stop - first))

    def open(self, writable_view: bool = False) -> np.ndarray:
        """The span as a memory-mapped array (1-D, `dtype`); nothing is read until it is indexed.

        `writable_view=True` maps copy-on-write (writes stay private; the file never changes), which lets
        `torch.from_numpy` wrap the map without its warning about read-only arrays.
        """
        if self.length == 0:
            return np.empty(0, dtype=self.dtype)
        with self.path.open("rb") as f:
            if self.identity is not None:
                st = os.fstat(f.fileno())
                if (st.st_ino, st.st_size, st.st_mtime_ns) != self.identity:
                    raise DataConfigError(
                        f"the token cache {self.path} was replaced or changed after it was verified: another run "
                        "may be rewriting it; restart this run (the cache is verified again and rebuilt if needed)"
                    )
            offset = self.start * self.dtype.itemsize
            mode = "c" if writable_view else "r"
            return np.memmap(f, dtype=self.dtype, mode=mode, offset=offset, shape=(self.length,))


TokenIds = TokenFile | np.ndarray  # ids on disk (a cache), or in memory (data.cache_dir=null)


def as_array(tokens: TokenIds) -> np.ndarray:
    """The ids as an array: a fresh memory map for a TokenFile, the array itself otherwise."""
    return tokens.open() if isinstance(tokens, TokenFile) else tokens


def gather_windows(tokens: TokenIds, starts: np.ndarray, width: int) -> np.ndarray:
    """Rows `tokens[s : s + width]` for each start, as one int64 (B, width) array (one fancy-index read)."""
    ids = as_array(tokens)
    rows = ids[starts[:, None] + np.arange(width)]  # (B, width), a copy: the map can close
    return rows.astype(np.int64)
