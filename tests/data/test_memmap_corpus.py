"""Corpora bigger than memory: the streamed corpus, parallel tokenization into a flat `.bin`, windows read from
a memory map of it, and DDP ranks that each read only their own windows.

Each claim is checked against an explicit reference: the stream against the whole-file reading it replaced,
blocked and parallel ids against one `encode` of the whole text (with a negative control: cutting where the
module says it is unsafe does change GPT-2's ids), memmap batches against the old unfold-of-a-tensor windows.
"""

from __future__ import annotations

import codecs
import hashlib
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import attention_lab.data.tokenizing as tokenizing
import attention_lab.data.windows as windows
from attention_lab.data import (
    CharTokenizer,
    CorpusSource,
    DataConfigError,
    EpochShuffleSampler,
    GPT2Tokenizer,
    TextDataModule,
    TokenFile,
    collate_windows,
    corpus_source,
    load_corpus,
    scan_corpus,
    storage_dtype,
    tokenize_corpus,
)
from attention_lab.data.tokenizing import blocks, safe_cut, tokenize_stream

DOCS = [
    "Title one\n\nA first paragraph, with words.\n    indented code()\nEnd of doc.",
    "  Leading spaces and\ttabs.\nLine two!\n\n\nThree newlines before this; don't split it.",
    "Numbers 12345 and 3.14.\nUnicode: naïve café — ok?\nLast line.",
]
GPT2_TEXT = "<|endoftext|>".join(DOCS * 4)  # documents marked as GPT-2's training data marks them


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


def _ids(pieces: Any) -> np.ndarray:
    return np.concatenate(list(pieces))


# --- the stream is the corpus --------------------------------------------------------------------------------


def _reference_text(files: list[Path]) -> str:
    """The old whole-file reading (load_corpus before streaming): decode, normalise newlines, strip and join."""
    texts = []
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("utf-8-sig", errors="replace")
        texts.append(text.replace("\r\n", "\n").replace("\r", "\n"))
    return texts[0] if len(texts) == 1 else "\n\n".join(t.strip("\n") for t in texts)


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_bytes(codecs.BOM_UTF8 + b"\n\nalpha\r\nbeta\rgamma \xe2\x80\x94 caf\xc3\xa9\r\n\r\n\n")
    (folder / "b.txt").write_bytes(b"bad \xff\xfe bytes\xe2\x80\nand a cut \xe2\x82\xac euro\n")
    (folder / "c.md").write_bytes(b"\n\n\n")  # only newlines: an empty document between two separators
    (folder / "d.txt").write_bytes(("naïve\r\n" * 5 + "\r").encode("utf-8"))
    return folder


@pytest.mark.parametrize("read_bytes", [1, 2, 3, 7, 64, 1 << 20])
def test_stream_is_the_whole_file_reading_at_any_read_size(messy_folder: Path, read_bytes: int) -> None:
    """BOM, CRLF and multi-byte characters cut between two reads, bad bytes, empty files, newline stripping."""
    files = sorted(messy_folder.iterdir())
    source = corpus_source(messy_folder)
    assert "".join(source.chunks(read_bytes)) == _reference_text(files) == load_corpus(messy_folder)
    one = CorpusSource(files=(files[0],), label="one")  # a single file is taken whole, newlines kept
    assert "".join(one.chunks(read_bytes)) == _reference_text(files[:1])


def test_scan_hashes_the_text_and_collects_its_characters(messy_folder: Path) -> None:
    text = load_corpus(messy_folder)
    scan = scan_corpus(corpus_source(messy_folder), chars=True)
    assert scan.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert scan.chars == "".join(sorted(set(text))) and scan.num_chars == len(text)
    assert scan_corpus(CorpusSource.from_text("abcab"), chars=True).chars == "abc"  # the ASCII fast path
    assert scan_corpus(corpus_source(messy_folder)).chars is None


def test_a_corpus_of_whitespace_is_refused(tmp_path: Path) -> None:
    (tmp_path / "blank.txt").write_text(" \n\t\n", encoding="utf-8")
    with pytest.raises(DataConfigError, match="no text"):
        scan_corpus(corpus_source(tmp_path / "blank.txt"))


