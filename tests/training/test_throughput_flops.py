"""The Throughput callback's FLOPs: achieved FLOP/s and MFU in TensorBoard, FLOPs fields in metrics.json."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from attention_lab.analysis.events import _accumulator
from attention_lab.checkpoint import read_checkpoint
from attention_lab.flops import training_flops_per_token
from attention_lab.model import GPT
from attention_lab.training import callbacks
from attention_lab.training.callbacks import Throughput
from tests.training.helpers import FINISHED_STEPS, read_metrics


def test_metrics_json_and_tensorboard_have_the_flops_of_a_cpu_run(finished_run: Path) -> None:
    """multihead, d_model 32, 2 layers, 2 heads, context 32, batch 4: the closed form of flops.py by hand."""
    run = finished_run / "run"
    metrics = read_metrics(run)
    vocab = read_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["model"]["vocab_size"]
    d, t, layers = 32, 32, 2
    forward = layers * (8 * d * d + 4 * t * d + 16 * d * d) + 2 * d * vocab  # per token: proj, (T,T), MLP; head
    assert metrics["flops_per_token"] == 3 * forward
    assert metrics["train_flops"] == FINISHED_STEPS * 4 * t * 3 * forward
    assert metrics["flops_per_sec"] == pytest.approx(metrics["tokens_per_sec"] * 3 * forward)
    assert metrics["mfu"] is None and metrics["peak_flops"] is None
    assert metrics["mfu_note"] == "unknown peak for cpu"

    acc = _accumulator(run)
    tags = acc.Tags()["scalars"]
    assert "throughput/mfu" not in tags  # no peak, no MFU
    rates = {e.step: e.value for e in acc.Scalars("throughput/tokens_per_sec")}
    flops = {e.step: e.value for e in acc.Scalars("throughput/flops_per_sec")}
    assert flops and flops.keys() == rates.keys()
    for step, value in flops.items():
        assert value == pytest.approx(rates[step] * 3 * forward, rel=1e-5)  # logged as float32


class Recorder:
    """The bits of a LightningModule that Throughput touches: the model, the device and log()."""

    def __init__(self, model: GPT) -> None:
        self.model, self.device, self.logged = model, torch.device("cpu"), {}

    def log(self, name: str, value: float, **kwargs: Any) -> None:
        self.logged[name] = value


def test_mfu_is_logged_and_summarised_when_the_peak_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """A known peak of 1e12 FLOP/s per device, 2 devices, 2 accumulated batches of (3, 16) tokens per step."""
    monkeypatch.setattr(callbacks, "device_peak_flops", lambda device, precision: 1e12)
    model = GPT(40, 16, 16, 1, {"name": "gqa", "num_heads": 2, "num_kv_heads": 1})
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        precision="bf16-mixed",
        world_size=2,
        global_step=0,
        accumulate_grad_batches=2,
    )
    module = Recorder(model)
    meter = Throughput(log_every_n_steps=2)
    meter.on_train_start(trainer, module)
    batch = (torch.zeros(3, 16, dtype=torch.long), torch.zeros(3, 16, dtype=torch.long))
    for i in range(4):
        meter.on_train_batch_end(trainer, module, None, batch, i)
    trainer.global_step = 2
    per_token = training_flops_per_token(model, 16)
    logged = module.logged
    assert logged["throughput/flops_per_sec"] == pytest.approx(logged["throughput/tokens_per_sec"] * per_token)
    assert logged["throughput/mfu"] == pytest.approx(logged["throughput/flops_per_sec"] / 2e12)
    fields = meter.summary_fields(trainer, module)
    assert fields["flops_per_token"] == per_token
    assert fields["train_flops"] == 2 * (3 * 16 * 2 * 2) * per_token  # steps x (batch x devices x accumulation)
    assert fields["peak_flops"] == 2e12
    assert fields["mfu"] == pytest.approx(meter.tokens_per_sec * per_token / 2e12)
    assert "mfu_note" not in fields


class _Module:
    """What Throughput reads from a LightningModule: the device and log()."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.logged: list[str] = []

    def log(self, name: str, value: float, **kwargs: object) -> None:
        self.logged.append(name)


def test_validations_more_often_than_the_logging_interval_still_log_throughput() -> None:
    """Review: with val_check_interval=5 < log_every_n_steps=10 every validation closed the interval, so the
    batch count never reached 10 and no throughput/* scalar was ever written."""
    callback, module = Throughput(log_every_n_steps=10), _Module()
    trainer = SimpleNamespace(world_size=1)
    batch = (torch.zeros(4, 8, dtype=torch.long), torch.zeros(4, 8, dtype=torch.long))
    callback._start = time.perf_counter()
    for step in range(1, 21):
        callback.on_train_batch_end(trainer, module, None, batch, step)
        if step % 5 == 0:
            callback.on_validation_start(trainer, module)
            callback.on_validation_end(trainer, module)
    assert module.logged.count("throughput/tokens_per_sec") == 2  # at steps 10 and 20
    assert callback.tokens == 20 * 32 and callback.tokens_per_sec > 0
