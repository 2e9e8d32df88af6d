"""Fixed-length next-token windows, the contiguous train/val split, the fit check, and the resumable shuffle."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .token_file import TokenFile, TokenIds, gather_windows
from .tokenizers import DataConfigError

_Ids = TypeVar("_Ids", TokenFile, np.ndarray, torch.Tensor)


def num_windows(num_tokens: int, context_length: int, stride: int | None = None) -> int:
    """Windows of `context_length` inputs (+1 target) that fit in `num_tokens` tokens at `stride`."""
    stride = context_length if stride is None else stride
    if num_tokens <= context_length:
        return 0
    return (num_tokens - context_length - 1) // stride + 1


@dataclass(frozen=True)
class WindowBatch:
    """A batch gathered by `TokenWindows.__getitems__`, turned into `(x, y)` by `collate_windows`.

    It is deliberately not a sequence: torch's `default_collate` would mistake a pair of batched tensors for
    two samples and silently stack them into a (2, B, T) tensor; indexing this fails loudly instead.
    """

    x: torch.Tensor  # (B, T)
    y: torch.Tensor  # (B, T)

    def __getitem__(self, index: object) -> None:
        raise TypeError("TokenWindows batches need collate_fn=attention_lab.data.collate_windows in the DataLoader")


def collate_windows(batch: WindowBatch | list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader collate_fn for `TokenWindows`: passes a pre-gathered batch through, stacks anything else."""
    if isinstance(batch, WindowBatch):
        return batch.x, batch.y
    x, y = default_collate(batch)
    return x, y