# --- blocks and safe boundaries ------------------------------------------------------------------------------


def test_safe_cut_only_after_a_newline_between_printable_characters() -> None:
    assert safe_cut("ab.\nCd") == 4
    assert safe_cut("ab\n\ncd") == -1  # "\n\n" is one GPT-2 id
    assert safe_cut("ab\n  cd") == -1  # the space would move into the next piece
    assert safe_cut("ab \ncd") == -1
    assert safe_cut("a\nb\n c", lo=0) == 2  # the last safe one
    assert safe_cut("a\nb\nc", lo=3) == 4 and safe_cut("a\nb\nc", lo=4) == -1


@pytest.mark.parametrize("block_chars", [1, 5, 40, 10_000])
def test_blocks_concatenate_to_the_stream_and_end_at_safe_boundaries(block_chars: int) -> None:
    chunks = [GPT2_TEXT[i : i + 17] for i in range(0, len(GPT2_TEXT), 17)]
    out = list(blocks(chunks, block_chars))
    assert "".join(out) == GPT2_TEXT
    for block in out[:-1]:
        assert len(block) >= block_chars and block.endswith("\n") and block[-2] > " " and block[-2] <= "~"
    if block_chars == 40:
        doc_ends = {len(d) for d in DOCS}
        assert len(out) > len(DOCS) * 4 and any(len(b) not in doc_ends for b in out)  # cuts inside documents


def test_blocked_gpt2_ids_equal_one_encode_on_random_texts(gpt2: GPT2Tokenizer) -> None:
    """Property check over texts dense in the cases that matter: runs of spaces, newlines, tabs, punctuation."""
    rng = random.Random(0)
    alphabet = ["a", "b", "Z", " ", "  ", "\n", "\n\n", "\t", ".", "'s", "1", "é", "<|endoftext|>", "!?"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        pieces = [text[i : i + 9] for i in range(0, len(text), 9)]
        ids = _ids(tokenize_stream(pieces, gpt2, workers=1, block_chars=rng.randint(1, 30)))
        assert ids.tolist() == gpt2.encode(text), repr(text)


def test_negative_control_cutting_at_an_unsafe_newline_changes_gpt2_ids(gpt2: GPT2Tokenizer) -> None:
    text = "first paragraph.\n\n    second, indented"
    cut = text.index("\n") + 1  # after the first "\n" of "\n\n": safe_cut refuses it
    assert safe_cut(text) == -1
    assert gpt2.encode(text[:cut]) + gpt2.encode(text[cut:]) != gpt2.encode(text)


# --- parallel == serial, byte for byte -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_parallel_tokenization_is_byte_identical_to_serial(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpt2: GPT2Tokenizer
) -> None:
    source = CorpusSource.from_text(GPT2_TEXT)
    tokenizer = gpt2 if name == "gpt2" else CharTokenizer.from_text(GPT2_TEXT)
    monkeypatch.setattr(tokenizing, "BLOCK_CHARS", 50)  # ~25 blocks, most of them cut inside a document
    pooled: list[int] = []
    real_pooled = tokenizing._pooled

    def counting_pool(stream: Any, tok: Any, workers: int) -> Any:
        pooled.append(workers)
        return real_pooled(stream, tok, workers)

    monkeypatch.setattr(tokenizing, "_pooled", counting_pool)
    files = {}
    for workers in (1, 2):
        token_file = tokenize_corpus(source, tokenizer, tmp_path / f"w{workers}", workers=workers)
        assert isinstance(token_file, TokenFile)
        files[workers] = token_file.path.read_bytes()
    assert pooled == [2], "the two-worker run did not use worker processes"
    assert files[1] == files[2]
    expected = np.asarray(tokenizer.encode(GPT2_TEXT), dtype=storage_dtype(tokenizer.vocab_size))
    assert files[1] == expected.tobytes()
    if name == "gpt2":
        assert 50256 in expected  # <|endoftext|> kept its special id across the cuts


def test_a_tokenizer_error_in_a_worker_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = CharTokenizer.from_text("abc.\n")
    text = "abc.\nabc.\n" * 20 + "abX.\nabc"
    with pytest.raises(ValueError, match="not in the char tokenizer's vocabulary"):
        list(tokenize_stream([text], tokenizer, workers=2, block_chars=10))


