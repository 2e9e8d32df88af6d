"""Synthetic recall probes as LightningDataModules: `data=mqar` and `data=induction`.

They serve the training task what TextDataModule serves (`tokenizer`, `vocab_size`, `validate()`, the three
dataloaders, a resumable shuffle), with batches `(x, y)` of shape (B, T) where `y` is -100 wherever the next
token is not an answer. `reports_accuracy = True` tells the LightningModule to log `val/acc` (the share of
answers whose argmax is right) next to `val/loss` (the mean loss over the answers only).

The train set is drawn from `seed`; the val set from a fixed seed (VAL_SEED), the same for every run, so runs
that differ in seed, variant or width are scored on the same questions. The two come from different streams
(numpy SeedSequence entropy `[seed, 0]` vs `[VAL_SEED, 1]`), so they differ even when `seed == VAL_SEED`.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from . import probe_tasks
from .loading import SeededLoaders
from .tokenizers import DataConfigError, ProbeTokenizer
from .windows import WindowBatch

VAL_SEED = 20231208  # the val questions of every probe run (Zoology's arXiv date)


class ProbeSequences(Dataset):
    """Fixed (x, y) pairs; batches are gathered by one index op (as TokenWindows does)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y  # (N, T), (N, T)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]  # (T,), (T,)

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        idx = torch.as_tensor(indices)
        return WindowBatch(self.x[idx], self.y[idx])  # (B, T), (B, T)


class ProbeDataModule(SeededLoaders, L.LightningDataModule):
    """What both probes share: seeded fixed splits, a probe tokenizer, dataloaders, mid-epoch resume."""

    reports_accuracy = True  # the LightningModule logs val/acc and metrics.json gets val_acc

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        num_train: int,
        num_val: int,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.num_train, self.num_val = num_train, num_val
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.train_dataset: ProbeSequences | None = None
        self.val_dataset: ProbeSequences | None = None
        # settings that cannot work fail here, before anything is generated (the config check builds the module)
        if num_train < batch_size:
            raise DataConfigError(
                f"data.num_train={num_train} < data.batch_size={batch_size}: the training loader drops a ragged "
                f"last batch, so no batch would be left: set data.num_train={20 * batch_size} (or a smaller "
                "data.batch_size)."
            )
        self.validate()

    # --- what a probe defines --------------------------------------------------------------------------------
    def generate(self, rng: np.random.Generator, n: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """n (x, y) sequences of seq_len tokens, each (n, seq_len)."""
        raise NotImplementedError

    def validate(self) -> None:
        """Raise DataConfigError (naming the setting and the fix) unless the settings can make sequences."""
        raise NotImplementedError

    @property
    def tokenizer(self) -> ProbeTokenizer:
        return ProbeTokenizer(self.vocab_size)

    # --- shared --------------------------------------------------------------------------------------------
    def _split(self, entropy: list[int], n: int) -> ProbeSequences:
        x, y = self.generate(np.random.default_rng(entropy), n, self.context_length)
        return ProbeSequences(torch.from_numpy(x), torch.from_numpy(y))

    def prepare_data(self) -> None:
        """Nothing to download or cache: the sequences are generated in `setup`."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.train_dataset = self._split([self.seed, 0], self.num_train)
        self.val_dataset = self._split([VAL_SEED, 1], self.num_val)

    def example(self, max_tokens: int) -> list[int]:
        """One short val-like sequence of at most `max_tokens` ids, for the attention-map callback."""
        n = min(max_tokens, self.context_length)
        if n < 4:  # the shortest sequence either probe can make
            return []
        x, _ = self.generate(np.random.default_rng([VAL_SEED, 2]), 1, n)
        return x[0].tolist()


class MQARDataModule(ProbeDataModule):
    """Multi-query associative recall: key-value pairs, then queries answered by the value bound earlier."""

    def __init__(
        self,
        vocab_size: int = 256,
        num_pairs: int = 8,
        num_queries: int | None = None,
        context_length: int = 64,
        num_train: int = 20000,
        num_val: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        self.num_pairs, self.num_queries = num_pairs, num_queries
        super().__init__(vocab_size, context_length, num_train, num_val, batch_size, seed, num_workers)

    def validate(self) -> None:
        probe_tasks.check_mqar(self.vocab_size, self.num_pairs, self.num_queries, self.context_length)

    def generate(self, rng: np.random.Generator, n: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = min(self.num_pairs, seq_len // 4)  # example() asks for short sequences: fewer pairs there
        # and fewer queries, as many as its slots hold (a query takes 2 tokens after the 2 * pairs of the pairs)
        queries = None if self.num_queries is None else min(self.num_queries, (seq_len - 2 * pairs) // 2)
        return probe_tasks.mqar(rng, n, seq_len, self.vocab_size, pairs, queries)

    @property
    def tokenizer(self) -> ProbeTokenizer:
        return ProbeTokenizer(self.vocab_size, probe_tasks.mqar_num_keys(self.vocab_size))


class InductionDataModule(ProbeDataModule):
    """Induction: a random sequence of distinct tokens followed by its repeat; scored on the repeat."""

    def __init__(
        self,
        vocab_size: int = 256,
        context_length: int = 64,
        num_train: int = 20000,
        num_val: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(vocab_size, context_length, num_train, num_val, batch_size, seed, num_workers)

    def validate(self) -> None:
        probe_tasks.check_induction(self.vocab_size, self.context_length)

    def generate(self, rng: np.random.Generator, n: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        return probe_tasks.induction(rng, n, seq_len, self.vocab_size)


PROBES: dict[str, type[ProbeDataModule]] = {
    "attention_lab.data.probes.MQARDataModule": MQARDataModule,
    "attention_lab.data.probes.InductionDataModule": InductionDataModule,
}
"""`data._target_` -> the probe class, for the config check (which settings exist, which rules join them)."""
