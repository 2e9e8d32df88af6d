"""Training on a recall probe: loss and accuracy over answers only, val/acc in TensorBoard, val_acc in metrics.json."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attention_lab.training.accuracy import IGNORE_INDEX, answer_counts
from attention_lab.training.task import train
from tests.training.helpers import LEAN_CALLBACKS, make_cfg, read_events, read_metrics

PROBE = [
    "data=mqar",
    "data.vocab_size=16",
    "data.num_pairs=2",
    "data.num_train=32",
    "data.num_val=16",
    "data.batch_size=8",
    "model.d_model=32",
    "model.n_layers=2",
    "model.context_length=16",
    "attention.num_heads=2",
    "optim.warmup_steps=1",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
]


def test_answer_counts_match_a_hand_count() -> None:
    # two sequences of 3 positions over a vocabulary of 4; answers at (0, 1), (1, 0), (1, 2)
    logits = torch.full((2, 3, 4), -5.0)
    logits[0, 1, 2] = logits[1, 0, 3] = logits[1, 2, 0] = 5.0  # argmax: 2, 3, 0
    logits[0, 0, 1] = logits[0, 2, 1] = logits[1, 1, 1] = 5.0  # non-answers: argmax irrelevant
    y = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX], [1, IGNORE_INDEX, 0]])
    loss, count, correct = answer_counts(logits, y)
    assert count.item() == 3 and correct.item() == 2  # (1, 0) predicts 3, the answer is 1
    by_hand = sum(float(F.cross_entropy(logits[b, t], y[b, t])) for b, t in [(0, 1), (1, 0), (1, 2)])
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)


def test_text_labels_give_the_plain_mean_loss() -> None:
    """Text has an answer at every position: the sum over count is the per-token cross-entropy as before."""
    logits, y = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    loss, count, _ = answer_counts(logits, y)
    assert count.item() == 10
    assert (loss / count).item() == pytest.approx(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item(), rel=1e-5)


def test_a_probe_run_reports_val_acc_in_metrics_and_tensorboard(tmp_path: Path, capsys) -> None:
    cfg = make_cfg(tmp_path, [*PROBE, "trainer.max_steps=4", "trainer.val_check_interval=2", "~callbacks.text_sample"])
    metrics = train(cfg)
    assert f"val acc {metrics['val_acc']:.4f}" in capsys.readouterr().out  # the end-of-run line says it too
    record = read_metrics(tmp_path / "run")
    assert record["status"] == "ok" and metrics["val_acc"] == record["val_acc"]
    assert 0.0 <= record["val_acc"] <= 1.0 and record["val_acc"] == record["last_val_acc"]
    assert record["best_val_acc"] >= record["val_acc"]
    assert math.isfinite(record["val_loss"])
    tags = read_events(tmp_path / "run")
    assert {"val/acc", "val/loss"} <= tags["scalars"]
    assert "attention/layer_0" in tags["images"]  # the maps draw the probe's example, not the text prompt


def test_a_text_run_has_no_accuracy(finished_run: Path) -> None:
    record = read_metrics(finished_run / "run")
    assert record["status"] == "ok"
    assert not {"val_acc", "best_val_acc", "last_val_acc"} & set(record)
    assert "val/acc" not in read_events(finished_run / "run")["scalars"]


@pytest.mark.slow
def test_a_tiny_multihead_learns_induction(tmp_path: Path) -> None:
    """The probe is learnable end to end: a 2-layer model gets the repeated half right (~10 s)."""
    overrides = [
        *PROBE,
        "data=induction",
        "data.vocab_size=32",
        "data.num_train=2048",
        "data.num_val=64",
        "data.batch_size=32",
        "model.context_length=32",
        "trainer.max_steps=300",
        "trainer.val_check_interval=300",
        *LEAN_CALLBACKS,
    ]
    overrides = [o for o in overrides if not o.startswith(("data.num_pairs", "data=mqar"))]
    assert train(make_cfg(tmp_path, overrides))["val_acc"] > 0.9
