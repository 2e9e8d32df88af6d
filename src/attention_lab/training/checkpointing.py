"""Which checkpoint files a run keeps: best.ckpt and last.ckpt, one file on disk when they are the same.

A checkpoint of model=tiny with the GPT-2 tokenizer is 87 MB (the weights and AdamW's two moments), and in a run
whose validation loss still falls at the end, best.ckpt and last.ckpt hold the same step: two identical files.
`RunCheckpoint` is Lightning's ModelCheckpoint (best.ckpt by `val/loss`) that also writes last.ckpt itself,
after every validation and after best.ckpt: when best.ckpt was written by this very validation, last.ckpt
becomes a hard link to it instead of a second copy. A hard link is an ordinary file under both names (every
reader, `torch.load`, a resume, `cp`, see a file), and no name dangles when the other is removed.

Rewriting either name later never changes the other: Lightning saves through a temporary file and a rename
(`_atomic_save`), which gives the name a new file and leaves the linked one as it was (tested, together with a
resume from the linked last.ckpt).

Writing last.ckpt after best.ckpt also puts this callback's updated state (best score and path) into it.
guards.LastCheckpoint (still used for a plain ModelCheckpoint with save_last) runs before Lightning's
checkpoint callbacks, which Lightning moves to the end, so its last.ckpt holds the best score of the
validation before.

`save_top_k=0` keeps last.ckpt only (`callbacks=light`, for sweeps): one checkpoint per run. The best score is
still tracked, so metrics.json keeps its `best_val_loss`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

LAST = "last.ckpt"


def link_or_copy(source: Path, target: Path) -> bool:
    """Make `target` a hard link to `source`, replacing it atomically (a reader never finds it missing); False
    where the filesystem has no hard links, so the caller writes a copy."""
    tmp = target.with_name(f".{target.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint + last.ckpt after every validation, hard-linked to best.ckpt when they are the same step.

    `save_last` here means "write last.ckpt at every validation" (Lightning 2.6's own save_last rewrites it only
    when the monitored loss improved); Lightning's save_last is off, so the task's LastCheckpoint takeover (for
    plain ModelCheckpoints) leaves this one alone.
    """

    def __init__(self, *args: Any, save_last: bool = True, link_last: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, save_last=False, **kwargs)
        self.keep_last, self.link_last = save_last, link_last
        self.last_linked: bool | None = None  # how the latest last.ckpt was made (tests, metrics)

    @property
    def state_key(self) -> str:
        """Lightning keys a callback's state by its class name: kept as ModelCheckpoint's, so checkpoints written
        before this class existed restore their best score into it, and the other way round."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved_before = self._last_global_step_saved
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        if self.save_top_k == 0:
            self._track_best(trainer)
        if not self.keep_last or self.dirpath is None:
            return
        # a top-k file written by this validation (not one written earlier in the step, e.g. every_n_train_steps:
        # same weights, but saved before the validation and so resuming differently)
        written = self._last_checkpoint_saved if saved_before != self._last_global_step_saved else ""
        self._save_last(trainer, Path(self.dirpath) / LAST, Path(written) if written else None)

    def _save_last(self, trainer: L.Trainer, last: Path, same: Path | None) -> None:
        self.last_model_path = str(last)
        linked = False
        if self.link_last and same is not None and same.is_file():
            if trainer.is_global_zero:
                linked = link_or_copy(same, last)
            linked = trainer.strategy.broadcast(linked)  # every rank takes the same path: a save is collective
        if not linked:
            trainer.save_checkpoint(last, weights_only=False)  # all ranks take part; rank 0 writes
        self.last_linked = linked

    def _track_best(self, trainer: L.Trainer) -> None:
        """save_top_k=0 writes no best.ckpt, and Lightning then records no best score: keep it anyway."""
        current = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if current is None:
            return
        current = current.detach().clone()
        better = torch.lt if self.mode == "min" else torch.gt
        if self.best_model_score is None or bool(better(current, self.best_model_score.to(current.device))):
            self.best_model_score = current
