"""Length generalisation as a measurement: the final model's val loss at several multiples of its context.

A position scheme is judged by what happens past the length it was trained on, so the final weights are
evaluated on the validation split cut into windows of each length in `eval.lengths` (multiples of
model.context_length). Every length predicts the same tokens where the split allows it (a span that every requested
length divides, whether or not this model can run it, so runs with learned positions are scored on the same text
too), so a loss that rises with length is the model's doing, not a different stretch of text.

The mean loss of a long window mixes two things: positions past the trained length, and more context for every
token. So besides it, `val_loss_tail_by_length` is the mean loss of the last context_length positions of each
window only (at 1x the same number): the positions furthest past the trained length, where a scheme that does not
extrapolate breaks. The loss per position at the longest length shows where in a window that happens.

Results go to metrics.json (through RunSummary), and to every logger as `val_len/<tokens>/loss` plus, for
TensorBoard, one line plot `val_len/loss_by_position`. A length that cannot be evaluated (learned positions past
their table, a split too short for one window) is recorded as null with its reason, never an error.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn

from ..viz import loss_by_position_figure
from .callbacks import finite_weights, logging_step, tensorboard
from .guards import RunInterrupted, SignalFlag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowPlan:
    """How many windows of each length to evaluate, and why the other lengths are not evaluated."""

    windows: dict[int, int]  # token length -> whole windows, for the lengths that are evaluated
    skipped: dict[int, str]  # token length -> reason, for the lengths that are not
    same_span: bool  # every evaluated length predicts exactly the same tokens


@dataclass(frozen=True)
class PositionLoss:
    """Mean loss per position at the longest evaluated length, averaged over buckets of `bucket_size` positions."""

    length: int
    bucket_size: int
    loss: list[float]


@dataclass
class LengthResults:
    """Everything one evaluation found; `metrics()` is its part of metrics.json."""

    loss: dict[int, float | None] = field(default_factory=dict)  # token length -> mean loss per token (or None)
    tail: dict[int, float | None] = field(default_factory=dict)  # ... of the last context_length positions only
    tokens: dict[int, int] = field(default_factory=dict)  # token length -> tokens predicted
    not_applicable: dict[int, str] = field(default_factory=dict)  # token length -> why its loss is None
    by_position: PositionLoss | None = None

    def metrics(self) -> dict[str, Any]:
        """JSON keys are strings: token lengths become "128", "256", ..."""
        return {
            "val_loss_by_length": {str(n): value for n, value in sorted(self.loss.items())},
            "val_loss_tail_by_length": {str(n): value for n, value in sorted(self.tail.items())},
            "eval_not_applicable": {str(n): reason for n, reason in sorted(self.not_applicable.items())},
            "eval_tokens": {str(n): count for n, count in sorted(self.tokens.items())},
            "loss_by_position": None if self.by_position is None else vars(self.by_position).copy(),
        }


def eval_windows(num_tokens: int, lengths: Sequence[int], max_length: int | None = None) -> WindowPlan:
    """Windows per token length over a split of `num_tokens` tokens (a window of L reads L + 1 tokens).

    The span every length cuts is the largest multiple of lcm(lengths that fit the split) in the num_tokens - 1
    targets, so each length predicts the same tokens, and so does every other run asked for the same lengths on
    the same split: the lengths a model cannot run (learned positions) still count in the lcm. When not even one
    lcm block fits, each length takes as many whole windows as fit on its own (the token counts then differ;
    `same_span` is False).
    """
    skipped: dict[int, str] = {}
    fitting: list[int] = []
    in_split = [n for n in sorted(set(lengths)) if n <= num_tokens - 1]
    for length in sorted(set(lengths)):
        if length > num_tokens - 1:
            skipped[length] = (
                f"the val split has {num_tokens} tokens and one window of {length} needs {length + 1}: "
                "use more text (data.path=...) or a larger data.val_fraction"
            )
        elif max_length is not None and length > max_length:
            skipped[length] = f"learned positions stop at context_length={max_length}"
        else:
            fitting.append(length)
    if not fitting:
        return WindowPlan({}, skipped, same_span=False)
    block = math.lcm(*in_split)
    span = (num_tokens - 1) // block * block
    if span > 0:
        return WindowPlan({n: span // n for n in fitting}, skipped, same_span=True)
    return WindowPlan({n: (num_tokens - 1) // n for n in fitting}, skipped, same_span=False)


def bucket_means(values: Tensor, buckets: int) -> tuple[int, Tensor]:
    """(bucket_size, means) of a (L,) curve averaged over equal buckets of consecutive positions.

    The buckets must be equal, so when `buckets` does not divide L the count used is the largest divisor of L
    that is <= buckets (L = 96 with 16 asked for gives 12 buckets of 8).
    """
    length = values.shape[0]
    count = max(d for d in range(1, min(buckets, length) + 1) if length % d == 0)
    size = length // count
    return size, values.view(count, size).mean(dim=1)  # (count,)


class EvalStopped(Exception):
    """`should_stop` said so between two batches (a signal arrived during the evaluation)."""


def _never() -> bool:
    return False


def position_loss_sums(
    model: nn.Module,
    tokens: Tensor,
    length: int,
    windows: int,
    batch_size: int,
    should_stop: Callable[[], bool] = _never,
) -> Tensor:
    """Loss summed over `windows` non-overlapping windows of `length`, per position: (length,), on the device.

    Window i reads tokens[i*L : (i+1)*L] and predicts tokens[i*L+1 : (i+1)*L+1]. Sums stay on the device (no
    sync per batch). Call under torch.no_grad() with the model in eval mode (evaluate_lengths does). Raises
    EvalStopped before a batch when `should_stop()` (a host-side flag: no device sync).
    """
    x_all = tokens[: windows * length].view(windows, length)  # (W, L)
    y_all = tokens[1 : windows * length + 1].view(windows, length)  # (W, L)
    sums = torch.zeros(length, device=tokens.device, dtype=torch.float32)  # (L,)
    for start in range(0, windows, batch_size):
        if should_stop():
            raise EvalStopped
        x, y = x_all[start : start + batch_size], y_all[start : start + batch_size]  # (B, L), (B, L)
        logits = model(x)  # (B, L, vocab)
        # float32: the loss of a half-precision forward, summed over many windows, would lose its digits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")  # (B * L,)
        sums += loss.view(-1, length).sum(dim=0)  # (L,)
    return sums


def evaluate_lengths(
    model: nn.Module,
    tokens: Tensor,
    lengths: Sequence[int],
    batch_tokens: int,
    position_buckets: int = 16,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    tail: int | None = None,
    should_stop: Callable[[], bool] = _never,
) -> LengthResults:
    """The model's mean loss per token on `tokens` (a 1-D split) at each token length, plus the per-position
    curve at the longest evaluated one.

    A batch holds about `batch_tokens` tokens (max(1, batch_tokens // L) windows), so activations and logits
    stay the size of a training batch's whatever the length (an explicit (L, L) attention matrix still grows
    with L: B * L^2 = batch_tokens * L). The model runs in eval mode under torch.no_grad() and
    `forward_context` (the trainer's precision), and gets its train/eval mode back afterwards. One transfer to
    the host at the end. `tail` (the training context) also gives the loss of each window's last `tail`
    positions; `should_stop` is checked before every batch (EvalStopped).
    """
    device = next(model.parameters()).device
    plan = eval_windows(len(tokens), lengths, getattr(model, "max_length", None))
    results = LengthResults(not_applicable=dict(plan.skipped))
    results.loss = dict.fromkeys(plan.skipped)
    if not plan.windows:
        return results
    needed = max(n * w for n, w in plan.windows.items()) + 1
    on_device = tokens[:needed].to(device=device, dtype=torch.long)  # (needed,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), forward_context():
            sums = {
                n: position_loss_sums(model, on_device, n, w, max(1, batch_tokens // n), should_stop)
                for n, w in plan.windows.items()
            }
    finally:
        model.train(was_training)
    longest, count = max(sums), len(sums)
    last = {n: min(tail or n, n) for n in sums}  # positions in each window's tail
    totals = torch.stack([s.sum() for s in sums.values()])  # (num lengths,)
    tails = torch.stack([s[-last[n] :].sum() for n, s in sums.items()])  # (num lengths,)
    host = torch.cat([totals, tails, sums[longest]]).cpu()  # the one transfer: totals, tails, the longest curve
    rows = zip(plan.windows.items(), host[:count].tolist(), host[count : 2 * count].tolist(), strict=True)
    for (n, w), total, tail_total in rows:
        results.tokens[n] = n * w
        mean, tail_mean = total / (n * w), tail_total / (last[n] * w)
        results.loss[n] = mean if math.isfinite(mean) else None
        results.tail[n] = tail_mean if math.isfinite(tail_mean) else None
        if not math.isfinite(mean):
            results.not_applicable[n] = "the loss at this length is not finite (NaN or inf)"
    results.tail.update(dict.fromkeys(plan.skipped))
    per_position = host[2 * count :] / plan.windows[longest]  # (L,) mean loss at each position
    size, means = bucket_means(per_position, position_buckets)
    results.by_position = PositionLoss(longest, size, means.tolist())
    return results


class LengthEval(L.Callback):
    """At the end of training, the final weights' val loss at each of `lengths` x model.context_length tokens.

    Runs in `on_train_end`, not `on_fit_end`: Lightning tears the strategy down between the two, which moves the
    model to the CPU and tears down the precision plugin, so an evaluation there would run on the CPU. RunSummary (an
    on_fit_end callback) then finds `results`. Only rank 0 evaluates, and only finite weights.
    """

    def __init__(self, lengths: Sequence[int], position_buckets: int = 16, flag: SignalFlag | None = None):
        """lengths: multiples of model.context_length, as in `eval.lengths`; flag: the run's signal flag, so a
        SIGINT/SIGTERM during the evaluation stops the run (status interrupted) instead of being lost."""
        self.lengths = sorted(set(lengths))
        self.position_buckets = position_buckets
        self.flag = flag
        self.results: LengthResults | None = None

    def _signalled(self) -> bool:
        return self.flag is not None and self.flag.signum is not None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not finite_weights(pl_module):
            return
        model = pl_module.model  # the uncompiled GPT: a compiled one would recompile for every length
        context = model.context_length
        lengths = [m * context for m in self.lengths]
        if isinstance(trainer.strategy, FSDPStrategy):  # sharded weights: one rank alone cannot run the model
            reason = "not evaluated under trainer.strategy=fsdp (the weights are sharded across ranks)"
            self.results = LengthResults(loss=dict.fromkeys(lengths), not_applicable=dict.fromkeys(lengths, reason))
            log.warning("eval.lengths: %s", reason)
            return
        datamodule = trainer.datamodule
        val = datamodule.val_dataset.tokens  # (N_val,) the whole val split
        batch_tokens = getattr(datamodule, "batch_size", 1) * context
        try:
            if self._signalled():
                raise EvalStopped
            self.results = evaluate_lengths(
                model,
                val,
                lengths,
                batch_tokens,
                self.position_buckets,
                trainer.precision_plugin.forward_context,
                tail=context,
                should_stop=self._signalled,
            )
        except EvalStopped:
            # training is complete and checkpointed; the signal stops the run (and a sweep) as it would mid-training
            raise RunInterrupted(self.flag.signum, trainer.global_step, None, during="eval.lengths") from None
        self._log(trainer, context)

    def _log(self, trainer: L.Trainer, context: int) -> None:
        results, step = self.results, logging_step(trainer)
        scalars = {f"val_len/{n}/loss": value for n, value in results.loss.items() if value is not None}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step)
        tb, curve = tensorboard(trainer), results.by_position
        if tb is not None and curve is not None:
            image = loss_by_position_figure(curve.loss, curve.bucket_size, context, title=f"step {step}")
            tb.experiment.add_image("val_len/loss_by_position", image, step, dataformats="HWC")
