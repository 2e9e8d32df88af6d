"""What a run prints on the terminal: one progress bar over the whole run, and less library noise.

Lightning's bar counts batches per epoch ("Epoch 4: 15/56") with an ETA for that epoch, which says nothing
about a step-based run. `RunProgressBar` counts optimizer steps against `trainer.max_steps`, so its ETA is the
run's (at the run's average pace, validations included, since every later validation costs the same), and
its postfix holds the training loss, the latest validation loss and tokens/s. It prints the run folder and the
TensorBoard command before the first step. Validations draw no bar of their own (a few seconds each; in a log
file every refresh of a second bar is another line): the main bar says "validating" meanwhile.

Cost: the postfix reads Lightning's progress-bar metrics, one host sync (`.item()` of the loss) per refresh, as
Lightning's own bar does. A refresh happens every `refresh_rate` steps and at most every `min_interval_s`
seconds, so a fast GPU run is not synced several times a second; tokens/s comes from the Throughput callback's
last interval (host numbers, no sync of its own) and the validation loss is read once per validation.

`quiet_library_noise()` drops what Lightning and torch print per job that tells the user nothing: the "💡 Tip"
adverts, "TPU available: False" lines, the same "GPU available: ..." line again for every job of a sweep,
"`Trainer.fit` stopped: `max_steps=N` reached" (the run's summary follows at once), and
warnings about Lightning's own internals (a torch deprecation inside Lightning's pytree helper) or about
choices this project makes on purpose (a resume writes into a new run folder; a step-based run may log less
often than once per epoch). Information stays: the first device line, the seed, the model summary and every
warning about the user's settings.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from .callbacks import Throughput
from .summary import tensorboard_hint

TRAIN_DESCRIPTION = "train"
VALIDATING = "validating"
_hint_shown = False  # the TensorBoard command, printed before the first run of the process


def si(value: float) -> str:
    """12345.6 -> '12.3k': tokens/s in a few characters."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def run_total(trainer: L.Trainer) -> int | None:
    """The step the run ends at: trainer.max_steps, else Lightning's estimate (epochs x batches); None if unbounded."""
    if trainer.max_steps and trainer.max_steps > 0:
        return trainer.max_steps
    estimate = trainer.estimated_stepping_batches
    return int(estimate) if math.isfinite(estimate) else None


class RunProgressBar(TQDMProgressBar):
    """One bar per run: global step / max_steps, the run's ETA, train loss, latest val loss, tokens/s."""

    def __init__(
        self,
        refresh_rate: int = 5,
        min_interval_s: float = 0.5,
        run_dir: str | None = None,
        log_dir: str | None = None,
        process_position: int = 0,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.min_interval_s = min_interval_s
        self.run_dir, self.log_dir = run_dir, log_dir  # printed at the start: this run, and what TensorBoard serves
        self.val_loss: float | None = None  # the latest validation's, read once per validation
        self.val_step: int | None = None
        self._shown_step = -1
        self._shown_at = 0.0

    # ------------------------------------------------------------------------------------------- the bars
    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=TRAIN_DESCRIPTION,
            total=run_total(self.trainer),
            initial=self.trainer.global_step,  # a resumed run starts where it stopped
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,  # the run's average pace: an ETA for the whole run, validations included
            unit="step",
            bar_format=self.BAR_FORMAT,
        )

    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)  # one batch; the main bar says what follows

    def init_validation_tqdm(self) -> Tqdm:
        if self.trainer.state.fn != "fit":  # `trainer.validate()` alone: a bar of its own, as Lightning's
            return super().init_validation_tqdm()
        return Tqdm(disable=True)

    # ------------------------------------------------------------------------------------------- the hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The run folder; before the first run of the process (not every job of a sweep) the TensorBoard command
        too, to watch the run while it trains."""
        global _hint_shown
        super().on_fit_start(trainer, pl_module)
        if self.is_enabled and trainer.is_global_zero and self.run_dir:
            hint = "" if _hint_shown else f"\n{tensorboard_hint(self.log_dir or self.run_dir)}"
            _hint_shown = True
            print(f"run folder: {self.run_dir}{hint}", flush=True)

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self._shown_step, self._shown_at = trainer.global_step, time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Nothing: the bar spans the run, not the epoch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if bar.disable or step == self._shown_step:  # (gradient accumulation: several batches per step)
            return
        now = time.monotonic()
        last = bar.total is not None and step >= bar.total
        if not last and (step - self._shown_step < self.refresh_rate or now - self._shown_at < self.min_interval_s):
            return
        self._shown_step, self._shown_at = step, now
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the postfix is refreshed with the bar."""

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        if not trainer.sanity_checking and self._train_progress_bar is not None:
            self.train_progress_bar.n = trainer.global_step  # the step being validated (no metrics read: no sync)
            self.train_progress_bar.set_description(VALIDATING)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            value = trainer.callback_metrics.get("val/loss")
            if value is not None:
                self.val_loss, self.val_step = float(value), trainer.global_step  # once per validation
        super().on_validation_end(trainer, pl_module)  # closes the (hidden) bar, refreshes the postfix
        if not trainer.sanity_checking and self._train_progress_bar is not None:
            self.train_progress_bar.set_description(TRAIN_DESCRIPTION)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The training loss (Lightning's progress-bar metrics), the latest validation loss with its step, and
        tokens/s; no `v_num` (the run folder was printed at the start)."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items.pop("val/loss", None)  # shown with its step instead
        if self.val_loss is not None:
            items["val/loss"] = f"{self.val_loss:.3f}@{self.val_step}"
        throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
        if throughput is not None and throughput.last_tokens_per_sec:
            items["tok/s"] = si(throughput.last_tokens_per_sec)
        return items


# ------------------------------------------------------------------------------------------------- noise
class _LightningNoise(logging.Filter):
    """Drops Lightning's adverts and absent-hardware lines; lets each distinct device line through once per process."""

    DROP = ("💡 Tip:", "TPU available: False", "HPU available: False", "`Trainer.fit` stopped: `max_steps=")
    ONCE = ("GPU available:", "LOCAL_RANK:")

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.DROP):
            return False
        if message.startswith(self.ONCE):
            if message in self.seen:
                return False
            self.seen.add(message)
        return True


_NOISE = _LightningNoise()
NOISY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")

# (message regex, category): warnings that say nothing the user can act on
QUIET_WARNINGS = (
    # torch deprecated LeafSpec; Lightning's own pytree helper still builds one (nothing of ours)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # a resume writes into a new run folder by design, so the checkpoint's folder always differs
    (r"The dirpath has changed from", UserWarning),
    # only a requeued SLURM job or a resumed sweep job rejoins a folder with checkpoints, and on purpose (run_dir
    # refuses a non-empty folder otherwise)
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
    # a step-based run logs every log_every_n_steps across epochs; a short epoch is not a problem
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
    # torch's note on a checkpoint that is no checkpoint ("please file an issue"): our error names the file and fix
    (r"Detected pickle protocol \d+ in the checkpoint", UserWarning),
)


def quiet_library_noise() -> None:
    """Install the log filter and the warning filters (idempotent: call it at the start of every run)."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _NOISE not in logger.filters:
            logger.addFilter(_NOISE)
    for message, category in QUIET_WARNINGS:  # filterwarnings replaces an identical filter instead of adding one
        warnings.filterwarnings("ignore", message=message, category=category)
