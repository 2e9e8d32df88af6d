"""DataLoaders shared by the text and the probe data modules: a seeded epoch order that resumes mid-epoch.

Both modules shuffle with EpochShuffleSampler (order fixed by the seed and the epoch, independent of the model,
which common random numbers rely on) and skip the batches a checkpoint had already trained on, so a resumed run
sees exactly the batches an uninterrupted one would. Under DDP the loaders shard themselves (each rank its part
of the train order, and of the val split with no window repeated), so the trainer is built with
`use_distributed_sampler=False`: Lightning's wrapper would list every rank's indices and could not resume
mid-epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .tokenizers import DataConfigError
from .windows import EpochShuffleSampler, ShardSampler, collate_windows


def batches_done_this_epoch(trainer: Any, num_items: int, batch_size: int) -> int:
    """Batches of the current epoch each rank already trained on when resuming from a checkpoint (else 0)."""
    if trainer is None or trainer.ckpt_path is None:
        return 0
    per_epoch = num_items // _ranks(trainer)[1] // batch_size  # a rank's shard, drop_last
    # `processed`, not `completed`: a checkpoint written in on_train_batch_end counts its batch as processed.
    # A checkpoint at the end of an epoch (processed == per_epoch) resumes at the start of the next one.
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed % max(per_epoch, 1)


def _ranks(trainer: Any) -> tuple[int, int]:
    """(this process' rank, number of ranks); (0, 1) without a trainer."""
    return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)


def _check_shards(num_items: int, batch_size: int, world_size: int, shuffle: bool) -> None:
    """Every rank needs a batch to train on and a window to validate: a rank without one would skip the
    step or the validation the others wait for in their collectives."""
    if world_size == 1:
        return
    if shuffle and num_items // world_size < batch_size:
        raise DataConfigError(
            f"the train split has {num_items} windows: split over {world_size} devices that is "
            f"{num_items // world_size} per device, less than data.batch_size={batch_size}; lower data.batch_size "
            "or trainer.devices, or use more text"
        )
    if not shuffle and num_items < world_size:
        raise DataConfigError(
            f"the val split has {num_items} windows, fewer than the {world_size} devices that each validate a "
            "share of them: lower trainer.devices, or give the val split more windows (more text, or a larger "
            "data.val_fraction for a text corpus)"
        )


def seeded_loader(
    dataset: Dataset | None,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_workers: int,
    trainer: Any = None,
) -> DataLoader:
    """Train (shuffle=True: seeded epoch order, ragged last batch dropped, resumed batches skipped) or val
    (in order, every item kept) loader of (x, y) batches."""
    if dataset is None:
        raise RuntimeError("call setup() before asking for dataloaders")
    rank, world_size = _ranks(trainer)
    _check_shards(len(dataset), batch_size, world_size, shuffle)
    sampler: Sampler[int]
    if shuffle:
        sampler = EpochShuffleSampler(len(dataset), seed, rank, world_size)
        done = batches_done_this_epoch(trainer, len(dataset), batch_size)
        if done:
            sampler.skip_first(done * batch_size)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # its own generator: creating an iterator otherwise draws from the global RNG, which would shift
        # the dropout stream of a resumed run
        generator=torch.Generator().manual_seed(seed),
        drop_last=shuffle,
        collate_fn=collate_windows,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class SeededLoaders:
    """The three dataloader hooks of a LightningDataModule whose setup() filled `train_dataset` and `val_dataset`
    (and which has `batch_size`, `seed`, `num_workers`): train shuffled by the seed and resumable, val in order.
    There is no separate test split: `test_dataloader` serves the val split."""

    train_dataset: Dataset | None
    val_dataset: Dataset | None
    batch_size: int
    seed: int
    num_workers: int

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        return seeded_loader(dataset, self.batch_size, self.seed, shuffle, self.num_workers, trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)
