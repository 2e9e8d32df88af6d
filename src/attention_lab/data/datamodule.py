"""The LightningDataModule: corpus -> cached tokens -> contiguous train/val windows, as dataloaders."""

from __future__ import annotations

import lightning as L

from .corpus import corpus_source, scan_corpus
from .loading import SeededLoaders
from .token_cache import tokenize_corpus
from .token_file import TokenIds
from .tokenizers import TOKENIZERS, Tokenizer, build_tokenizer
from .tokenizing import resolve_workers
from .windows import TokenWindows, check_corpus_fits, split_point, split_tokens


class TextDataModule(SeededLoaders, L.LightningDataModule):
    """Corpus -> tokens -> contiguous train/val windows, as Lightning dataloaders.

    The tokens are loaded lazily and once per process: `tokenizer`, `vocab_size`, `train_tokens` and
    `val_tokens` work before `trainer.fit` (the training task needs `vocab_size` to build the model), and
    `validate()` checks that the splits fit the model before any training starts.

    Corpora bigger than memory: the text is streamed once to hash it (the cache key), a cold cache is filled
    by `tokenize_workers` processes, and the datasets hold spans of the verified cache file (a `TokenFile`),
    from which each batch reads only its windows. No process, DDP rank or DataLoader worker holds the corpus
    or its ids; `cache_dir=None` is the exception (the ids, 2 bytes each for GPT-2, are then held in memory).

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
        tokenize_workers: int | None = None,
    ) -> None:
        super().__init__()
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
        self.tokenize_workers = tokenize_workers
        self._tokenizer: Tokenizer | None = None
        self._tokens: TokenIds | None = None  # (N,) the cache file, or ids in memory without a cache
        self.train_dataset: TokenWindows | None = None
        self.val_dataset: TokenWindows | None = None

    # --- loading ---------------------------------------------------------------------------------------------

    def _load(self) -> tuple[Tokenizer, TokenIds]:
        if self._tokenizer is None or self._tokens is None:
            if self.tokenizer_name not in TOKENIZERS:
                build_tokenizer(self.tokenizer_name, "")  # raises the error that names data.tokenizer
            source = corpus_source(self.path)
            scan = scan_corpus(source, chars=self.tokenizer_name == "char")
            tokenizer = build_tokenizer(self.tokenizer_name, scan.chars or "")  # char: its vocabulary
            workers = resolve_workers(self.tokenize_workers)
            self._tokens = tokenize_corpus(source, tokenizer, self.cache_dir, workers, scan.sha256)
            self._tokenizer = tokenizer
        return self._tokenizer, self._tokens

    def prepare_data(self) -> None:
        """Tokenize and cache (Lightning runs this on one process per node, so the other ranks then just read)."""
        self._load()

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
        return split_point(len(self._load()[1]), self.val_fraction)

    @property
    def val_tokens(self) -> int:
        return len(self._load()[1]) - self.train_tokens
