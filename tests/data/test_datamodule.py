"""Tests of attention_lab.data.datamodule: corpus -> cached tokens -> train/val windows -> dataloaders, end to
end on a tiny char corpus and on the built-in corpus with GPT-2.

Argument validation is not tested here: settings are checked once by the config schema (tests of
attention_lab.config), and the tokenizer lives in the LightningModule's hyper-parameters, not in a datamodule
state_dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from attention_lab.data import DataConfigError, TextDataModule, TokenFile, num_windows, token_cache_path
from attention_lab.data.token_cache import sidecar_path


def _tiny_dm(tiny_corpus: Path, tmp_path: Path, **kwargs: Any) -> TextDataModule:
    args = {"path": str(tiny_corpus), "tokenizer": "char", "context_length": 8, "batch_size": 4}
    return TextDataModule(**{**args, "cache_dir": str(tmp_path / "cache"), **kwargs})


def test_datamodule_end_to_end_char(tiny_corpus: Path, tiny_text: str, tmp_path: Path) -> None:
    dm = _tiny_dm(tiny_corpus, tmp_path)
    dm.prepare_data()
    cache = token_cache_path(tiny_text, dm.tokenizer, tmp_path / "cache")
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {cache.name, sidecar_path(cache).name}
    dm.setup("fit")
    assert dm.vocab_size == len(set(tiny_text))
    assert (dm.train_tokens, dm.val_tokens) == (1620, 180)
    assert dm.tokenizer.decode(dm.train_dataset.tokens) + dm.tokenizer.decode(dm.val_dataset.tokens) == tiny_text

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 8)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])

    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == len(dm.train_dataset) // 4  # drop_last
    val_x = torch.cat([vx for vx, _ in dm.val_dataloader()])
    assert len(val_x) == len(dm.val_dataset) == num_windows(180, 8)  # nothing dropped, no overlap
    assert torch.equal(val_x[0], dm.val_dataset[0][0])  # not shuffled


def test_datamodule_order_is_reproducible_per_seed(tiny_corpus: Path, tmp_path: Path) -> None:
    def first_batches(seed: int) -> torch.Tensor:
        dm = _tiny_dm(tiny_corpus, tmp_path, seed=seed)
        dm.setup("fit")
        return torch.cat([x for x, _ in list(dm.train_dataloader())[:5]])

    assert torch.equal(first_batches(0), first_batches(0))
    assert not torch.equal(first_batches(0), first_batches(1))


def test_datamodule_train_windows_stay_before_val(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = _tiny_dm(tiny_corpus, tmp_path, stride=3)
    dm.setup("fit")
    train_ds, val_ds = dm.train_dataset, dm.val_dataset
    last_train_stop = train_ds.span(len(train_ds) - 1)[1]
    assert last_train_stop <= dm.train_tokens == len(train_ds.tokens)
    assert len(val_ds.tokens) == dm.val_tokens
    # Both are spans of the one cache file: the val span starts exactly where the train span ends.
    assert isinstance(train_ds.source, TokenFile) and val_ds.source.path == train_ds.source.path
    assert val_ds.source.start == train_ds.source.start + dm.train_tokens


def test_datamodule_validate_rejects_a_context_longer_than_the_val_split(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = _tiny_dm(tiny_corpus, tmp_path, context_length=500)
    with pytest.raises(DataConfigError, match=r"model\.context_length=500"):
        dm.validate()
    with pytest.raises(DataConfigError, match=r"model\.context_length=500"):
        dm.setup("fit")


def test_datamodule_default_corpus_gpt2(tmp_path: Path) -> None:
    dm = TextDataModule(tokenizer="gpt2", context_length=32, cache_dir=str(tmp_path))
    assert dm.vocab_size == 50257  # available before setup: the model is built from it
    dm.validate()
    assert dm.train_tokens > 100_000 and dm.val_tokens > 10_000
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (16, 32) and int(x.max()) < 50257


def test_datamodule_with_a_worker_process(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = _tiny_dm(tiny_corpus, tmp_path, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    batches = iter(loader)
    x, y = next(batches)
    assert x.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])
    # stop the worker now: left to the garbage collector, its shutdown stalled a later test for 5 s
    batches._shutdown_workers()
