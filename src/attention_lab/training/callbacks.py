"""Callbacks that make runs comparable in TensorBoard (and MLflow, W&B): attention maps, text samples,
throughput, hparams, and the Custom Scalars layout that opens on the losses.

Everything here runs at validation or at logging intervals, never per step: figures are rendered once per
validation, and device syncs happen only where a number is written.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from ..devices import device_name, device_peak_flops, synchronize
from ..flops import training_flops_per_token
from ..model import GPT
from ..sampling import generate
from ..viz import attention_entropy, attention_grid
from .loggers import log_hyperparams, log_images, takes_images
from .memory import peak_mb


def tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _label(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def encode_known(tokenizer, text: str) -> list[int]:
    """Encode, dropping characters a char tokenizer never saw in its corpus (a probe must not crash a run)."""
    chars = getattr(tokenizer, "chars", None)
    if chars is not None:
        known = set(chars)
        text = "".join(ch for ch in text if ch in known)
    return tokenizer.encode(text)


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning writes this validation's `val/loss` at, so images and scalars line up in TensorBoard."""
    loop = trainer.fit_loop.epoch_loop
    return getattr(loop, "_batches_that_stepped", trainer.global_step)


def finite_weights(module: torch.nn.Module) -> bool:
    """Callbacks draw and sample only from finite weights: a diverged model would crash them with an unrelated
    error (multinomial on NaN) and hide the real one, which the run guard reports."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def probe_example(datamodule: object) -> Any:
    """A recall probe's `example(max_tokens)` (data=mqar, data=induction), or None for text data."""
    example = getattr(datamodule, "example", None)
    return example if callable(example) else None


class AttentionMaps(L.Callback):
    """At each validation: one image per layer (heads as panels) of a fixed probe text, and per-head entropy.

    With a recall probe as data (no text to encode) the maps show one fixed example sequence of the probe."""

    def __init__(self, probe_text: str, max_tokens: int = 32):
        self.probe_text, self.max_tokens = probe_text, max_tokens

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not finite_weights(pl_module):
            return
        tokenizer = trainer.datamodule.tokenizer
        model = pl_module.model  # the uncompiled module: the explicit weight path is for the probe only
        limit = min(self.max_tokens, model.context_length)
        example = probe_example(trainer.datamodule)
        ids = example(limit) if example is not None else encode_known(tokenizer, self.probe_text)[:limit]
        if not ids:
            return
        idx = torch.tensor([ids], device=pl_module.device)  # (1, T)
        with torch.no_grad():
            _, weights = model(idx, return_weights=True)  # per layer (1, H, T, T)
        labels = [_label(tokenizer, i) for i in ids]
        step, scalars, images = logging_step(trainer), {}, {}
        draw = takes_images(trainer)
        for layer, w in enumerate(weights):
            w = w[0].float()  # (H, T, T)
            scalars.update(entropy_scalars(model.blocks[layer].attn, layer, w))
            if draw:
                title = f"layer {layer} - step {step}"
                images[f"attention/layer_{layer}"] = attention_grid(w.cpu(), labels, title=title)  # (Himg, Wimg, 3)
        log_images(trainer, images, step)  # every logger that records images: TensorBoard, MLflow, W&B
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step)


# Per-head entropy joins the other per-head numbers (telemetry.HEADS_PREFIX, `mech_heads/<score>/L{l}H{h}`): one
# TensorBoard section that can stay collapsed, instead of a top-level group of n_layers x n_heads charts that
# sorted first and opened before the losses.
ENTROPY_PREFIX = "mech_heads/entropy"


def entropy_scalars(attention: torch.nn.Module, layer: int, weights: torch.Tensor) -> dict[str, float]:
    """Per-head entropy of one layer's (H, T, T) map, or nothing when the map is not a distribution per row:
    sigmoid, differential and decayed (retention) maps, or a softmax whose sink took some mass. Their "entropy"
    would mean nothing, and a differential map's negative entries make it NaN."""
    if not getattr(attention, "weights_sum_to_one", True):
        return {}
    values = attention_entropy(weights).tolist()
    return {f"{ENTROPY_PREFIX}/L{layer}H{head}": value for head, value in enumerate(values)}


