"""Tests of attention_lab.data.windows: next-token windows, the contiguous split that no window crosses, and
the fit checks that name the setting to change."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from attention_lab.data import (
    DataConfigError,
    TokenWindows,
    check_corpus_fits,
    collate_windows,
    num_windows,
    split_tokens,
)
from attention_lab.data.windows import split_point


def test_windows_shift_targets_by_one() -> None:
    tokens = torch.arange(20)
    ds = TokenWindows(tokens, context_length=4)
    x, y = ds[1]
    assert x.tolist() == [4, 5, 6, 7]
    assert y.tolist() == [5, 6, 7, 8]
    assert ds.span(1) == (4, 9)


@pytest.mark.parametrize(
    ("n", "t", "stride"), [(20, 4, None), (20, 4, 1), (20, 4, 3), (21, 4, 4), (5, 4, 2), (4, 4, 1)]
)
def test_window_count_and_stride(n: int, t: int, stride: int | None) -> None:
    ds = TokenWindows(torch.arange(n), t, stride)
    s = t if stride is None else stride
    assert len(ds) == num_windows(n, t, stride) == (max(0, (n - t - 1) // s + 1) if n > t else 0)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.tolist() == list(range(i * s, i * s + t))
        assert y.tolist() == list(range(i * s + 1, i * s + t + 1))
    assert len(ds) == 0 or ds.span(len(ds) - 1)[1] <= n  # the last window's target is still a real token


def test_batched_fetch_is_one_gather_equal_to_item_by_item() -> None:
    ds = TokenWindows(torch.arange(100), context_length=8, stride=5)
    x, y = collate_windows(ds.__getitems__([3, 0, 7]))
    assert x.shape == y.shape == (3, 8)
    assert x.is_contiguous() and y.is_contiguous()  # so model code may call .view(-1)
    assert torch.equal(x, torch.stack([ds[i][0] for i in (3, 0, 7)]))
    assert torch.equal(y, torch.stack([ds[i][1] for i in (3, 0, 7)]))
    sx, sy = collate_windows([ds[3], ds[0], ds[7]])  # the item-by-item path gives the same batch
    assert torch.equal(sx, x) and torch.equal(sy, y)


def test_dataloader_without_collate_windows_fails_loudly() -> None:
    ds = TokenWindows(torch.arange(100), context_length=8)
    with pytest.raises(TypeError, match="collate_windows"):
        next(iter(DataLoader(ds, batch_size=4)))


# --- split and checks --------------------------------------------------------------------------------------


def test_split_is_contiguous_and_windows_never_cross_it() -> None:
    tokens = torch.arange(1000)
    train, val = split_tokens(tokens, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), tokens)
    train_ds = TokenWindows(train, context_length=16, stride=3)
    val_ds = TokenWindows(val, context_length=16)
    seen_train = torch.cat([torch.cat(train_ds[i]) for i in range(len(train_ds))])
    seen_val = torch.cat([torch.cat(val_ds[i]) for i in range(len(val_ds))])
    assert int(seen_train.max()) < 900 <= int(seen_val.min())


@pytest.mark.parametrize(("n", "val_fraction", "cut"), [(1000, 0.1, 900), (7, 0.5, 4), (3, 0.0, 3), (3, 1.0, 0)])
def test_split_point_is_the_rule_split_and_fit_check_share(n: int, val_fraction: float, cut: int) -> None:
    assert split_point(n, val_fraction) == cut
    train, val = split_tokens(torch.arange(n), val_fraction)
    assert (len(train), len(val)) == (cut, n - cut)


def test_context_longer_than_a_split_names_context_length() -> None:
    with pytest.raises(DataConfigError, match=r"val split has 10 tokens.*model\.context_length=16"):
        check_corpus_fits(100, context_length=16, val_fraction=0.1)
    with pytest.raises(DataConfigError, match=r"train split has 10 tokens.*model\.context_length=16"):
        check_corpus_fits(100, context_length=16, val_fraction=0.9)
    assert check_corpus_fits(100, context_length=9, val_fraction=0.1) == (90, 10)


def test_too_few_train_windows_for_a_batch_names_batch_size() -> None:
    with pytest.raises(DataConfigError, match=r"data\.batch_size=16"):
        check_corpus_fits(200, context_length=16, val_fraction=0.1, batch_size=16)
