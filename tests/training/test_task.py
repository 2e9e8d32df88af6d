"""The training task end to end on tiny settings: every variant trains, the last step is validated and
checkpointed, TensorBoard gets every tag, and corpus problems are caught before the model is built."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from attention_lab.attention import available
from attention_lab.data import DataConfigError
from attention_lab.training.task import train
from tests.training.helpers import (
    CORPUS,
    LEAN_CALLBACKS,
    ZeroWeightsAt,
    add_callback,
    make_cfg,
    read_events,
    read_metrics,
    tiny,
)


def test_context_longer_than_corpus_fails_before_the_model_is_built(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("tiny corpus " * 10)
    cfg = make_cfg(tmp_path, [*tiny(corpus=short), "model.context_length=64"])
    with pytest.raises(DataConfigError, match=r"context_length"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", available())
def test_fast_dev_run_every_variant(tmp_path: Path, corpus: Path, name: str) -> None:
    cfg = make_cfg(tmp_path, [f"attention={name}", *tiny(name, corpus=corpus), "+trainer.fast_dev_run=2"])
    metrics = train(cfg)
    assert metrics["status"] == "ok"
    assert metrics["global_step"] == 2
    assert metrics["val_loss"] is not None and torch.isfinite(torch.tensor(metrics["val_loss"]))


@pytest.mark.slow
def test_short_run_lowers_val_loss_and_logs_everything(tmp_path: Path, corpus: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        [
            *tiny(corpus=corpus),
            "trainer.max_steps=60",
            "trainer.val_check_interval=30",
            "attention.dropout=0.0",
        ],
    )
    metrics = train(cfg)
    run = tmp_path / "run"
    saved = read_metrics(run)
    assert saved["status"] == "ok" and saved["global_step"] == 60
    vocab = len(set(CORPUS))
    assert saved["val_loss"] < math.log(vocab) - 1.0, "60 steps on a repetitive corpus must beat a uniform guess"
    assert saved["best_val_loss"] <= saved["val_loss"] + 1e-6
    assert saved["tokens_seen"] == 60 * 4 * 32 and saved["tokens_per_sec"] > 0
    assert saved["params"]["total"] == metrics["params"]["total"] > 0
    assert saved["warmup_steps_used"] == 2
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    tags = read_events(run)
    for scalar in ("train/loss", "val/loss", "val/ppl", "lr", "throughput/tokens_per_sec", "hp/val_loss"):
        assert scalar in tags["scalars"], scalar
    assert "mech_heads/entropy/L1H1" in tags["scalars"]  # per-head entropy, in the per-head section
    assert {"attention/layer_0", "attention/layer_1"} <= tags["images"]
    assert "samples/text_summary" in tags["tensors"]
    assert tags["metrics"] == {"hp/val_loss"}, "the HParams tab needs a real metric, not hp_metric=-1"
    assert {"attention.name", "attention.num_heads", "model.d_model", "params/total"} <= tags["hparams"]


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_last_step_is_validated_and_checkpointed(tmp_path: Path, corpus: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        [
            *tiny(corpus=corpus),
            "trainer.max_steps=7",
            "trainer.val_check_interval=5",
            "logger=csv",
        ],
    )
    metrics = train(cfg)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == metrics["global_step"] == 7, "last.ckpt must hold the final weights"
    assert metrics["best_val_loss"] <= metrics["val_loss"] + 1e-6


def test_last_checkpoint_holds_the_final_weights_even_when_they_are_not_the_best(tmp_path: Path, corpus: Path) -> None:
    """last.ckpt is what "to train further" and every resume start from. Lightning 2.6's ModelCheckpoint with a
    monitor rewrites last.ckpt only when it also wrote a top-k checkpoint at that step, i.e. only when the val
    loss improved: a run whose final validation is worse ended with a last.ckpt from an earlier step, and an
    extension silently retrained the steps in between."""
    cfg = make_cfg(
        tmp_path, [*tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=6", "trainer.val_check_interval=2"]
    )
    add_callback(cfg, "zero", ZeroWeightsAt, step=6)
    metrics = train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert metrics["val_loss"] > metrics["best_val_loss"], "the final validation is worse than the best"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 6
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["global_step"] == 4


def test_probe_with_characters_the_corpus_lacks_is_filtered() -> None:
    from attention_lab.data import CharTokenizer
    from attention_lab.training.callbacks import encode_known

    tokenizer = CharTokenizer.from_text("abc ")
    assert tokenizer.decode(encode_known(tokenizer, "The cab.")) == " cab"


def test_checkpoint_state_dict_holds_each_weight_once() -> None:
    from attention_lab.training.lit_module import GPTLitModule

    module = GPTLitModule(
        model={
            "vocab_size": 20,
            "context_length": 8,
            "d_model": 16,
            "n_layers": 1,
            "attention": {"name": "multihead", "num_heads": 2},
        },
        optim={},
    )
    keys = [k for k in module.state_dict() if not k.startswith("val_loss")]
    assert keys and all(k.startswith("model.") for k in keys), keys


def test_perplexity_of_a_huge_or_missing_loss_is_not_an_error() -> None:
    """metrics.json reports exp(loss); a diverging run's best val loss can be finite and huge (lr=1000 gave
    ~1e4), where math.exp raised OverflowError and turned the diverged record into a crash (exit 1)."""
    from attention_lab.training.summary import perplexity

    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(1e4) == math.inf
    assert perplexity(None) is None and perplexity(math.nan) is None and perplexity(math.inf) is None
