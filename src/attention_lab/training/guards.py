"""Stops that leave a record: a signal (SIGINT/SIGTERM) or a non-finite loss ends the run with a checkpoint
to resume from and an exception the task turns into `metrics.json` and an exit status.

Signals only set a flag; the run stops at the next step boundary, where the weights, the optimizer and the
data position agree, so the checkpoint written there resumes exactly. A second Ctrl+C stops at once.
SIGUSR1 (Lightning's SLURM requeue) is left to Lightning.

Divergence is watched without a host sync per step: the loss's finiteness is accumulated on the device and
read at logging intervals, and every checkpoint save first checks that the weights are finite, so a NaN
never overwrites the last good `last.ckpt`. The validation loss is checked once per validation, before any
other callback sees the model (the guard is the first callback): finite weights can still overflow to a NaN
loss, and sampling text from such a model would crash with an unrelated error.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .callbacks import finite_weights

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report them


class RunInterrupted(SystemExit):
    """A signal stopped the run at a step boundary; `checkpoint` resumes it."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, during: str | None = None) -> None:
        super().__init__(SIGNAL_EXIT.get(signum, 1))
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.during = during  # e.g. "eval.lengths": training had finished, what came after it was stopped


class RunDiverged(RuntimeError):
    """The loss (or the weights) became non-finite at `step`."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"{what} at step {step}")
        self.step, self.what = step, what


class StopNow(SystemExit):
    """A second Ctrl+C: stop at once, not at the next step boundary. Deliberately not a KeyboardInterrupt:
    Lightning catches those inside fit and calls sys.exit(1), which would lose the exit status (130) and the
    run's record; any other exception passes through Lightning to the task, which records the stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(SIGNAL_EXIT.get(signum, 1))
        self.signum = signum


class SignalFlag:
    """Handlers for SIGINT and SIGTERM. While the run is set up (`deferred` false) a signal stops it at once,
    since nothing is trained yet; once training starts it is only recorded, and the run stops at the next step
    boundary with a checkpoint (RunGuard)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.deferred:
            raise StopNow(signum)  # tokenizing or building: nothing to save, so stop now
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise StopNow(signum)  # a second Ctrl+C: the user wants out now
        self.signum = self.signum or signum

    def install(self) -> None:
        for signum in SIGNAL_EXIT:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class RunGuard(L.Callback):
    """Turns a recorded signal or a non-finite loss into a clean stop (see the module docstring)."""

    def __init__(self, flag: SignalFlag, checkpoint_dir: Path, check_every: int = 10) -> None:
        self.flag, self.checkpoint_dir, self.check_every = flag, checkpoint_dir, max(1, check_every)
        self._bad: torch.Tensor | None = None  # device-side: has any loss been non-finite since the last check
        self._bad_val: torch.Tensor | None = None  # the same for this validation's batch losses
        self._saved: Path | None = None

    # --- signals -----------------------------------------------------------------------------------------
    def _save(self, trainer: L.Trainer) -> Path:
        path = self.checkpoint_dir / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # all ranks take part; rank 0 writes
        self._saved = path
        return path

    def _stop_for_signal(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_divergence(trainer, pl_module)  # never save a diverged state as "resume from here"
        path = self._saved or self._save(trainer)
        raise RunInterrupted(self.flag.signum or signal.SIGTERM, trainer.global_step, path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            bad = ~torch.isfinite(loss.detach())
            self._bad = bad if self._bad is None else self._bad | bad
        if trainer.global_step % self.check_every == 0:
            self.check_divergence(trainer, pl_module)
        if self._signalled(trainer):
            self._stop_for_signal(trainer, pl_module)

    def _signalled(self, trainer: L.Trainer) -> bool:
        local = self.flag.signum is not None or trainer.received_sigterm
        if trainer.world_size == 1:
            return local
        # every rank must stop at the same step (the checkpoint save is collective): agree at check intervals
        if trainer.global_step % self.check_every:
            return False
        return trainer.strategy.reduce_boolean_decision(local, all=False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # SIGTERM during validation: Lightning raises there; the weights are at a step boundary, so save
        if isinstance(exception, SIGTERMException) and self._saved is None and finite_weights(pl_module):
            self._save(trainer)

    @property
    def saved(self) -> Path | None:
        return self._saved

    # --- divergence --------------------------------------------------------------------------------------
    def check_divergence(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bad is not None and bool(self._bad):  # the one host sync, at logging intervals only
            raise RunDiverged(trainer.global_step, "the training loss became non-finite (NaN or inf)")
        self._bad = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check_divergence(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and isinstance(outputs, torch.Tensor):  # validation_step returns its loss
            bad = ~torch.isfinite(outputs.detach())
            self._bad_val = bad if self._bad_val is None else self._bad_val | bad

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bad, self._bad_val = self._bad_val, None
        if trainer.sanity_checking or bad is None:
            return
        # one host sync per validation; every rank takes the same decision (a NaN on one rank's batches stops all)
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            raise RunDiverged(trainer.global_step, "the validation loss became non-finite (NaN or inf)")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not finite_weights(pl_module):
            raise RunDiverged(trainer.global_step, "the weights became non-finite")


class LastCheckpoint(L.Callback):
    """Rewrites `path` (a run's last.ckpt) at the end of every validation, in place of a ModelCheckpoint's
    `save_last`: Lightning 2.6 rewrites last.ckpt only when the same ModelCheckpoint also wrote a top-k checkpoint
    at that step, i.e. only when the monitored loss improved. last.ckpt would then lag behind the run, and a resume
    or an extension ("to train further") would silently start from an older step. RunGuard's on_save_checkpoint
    still refuses non-finite weights."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)  # all ranks take part; rank 0 writes