# --- the cache file: dtype, format, verification ------------------------------------------------------------


@pytest.mark.parametrize(("vocab", "dtype"), [(28, "uint16"), (50257, "uint16"), (65536, "uint16"), (65537, "uint32")])
def test_storage_dtype_is_uint16_while_every_id_fits(vocab: int, dtype: str) -> None:
    assert storage_dtype(vocab) == np.dtype(dtype) and storage_dtype(vocab).byteorder in "<="


def test_a_vocabulary_past_uint16_is_stored_as_uint32(tmp_path: Path) -> None:
    chars = [chr(0x10000 + i) for i in range(70_000)]  # 70,000 ids: the last ones need 17 bits
    tokenizer = CharTokenizer(chars)
    text = chars[-1] + chars[0] + chars[65_600]
    token_file = tokenize_corpus(CorpusSource.from_text(text), tokenizer, tmp_path)
    assert token_file.dtype == np.dtype("<u4") and token_file.path.stat().st_size == 12
    assert np.fromfile(token_file.path, dtype="<u4").tolist() == [69_999, 0, 65_600]


def _tiny_dm(path: Path, cache: Path, **kwargs: Any) -> TextDataModule:
    args = {"path": str(path), "tokenizer": "char", "context_length": 8, "batch_size": 4, "cache_dir": str(cache)}
    return TextDataModule(**{**args, **kwargs})


def test_a_truncated_cache_is_rebuilt_by_the_next_run(
    tiny_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dm = _tiny_dm(tiny_corpus, tmp_path)
    dm.prepare_data()
    path = dm._tokens.path
    genuine = path.read_bytes()
    path.write_bytes(genuine[:-7])  # a copy or a write cut short
    again = _tiny_dm(tiny_corpus, tmp_path)
    again.setup("fit")
    assert "truncated" in caplog.text and path.read_bytes() == genuine
    x, _ = next(iter(again.train_dataloader()))
    assert x.shape == (4, 8)


def test_a_cache_replaced_during_the_run_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    """Verified once, then mapped batch by batch: a file swapped underneath is not read unverified."""
    dm = _tiny_dm(tiny_corpus, tmp_path)
    dm.setup("fit")
    path = dm._tokens.path
    replacement = tmp_path / "other.bin"
    replacement.write_bytes(bytes(path.stat().st_size))  # zeros: same size, in-range ids
    replacement.replace(path)
    with pytest.raises(DataConfigError, match="replaced or changed after it was verified"):
        next(iter(dm.train_dataloader()))


# --- windows from the memory map -----------------------------------------------------------------------------


def test_memmap_batches_equal_the_old_tensor_windows(tiny_corpus: Path, tiny_text: str, tmp_path: Path) -> None:
    """Same seed, same batches as unfold views of one int64 tensor of the corpus (the implementation before)."""
    dm = _tiny_dm(tiny_corpus, tmp_path, stride=3, seed=5)
    dm.setup("fit")
    tokens = torch.tensor(dm.tokenizer.encode(tiny_text))  # (N,) the old in-memory corpus
    train = tokens[: dm.train_tokens]
    old_x = train[:-1].unfold(0, 8, 3)  # (n, T)
    old_y = train[1:].unfold(0, 8, 3)  # (n, T)
    order = list(EpochShuffleSampler(len(old_x), seed=5))
    batches = list(dm.train_dataloader())
    assert len(batches) == len(old_x) // 4
    for b, (x, y) in enumerate(batches):
        idx = torch.tensor(order[b * 4 : (b + 1) * 4])
        assert x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x, old_x[idx]) and torch.equal(y, old_y[idx])
    val_x = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(val_x, tokens[dm.train_tokens :][:-1].unfold(0, 8, 8)[: len(val_x)])


