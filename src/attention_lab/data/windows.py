"""Fixed-length next-token windows, the contiguous train/val split, the fit check, and the resumable shuffle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, default_collate

from .tokenizers import DataConfigError


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
    """Fixed-length next-token windows over a 1-D token tensor.

    Item i is `(x, y)` with `x = tokens[s : s + T]`, `y = tokens[s + 1 : s + T + 1]`, `s = i * stride`.
    The windows are strided views (`unfold`) of the tokens, so nothing is copied up front, and a DataLoader
    batch is gathered with one indexing op per tensor through `__getitems__` (used by torch >= 2.2 when
    auto-batching) instead of B `__getitem__` calls and a stack: data loading stays negligible next to a step.
    """

    def __init__(self, tokens: torch.Tensor, context_length: int, stride: int | None = None) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"TokenWindows needs a 1-D token tensor, got shape {tuple(tokens.shape)}")
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        stride = context_length if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.tokens = tokens.to(torch.int64)  # (N,); no copy when already int64
        self.context_length = context_length
        self.stride = stride
        n = num_windows(len(self.tokens), context_length, stride)
        if n == 0:  # too few tokens for one window; unfold would raise
            self._x = self._y = self.tokens.new_empty((0, context_length))
        else:
            # Inputs and targets as two views so that both gathered batches come out contiguous (B, T).
            self._x = self.tokens[:-1].unfold(0, context_length, stride)  # (n, T)
            self._y = self.tokens[1:].unfold(0, context_length, stride)  # (n, T)

    def __len__(self) -> int:
        return self._x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._x[index], self._y[index]  # (T,), (T,)

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)  # (B,)
        return WindowBatch(self._x[idx], self._y[idx])  # (B, T), (B, T)

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


def split_tokens(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous split: the first (1 - val_fraction) of the tokens train, the rest validate.

    Contiguous (not random windows) so that no validation text leaks into training through overlapping
    windows; windows are cut within each part, so none crosses the boundary.
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
    """A shuffle fixed by (seed, epoch) that can start part-way through an epoch.

    Lightning calls `set_epoch` before each epoch (as for DistributedSampler), and a resumed run calls
    `skip_first` with the batches already trained on, so a run resumed from a mid-epoch checkpoint sees
    exactly the batches an uninterrupted run would have seen (a plain seeded RandomSampler restarts the
    epoch with a different order).
    """

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items, self.seed, self.epoch, self._skip = num_items, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first(self, num_indices: int) -> None:
        self._skip = num_indices

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator)[self._skip :]
        self._skip = 0  # only the first epoch after a resume is partial
        return iter(order.tolist())