class TokenWindows(Dataset):
    """Fixed-length next-token windows over 1-D token ids: a cache file (`TokenFile`), an array or a tensor.

    Item i is `(x, y)` with `x = tokens[s : s + T]`, `y = tokens[s + 1 : s + T + 1]`, `s = i * stride`, as
    int64 tensors. Only the windows asked for are read: a DataLoader batch is gathered with one fancy-index
    read of B rows of T + 1 ids through `__getitems__` (used by torch >= 2.2 when auto-batching), from a
    memory map of the cache opened for that batch. So no process holds the corpus, and under DDP each rank
    reads only the windows its sampler shard names.
    """

    def __init__(self, tokens: TokenIds | torch.Tensor, context_length: int, stride: int | None = None) -> None:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        if not isinstance(tokens, TokenFile) and tokens.ndim != 1:
            raise ValueError(f"TokenWindows needs 1-D token ids, got shape {tuple(tokens.shape)}")
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        stride = context_length if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.source: TokenIds = tokens  # (N,) on disk or in memory
        self.context_length = context_length
        self.stride = stride
        self._len = num_windows(len(tokens), context_length, stride)

    @property
    def tokens(self) -> torch.Tensor:
        """All ids as a 1-D tensor in their stored dtype (uint16/uint32 for a cache, which it maps: nothing is
        read until indexed). For code that wants the split as a tensor, e.g. the length evaluation."""
        if isinstance(self.source, TokenFile):
            return torch.from_numpy(self.source.open(writable_view=True))  # (N,)
        return torch.from_numpy(self.source)  # (N,)

    def __len__(self) -> int:
        return self._len

    def _batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)  # (B,)
        if idx.size and (idx.min() < -self._len or idx.max() >= self._len):
            raise IndexError(f"window index out of range for {self._len} windows")
        starts = (idx % max(self._len, 1)) * self.stride  # (B,); negative indices count from the end
        rows = torch.from_numpy(gather_windows(self.source, starts, self.context_length + 1))  # (B, T + 1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # (B, T), (B, T)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._batch([index])
        return x[0], y[0]  # (T,), (T,)

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        return WindowBatch(*self._batch(indices))  # (B, T), (B, T)

    def span(self, index: int) -> tuple[int, int]:
        """Token positions [start, stop) that window `index` reads, targets included."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = index * self.stride
        return start, start + self.context_length + 1


# ----------------------------------------------------------------------------------------------------------
# Split and checks
# ----------------------------------------------------------------------------------------------------------


def split_point(num_tokens: int, val_fraction: float) -> int:
    """Number of train tokens: the one rounding rule that the split, the fit check and the datamodule share."""
    return min(num_tokens, max(0, round(num_tokens * (1.0 - val_fraction))))


def split_tokens(tokens: _Ids, val_fraction: float) -> tuple[_Ids, _Ids]:
    """Contiguous split: the first (1 - val_fraction) of the tokens train, the rest validate.

    Contiguous (not random windows) so that no validation text leaks into training through overlapping
    windows; windows are cut within each part, so none crosses the boundary. A tensor or array splits into
    views, a cache file into two spans of it: nothing is copied.
    """
    cut = split_point(len(tokens), val_fraction)
    return tokens[:cut], tokens[cut:]  # (N_train,), (N_val,)


def check_corpus_fits(
    num_tokens: int,
    context_length: int,
    val_fraction: float,
    batch_size: int = 1,
    stride: int | None = None,
) -> tuple[int, int]:
    """(train, val) token counts, or a DataConfigError when a split cannot feed the model.

    Pure arithmetic, so the training task can call it before building anything. Each split needs more than
    `context_length` tokens (a window reads T + 1), and the train split at least `batch_size` windows: the
    last partial batch is dropped, so fewer would make an epoch without a single step.
    """
    n_train = split_point(num_tokens, val_fraction)
    n_val = num_tokens - n_train
    sizes = f"(corpus: {num_tokens} tokens, data.val_fraction={val_fraction} -> train {n_train}, val {n_val})"
    if n_train <= context_length:
        raise DataConfigError(
            f"the train split has {n_train} tokens but model.context_length={context_length} needs at least "
            f"{context_length + 1} {sizes}: use a smaller model.context_length, more text (data.path=...) "
            f"or a smaller data.val_fraction"
        )
    if n_val <= context_length:
        raise DataConfigError(
            f"the val split has {n_val} tokens but model.context_length={context_length} needs at least "
            f"{context_length + 1} {sizes}: use a smaller model.context_length, more text (data.path=...) "
            f"or a larger data.val_fraction"
        )
    n_windows = num_windows(n_train, context_length, stride)
    if n_windows < batch_size:
        raise DataConfigError(
            f"the train split gives {n_windows} windows of model.context_length={context_length} tokens "
            f"(data.stride={stride}) but data.batch_size={batch_size}, and the last partial batch is dropped, "
            f"so an epoch would have no step: lower data.batch_size or data.stride, or use more text {sizes}"
        )
    return n_train, n_val


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A shuffle fixed by (seed, epoch), one shard of it per rank, that can start part-way through an epoch.

    Lightning calls `set_epoch` before each epoch (as for DistributedSampler), and a resumed run calls
    `skip_first` with the windows this rank already trained on, so a run resumed from a mid-epoch checkpoint
    sees exactly the batches an uninterrupted run would (a plain seeded RandomSampler restarts the epoch with a
    different order). Under DDP (`world_size` ranks) every rank draws the same epoch order, drops its last
    `num_items % world_size` indices so that all ranks have as many batches, and keeps every `world_size`-th
    index from `rank` on: the shards are disjoint, no rank holds a list of the others' indices, and the skip of
    a resume applies to each rank's own shard. With one rank the shard is the whole order.
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks")
        self.num_items, self.seed, self.epoch, self._skip = num_items, seed, 0, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first(self, num_indices: int) -> None:
        """Start the next epoch after this rank's first `num_indices` indices (the windows it trained on)."""
        self._skip = num_indices

    def __len__(self) -> int:
        return self.num_items // self.world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator)  # (num_items,) 8 bytes each
        shard = order[: len(self) * self.world_size][self.rank :: self.world_size][self._skip :]  # a view
        self._skip = 0  # only the first epoch after a resume is partial
        return _as_ints(shard)


class ShardSampler(torch.utils.data.Sampler[int]):
    """Indices `rank`, `rank + world_size`, ... in order: one rank's part of an evaluation split.

    Over all ranks every item comes exactly once: none is repeated to even the ranks out (as DistributedSampler
    does), so sums reduced over the ranks (the val loss) count each window once.
    """

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))


def _as_ints(order: torch.Tensor, block: int = 1 << 16) -> Iterator[int]:
    """The indices as Python ints, a block at a time: a list of a big corpus' windows would cost ~36 bytes
    each (one int object and one pointer), more than the ids of the windows' tokens on disk."""
    for part in order.split(block):
        yield from part.tolist()
