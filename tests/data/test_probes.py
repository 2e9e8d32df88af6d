"""The recall probes' construction: keys unique, answers the bound value, labels exactly on answers, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attention_lab.data import DataConfigError, tokenizer_from_state
from attention_lab.data.probe_tasks import FILLER, IGNORE, induction, mqar
from attention_lab.data.probes import InductionDataModule, MQARDataModule
from attention_lab.data.tokenizers import ProbeTokenizer

T, V, P = 32, 64, 4


def _mqar(n: int = 50, seed: int = 0, queries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    return mqar(np.random.default_rng(seed), n, T, V, P, queries)


def test_mqar_keys_unique_values_disjoint_and_answers_are_the_bound_values() -> None:
    x, y = _mqar()
    assert x.shape == y.shape == (50, T) and x.dtype == np.int64
    keys, values = x[:, 0 : 2 * P : 2], x[:, 1 : 2 * P : 2]
    assert (keys >= 1).all() and (keys < V // 2).all() and (values >= V // 2).all() and (values < V).all()
    for row in range(50):
        assert len(set(keys[row])) == P and len(set(values[row])) == P
        bound = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
        answered = np.flatnonzero(y[row] != IGNORE)
        assert len(answered) == P  # num_queries=None: every pair once
        assert (answered >= 2 * P).all() and ((answered - 2 * P) % 2 == 0).all()
        for at in answered:
            assert y[row, at] == bound[int(x[row, at])]  # the query key's bound value
        assert sorted(int(x[row, at]) for at in answered) == sorted(bound)  # each pair asked once
        # after the pairs only the queries and the filler token: nothing rebinds a key or shows a value
        after = np.flatnonzero(x[row, 2 * P :] != FILLER) + 2 * P
        assert sorted(after.tolist()) == sorted(answered.tolist())


def test_mqar_more_queries_than_pairs_repeat_keys_and_labels_only_queries() -> None:
    x, y = _mqar(queries=12)
    assert ((y != IGNORE).sum(axis=1) == 12).all()
    assert ((y == IGNORE) | (y >= V // 2)).all()
    labelled_keys = (np.arange(T) >= 2 * P) & (x != FILLER)
    assert ((y != IGNORE) == labelled_keys).all()  # labelled exactly at the query keys


def test_mqar_is_a_function_of_the_seed() -> None:
    a, b, c = _mqar(seed=3), _mqar(seed=3), _mqar(seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_induction_repeats_the_first_half_and_labels_the_repeat() -> None:
    x, y = induction(np.random.default_rng(0), 20, 17, 40)  # odd T: one filler token at the end
    half = 8
    assert np.array_equal(x[:, :half], x[:, half : 2 * half])
    assert all(len(set(row)) == half for row in x[:, :half].tolist())
    labelled = np.flatnonzero(y[0] != IGNORE)
    assert labelled.tolist() == list(range(half, 2 * half - 1))
    assert np.array_equal(y[:, half : 2 * half - 1], x[:, half + 1 : 2 * half])  # the next token of the repeat


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"vocab_size": 8, "num_pairs": 8}, ["data.vocab_size=8", "data.vocab_size=18"]),
        ({"num_pairs": 9, "context_length": 32}, ["data.num_pairs=9", "data.num_pairs=8"]),
        ({"num_pairs": 4, "num_queries": 13, "context_length": 32}, ["data.num_queries=12", "context_length=34"]),
        ({"num_train": 10, "batch_size": 16}, ["data.num_train=10", "data.num_train=320"]),
    ],
)
def test_mqar_settings_that_cannot_work_name_the_setting_and_fix(settings: dict, names: list[str]) -> None:
    with pytest.raises(DataConfigError) as err:
        MQARDataModule(**{"context_length": 64, **settings})
    assert all(name in str(err.value) for name in names), str(err.value)


def test_induction_vocabulary_must_cover_half_the_sequence() -> None:
    with pytest.raises(DataConfigError, match=r"data\.vocab_size=16 or more"):
        InductionDataModule(vocab_size=10, context_length=32)


def test_datamodule_train_follows_the_seed_and_val_is_fixed() -> None:
    dms = [
        MQARDataModule(vocab_size=V, num_pairs=P, context_length=T, num_train=64, num_val=32, seed=s) for s in (0, 0, 1)
    ]
    for dm in dms:
        dm.setup()
    assert torch.equal(dms[0].train_dataset.x, dms[1].train_dataset.x)
    assert not torch.equal(dms[0].train_dataset.x, dms[2].train_dataset.x)
    assert torch.equal(dms[0].val_dataset.x, dms[2].val_dataset.x)  # every run answers the same questions
    assert torch.equal(dms[0].val_dataset.y, dms[2].val_dataset.y)
    assert not torch.equal(dms[0].train_dataset.x[:32], dms[0].val_dataset.x)
    x, y = next(iter(dms[0].train_dataloader()))
    assert x.shape == y.shape == (64, T) and x.dtype == y.dtype == torch.int64
    assert len(dms[0].val_dataloader().dataset) == 32


def test_probe_tokenizer_names_round_trip_through_its_state() -> None:
    dm = MQARDataModule(vocab_size=10, num_pairs=2, context_length=16)
    tokenizer = tokenizer_from_state(dm.tokenizer.state())
    assert isinstance(tokenizer, ProbeTokenizer) and tokenizer.vocab_size == 10
    assert tokenizer.decode([0, 4, 5, 9]) == "k0 k4 v0 v4"
    assert tokenizer.encode("k0 k4 v0 v4") == [0, 4, 5, 9] == tokenizer.encode("0 4 5 9")
    with pytest.raises(ValueError):
        tokenizer.encode("k5")  # id 5 is the value v0
    assert ProbeTokenizer(4).decode([3]) == "t3"


def test_example_is_a_short_fixed_mqar_sequence() -> None:
    dm = MQARDataModule(vocab_size=V, num_pairs=8, context_length=64)
    ids = dm.example(24)
    assert len(ids) == 24 and ids == dm.example(24)
    keys = ids[0:12:2]  # 24 tokens hold 6 pairs and their 6 queries
    assert len(set(keys)) == 6 and all(k < V // 2 for k in keys)


def test_the_data_module_asks_as_many_queries_as_set_not_capped_at_the_pairs() -> None:
    """A bug found in review: the module capped num_queries at num_pairs, so `num_queries: 16` asked 4."""
    module = MQARDataModule(vocab_size=64, num_pairs=4, num_queries=12, context_length=32, batch_size=4)
    _, y = module.generate(np.random.default_rng(0), 8, 32)
    assert ((y != IGNORE).sum(axis=1) == 12).all()
    _, y = module.generate(np.random.default_rng(0), 2, 16)  # a short example(): as many as its slots hold
    assert ((y != IGNORE).sum(axis=1) == 4).all()