def test_no_full_corpus_array_is_held(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = _tiny_dm(tiny_corpus, tmp_path)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    assert isinstance(dm._tokens, TokenFile)
    for ds in (dm.train_dataset, dm.val_dataset):
        assert isinstance(ds.source, TokenFile)
        held = [v for v in vars(ds).values() if isinstance(v, torch.Tensor | np.ndarray)]
        assert held == [], f"the dataset holds arrays: {[type(v) for v in held]}"
    # the .tokens view for whole-split readers (the length evaluation) maps the file; it copies nothing
    tokens = dm.val_dataset.tokens
    assert tokens.dtype == torch.uint16 and len(tokens) == dm.val_tokens
    assert tokens[:5].to(torch.long).tolist() == np.fromfile(dm._tokens.path, "<u2")[dm.train_tokens :][:5].tolist()


def test_without_a_cache_the_ids_are_held_compactly(tiny_corpus: Path, tiny_text: str) -> None:
    dm = TextDataModule(path=str(tiny_corpus), tokenizer="char", context_length=8, batch_size=4, cache_dir=None)
    dm.setup("fit")
    assert isinstance(dm._tokens, np.ndarray) and dm._tokens.dtype == np.uint16
    assert dm.tokenizer.decode(dm._tokens) == tiny_text
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 8)


# --- DDP: each rank reads its own windows ----------------------------------------------------------------------


def test_two_ranks_read_disjoint_windows_and_receive_no_corpus(
    tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under DDP our sampler gives each rank its shard of the window indices; the dataset reads only the
    windows its rank asks for, and pickles (spawned ranks, DataLoader workers) without any ids."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tiny_text * 10, encoding="utf-8")  # 18,000 ids: 36 kB on disk
    dm = _tiny_dm(corpus, tmp_path / "cache")
    dm.setup("fit")
    ds = dm.train_dataset
    assert len(pickle.dumps(ds)) < 1000 < 2 * dm.train_tokens
    read: dict[int, list[int]] = {}
    gather = windows.gather_windows
    for rank in (0, 1):
        reads: list[int] = []

        def spy(tokens: Any, starts: np.ndarray, width: int, reads: list[int] = reads) -> np.ndarray:
            reads.extend(starts.tolist())
            return gather(tokens, starts, width)

        monkeypatch.setattr(windows, "gather_windows", spy)
        sampler = EpochShuffleSampler(len(ds), seed=0, rank=rank, world_size=2)
        mine = {i * ds.stride for i in sampler}
        loader = DataLoader(ds, batch_size=4, sampler=sampler, drop_last=True, collate_fn=collate_windows)
        for _ in loader:
            pass
        assert set(reads) <= mine
        read[rank] = reads
    assert not set(read[0]) & set(read[1])
    assert len(read[0]) + len(read[1]) >= len(ds) - 7  # all but num_items % 2 and two ragged batches of < 4


# --- settings ------------------------------------------------------------------------------------------------


def test_tokenize_workers_setting(tiny_corpus: Path, tmp_path: Path) -> None:
    assert tokenizing.resolve_workers(None) == min(4, tokenizing.available_cpus())
    assert tokenizing.resolve_workers(1) == 1 and tokenizing.resolve_workers(3) == 3
    dm = _tiny_dm(tiny_corpus, tmp_path, tokenize_workers=2)
    assert dm.hparams["tokenize_workers"] == 2 and dm.vocab_size == 28


@pytest.mark.parametrize(("value", "error"), [("null", None), ("3", None), ("0", "integer >= 1"), ("x", ">= 1")])
def test_tokenize_workers_is_a_checked_setting(
    tiny_corpus: Path, tmp_path: Path, value: str, error: str | None
) -> None:
    from attention_lab.config import validate
    from attention_lab.errors import UserError
    from tests.training.helpers import make_cfg

    cfg = make_cfg(tmp_path, ["data=text", f"data.path={tiny_corpus}", f"data.tokenize_workers={value}"])
    if error is None:
        validate(cfg)
        return
    with pytest.raises(UserError, match=rf"data\.tokenize_workers=.*{error}.*set data\.tokenize_workers=2"):
        validate(cfg)


def test_gpt2_encode_array_equals_encode(gpt2: GPT2Tokenizer) -> None:
    from attention_lab.data import default_corpus_text

    text = default_corpus_text()[:50_000] + "<|endoftext|>tail"
    assert gpt2.encode_array(text).tolist() == gpt2.encode(text)
    char = CharTokenizer.from_text(text)
    assert char.encode_array(text).tolist() == char.encode(text)