class TextSample(L.Callback):
    """At each validation: one sampled continuation of a fixed prompt, as TensorBoard text.

    Skipped for a recall probe: its data has no prompt text, and a free continuation of random filler shows
    nothing that `val/acc` does not measure."""

    def __init__(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, seed: int = 0):
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.last_text: str | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not finite_weights(pl_module):
            return
        if probe_example(trainer.datamodule) is not None:
            return
        tokenizer = trainer.datamodule.tokenizer
        model = pl_module.model
        ids = encode_known(tokenizer, self.prompt)[-model.context_length :]
        if not ids:
            return
        # a private generator: sampling must not shift the training run's random stream
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        out = generate(
            model,
            torch.tensor([ids], device=pl_module.device),
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            tokenizer.eot_token,
            generator=gen,
        )
        self.last_text = tokenizer.decode(out[0].tolist())
        tb = tensorboard(trainer)
        if tb is not None:
            text = "    " + self.last_text.replace("\n", "\n    ")  # markdown code block: keeps the layout
            tb.experiment.add_text("samples", text, logging_step(trainer))


class Throughput(L.Callback):
    """tokens/s, step time and peak memory every `log_every_n_steps` batches, validation time excluded; with
    them the achieved FLOP/s (tokens/s x training FLOPs per token, see flops.py) and, where the device's peak
    is known (devices.PEAK_TFLOPS), the model FLOPs utilisation (MFU).

    Totals (`tokens`, `seconds`) are kept for metrics.json; `summary_fields` adds the FLOPs fields to it.
    """

    def __init__(self, log_every_n_steps: int = 50):
        self.every = max(1, log_every_n_steps)
        self.tokens = 0
        self.seconds = 0.0
        self.last_tokens_per_sec: float | None = None  # the last closed interval's (the progress bar shows it)
        self._interval_tokens = 0
        self._interval_batches = 0
        self._interval_seconds = 0.0  # training time of the open interval, validations excluded
        self._start: float | None = None
        self._batch_tokens = 0  # tokens of one batch on all ranks (host metadata: numel needs no sync)
        self.flops_per_token: float | None = None  # training (forward + backward) at model.context_length
        self.peak_flops: float | None = None  # all devices together, FLOP/s; None: CPU or unknown device
        self._device = ""

    def _count_flops(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Once per fit (analytic, no forward pass): FLOPs per token and the devices' peak for this precision."""
        model = getattr(pl_module, "model", None)
        if isinstance(model, GPT):
            self.flops_per_token = training_flops_per_token(model, model.context_length)
        device = trainer.strategy.root_device
        self._device = device_name(device) + (f" at {trainer.precision}" if device.type == "cuda" else "")
        peak = device_peak_flops(device, str(trainer.precision))
        self.peak_flops = None if peak is None else peak * trainer.world_size

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """metrics.json: training FLOPs per token and in total (steps done x tokens per step, resumed steps
        included like tokens_seen; validation not counted), achieved FLOP/s and MFU (null, with a note, when
        the peak is unknown)."""
        if not self._device:  # stopped before training started: count now (the module may be on the CPU again)
            self._count_flops(trainer, pl_module)
        per_token = self.flops_per_token
        per_step = self._batch_tokens * trainer.accumulate_grad_batches
        # no batch seen here (a resumed run that had already finished): tokens per step unknown, unless no step
        tokens = trainer.global_step * per_step if per_step or not trainer.global_step else None
        rate = None if per_token is None or not self.tokens_per_sec else self.tokens_per_sec * per_token
        fields: dict[str, Any] = {
            "flops_per_token": per_token,
            "train_flops": None if per_token is None or tokens is None else tokens * per_token,
            "flops_per_sec": rate,
            "peak_flops": self.peak_flops,
            "mfu": None if rate is None or self.peak_flops is None else rate / self.peak_flops,
        }
        if self.peak_flops is None:
            fields["mfu_note"] = f"unknown peak for {self._device}"
        return fields

    def _pause(self, pl_module: L.LightningModule) -> None:
        """Bank the training time since the last (re)start; validation time is not training time."""
        synchronize(pl_module.device)
        now = time.perf_counter()
        if self._start is not None:
            self._interval_seconds += now - self._start
        self._start = now

    def _close_interval(self, pl_module: L.LightningModule) -> tuple[float, int, int]:
        """The interval's training seconds, tokens and batches (validations inside it excluded), added to the
        totals. A validation pauses the interval without closing it, so the counts reach log_every_n_steps even
        when validations come more often (val_check_interval < log_every_n_steps: no throughput logged, before)."""
        self._pause(pl_module)
        elapsed, tokens, batches = self._interval_seconds, self._interval_tokens, self._interval_batches
        self.seconds += elapsed
        self.tokens += tokens
        self._interval_tokens = self._interval_batches = 0
        self._interval_seconds = 0.0
        return elapsed, tokens, batches

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._count_flops(trainer, pl_module)
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_tokens = batch[0].numel() * trainer.world_size
        self._interval_tokens += self._batch_tokens
        self._interval_batches += 1
        if self._interval_batches >= self.every:
            elapsed, tokens, batches = self._close_interval(pl_module)
            if elapsed > 0:
                self.last_tokens_per_sec = tokens / elapsed
                pl_module.log("throughput/tokens_per_sec", tokens / elapsed, rank_zero_only=True)
                if self.flops_per_token is not None:
                    flops_per_sec = tokens / elapsed * self.flops_per_token
                    pl_module.log("throughput/flops_per_sec", flops_per_sec, rank_zero_only=True)
                    if self.peak_flops is not None:
                        pl_module.log("throughput/mfu", flops_per_sec / self.peak_flops, rank_zero_only=True)
                pl_module.log("time/step_ms", 1000 * elapsed / batches, rank_zero_only=True)
                pl_module.log("memory/peak_mb", peak_mb(pl_module.device), rank_zero_only=True)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:  # None during the sanity check, before training started
            self._pause(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            synchronize(pl_module.device)
            self._start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_interval(pl_module)

    @property
    def tokens_per_sec(self) -> float:
        """Over all training so far, the open interval included (a run stopped mid-interval still has a rate)."""
        tokens, seconds = self.tokens + self._interval_tokens, self.seconds + self._interval_seconds
        return tokens / seconds if seconds > 0 else 0.0


class HParams(L.Callback):
    """The flattened config to every logger; for TensorBoard's HParams tab with a real metric (`hp/val_loss`).

    Lightning's own call logs no metric when `default_hp_metric=False`; this one registers `hp/val_loss`
    (first value: the loss of a uniform guess, log(vocab)), which validation then keeps updating. MLflow and
    W&B get the same parameters (loggers.log_hyperparams) and every scalar, `hp/val_loss` included.
    """

    def __init__(self, params: dict[str, Any], initial_loss: float):
        self.params, self.initial_loss = params, initial_loss

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            log_hyperparams(trainer, self.params, {"hp/val_loss": self.initial_loss})


# TensorBoard's Custom Scalars tab, in this order: losses first. Chart tags are regular expressions.
SCALARS_LAYOUT: dict[str, dict[str, list]] = {
    "loss": {
        "train and val loss": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
        "val perplexity": ["Multiline", [r"^val/ppl$"]],
        "val accuracy (recall probes)": ["Multiline", [r"^val/acc$"]],
        "val loss by length (eval.lengths)": ["Multiline", [r"^val_len/[^/]+/loss$"]],
    },
    "speed": {
        "tokens/s": ["Multiline", [r"^throughput/tokens_per_sec$"]],
        "step time (ms)": ["Multiline", [r"^time/step_ms$"]],
        "peak memory (MB)": ["Multiline", [r"^memory/peak_mb$"]],
    },
    "mechanisms": {
        "induction, previous token (best head)": ["Multiline", [r"^mech/induction_best$", r"^mech/prev_token_best$"]],
        "sink mass (mean)": ["Multiline", [r"^mech/sink_mass_mean$"]],
        "attention distance (mean, tokens)": ["Multiline", [r"^mech/distance_mean$"]],
    },
    "schedule": {"learning rate": ["Multiline", [r"^lr$"]]},
}


class ScalarsLayout(L.Callback):
    """Writes SCALARS_LAYOUT once per run: TensorBoard's Custom Scalars tab then opens on the losses (train and
    val in one chart) whatever other groups a run logs; TensorBoard merges the same layout from every run."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = tensorboard(trainer)
        if tb is not None and trainer.is_global_zero:
            tb.experiment.add_custom_scalars(SCALARS_LAYOUT)
