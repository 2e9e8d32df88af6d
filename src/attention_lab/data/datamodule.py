"""The LightningDataModule: corpus -> tokens -> contiguous train/val windows, as dataloaders."""

from __future__ import annotations

import lightning as L
import torch

from .corpus import load_corpus
from .loading import SeededLoaders
from .token_cache import load_tokens
from .tokenizers import Tokenizer, build_tokenizer
from .windows import TokenWindows, check_corpus_fits, split_point, split_tokens


class TextDataModule(SeededLoaders, L.LightningDataModule):
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
        return split_point(len(self._load()[1]), self.val_fraction)

    @property
    def val_tokens(self) -> int:
        return len(self._load()[1]) - self.train_tokens
