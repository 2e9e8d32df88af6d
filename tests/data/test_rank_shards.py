"""Under DDP our loaders shard themselves: each rank draws the same seeded epoch order and keeps its own part of
it (and resumes mid-epoch within that part), and the val split is cut so that every window is evaluated once
over all ranks. With one rank everything is the single-process order, unchanged."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from attention_lab.data import DataConfigError, EpochShuffleSampler, ShardSampler
from attention_lab.data.loading import batches_done_this_epoch, seeded_loader


def _epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def test_one_rank_draws_the_whole_seeded_order_of_each_epoch() -> None:
    sampler = EpochShuffleSampler(23, seed=7)
    assert len(sampler) == 23 and list(sampler) == _epoch_order(23, 7, 0)
    sampler.set_epoch(3)
    assert list(sampler) == _epoch_order(23, 7, 3)


@pytest.mark.parametrize("num_items", [12, 13, 17])
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards_are_disjoint_equal_and_cover_the_order_but_its_tail(num_items: int, world_size: int) -> None:
    order = _epoch_order(num_items, 1, 2)
    kept = num_items // world_size * world_size  # the last num_items % world_size are dropped
    shards = []
    for rank in range(world_size):
        sampler = EpochShuffleSampler(num_items, seed=1, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == num_items // world_size
    assert sorted(i for shard in shards for i in shard) == sorted(order[:kept])
    # rank r takes every world_size-th window of the common order, from position r on
    assert all(shards[r] == order[:kept][r::world_size] for r in range(world_size))


def test_a_resumed_rank_skips_only_the_windows_it_trained_on() -> None:
    sampler = EpochShuffleSampler(20, seed=0, rank=1, world_size=2)
    full = list(sampler)
    sampler.skip_first(4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full, "only the first epoch after a resume is partial"


@pytest.mark.parametrize(("num_items", "world_size"), [(10, 1), (10, 3), (2, 4)])
def test_val_shards_evaluate_every_window_exactly_once(num_items: int, world_size: int) -> None:
    shards = [list(ShardSampler(num_items, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(num_items)), "none missing, none repeated"
    assert [len(ShardSampler(num_items, r, world_size)) for r in range(world_size)] == [len(s) for s in shards]
    assert all(shard == sorted(shard) for shard in shards)


def test_a_rank_outside_the_world_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="rank 2 is not one of the 2 ranks"):
        EpochShuffleSampler(10, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="rank -1"):
        ShardSampler(10, rank=-1, world_size=2)


def _trainer(rank: int, world_size: int, processed: int = 0, ckpt_path: str | None = None) -> Any:
    """What the loaders read off a Lightning trainer: its rank, its world and, when resuming, the batches done."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(global_rank=rank, world_size=world_size, ckpt_path=ckpt_path, fit_loop=loop)


def test_a_resume_counts_the_epoch_in_batches_of_one_rank() -> None:
    # 40 windows in batches of 4: 10 batches per epoch on one rank, 5 per rank on two
    assert batches_done_this_epoch(_trainer(0, 1, processed=7, ckpt_path="x.ckpt"), 40, 4) == 7
    assert batches_done_this_epoch(_trainer(1, 2, processed=7, ckpt_path="x.ckpt"), 40, 4) == 2  # epoch 1, batch 2
    assert batches_done_this_epoch(_trainer(1, 2, processed=7), 40, 4) == 0, "no checkpoint, nothing to skip"


class _Items(torch.utils.data.Dataset):
    """Item i is the pair (i, i): a batch shows which windows it was made of."""

    def __len__(self) -> int:
        return 18

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([index]), torch.tensor([index])


def _seen(loader: torch.utils.data.DataLoader) -> list[int]:
    return [int(i) for x, _ in loader for i in x.flatten()]


def test_the_loaders_of_two_ranks_split_train_and_val_between_them() -> None:
    train = {r: _seen(seeded_loader(_Items(), 2, 5, True, 0, _trainer(r, 2))) for r in (0, 1)}
    val = {r: _seen(seeded_loader(_Items(), 2, 5, False, 0, _trainer(r, 2))) for r in (0, 1)}
    assert train[0] and train[1] and not set(train[0]) & set(train[1])
    assert len(train[0]) == len(train[1]) == 8  # 9 windows per rank, in batches of 2 (the ragged one dropped)
    assert sorted(val[0] + val[1]) == list(range(18))
    resumed = _seen(seeded_loader(_Items(), 2, 5, True, 0, _trainer(1, 2, processed=3, ckpt_path="x.ckpt")))
    assert resumed == train[1][6:], "rank 1 resumes after its own 3 batches"


def test_a_rank_left_without_a_batch_or_a_val_window_is_a_setting_error() -> None:
    """A rank with no train batch or no val window would skip the collectives the other ranks wait in."""
    seeded_loader(_Items(), 9, 5, True, 0, _trainer(1, 2))  # 18 windows: 9 per rank, one batch of 9 each
    with pytest.raises(DataConfigError, match=r"18 windows.*3 devices.*6 per device.*data.batch_size=9"):
        seeded_loader(_Items(), 9, 5, True, 0, _trainer(0, 3))
    seeded_loader(_Items(), 2, 5, False, 0, _trainer(17, 18))  # one val window per rank
    with pytest.raises(DataConfigError, match=r"val split has 18 windows, fewer than the 19 devices"):
        seeded_loader(_Items(), 2, 5, False, 0, _trainer(0, 19))
