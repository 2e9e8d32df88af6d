"""Fake run folders for the analysis tests: the files a run writes, made by hand, so no training is needed.

Each fake run has what training and Hydra leave behind: metrics.json, .hydra/config.yaml (with the
interpolations and per-run paths a real one has) and a TensorBoard event file with `val/loss` scalars and an
`attention/layer_0` image. Failed, incomplete and event-less runs are made by leaving files out. Runs
evaluated by length (`eval.lengths`) also get the length fields of metrics.json; without `by_length` a run
looks like one from before that evaluation existed.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from attention_lab.analysis.runs import FAILED, OK
from attention_lab.analysis.tables import RUN_COLUMNS_AFTER, RUN_COLUMNS_BEFORE

BATCH, CONTEXT = 4, 16
TOKENS_PER_STEP = BATCH * CONTEXT
FAILED_ERROR = "ConfigError: attention.num_kv_heads=3 must divide attention.num_heads=4"
PLOTS = (
    "val_loss_vs_tokens.png",
    "final_val_loss.png",
    "throughput.png",
    "attention_maps.png",
    "val_loss_vs_wall_time.png",
)


EVAL_TOKENS = 40960


def make_config(run_dir: Path, attention: dict[str, Any], seed: int, position: str | None = None) -> dict[str, Any]:
    """A config.yaml like Hydra's: interpolations left in, per-run output paths that must not count as knobs.

    `position` sets model.position; None leaves the key out, as in runs from before position schemes."""
    model = {"context_length": CONTEXT, "d_model": 32, "n_layers": 2, "emb_dropout": 0.1, "tie_weights": True}
    if position is not None:
        model["position"] = position
    return {
        "attention": attention,
        "model": model,
        "data": {
            "_target_": "attention_lab.data.TextDataModule",
            "path": None,
            "tokenizer": "char",
            "context_length": "${model.context_length}",
            "batch_size": BATCH,
            "cache_dir": "${paths.cache_dir}",
            "seed": "${seed}",
        },
        "trainer": {"max_steps": 150, "devices": 1, "accumulate_grad_batches": 1, "default_root_dir": str(run_dir)},
        "paths": {
            "output_dir": "${hydra:runtime.output_dir}",
            "cache_dir": ".cache",
            "log_dir": str(run_dir.parent),
            "work_dir": str(run_dir),
        },
        "seed": seed,
        "optim": {"lr": 3e-3, "betas": [0.9, 0.95]},
    }


def make_run(
    root: Path,
    name: str,
    attention: dict[str, Any],
    *,
    seed: int = 1337,
    curve: tuple[tuple[int, float], ...] = ((49, 3.0), (99, 2.6), (149, 2.3)),
    tokens_per_sec: float = 1000.0,
    status: str = OK,
    events: bool = True,
    metrics: bool = True,
    image_value: int = 0,
    position: str | None = None,
    by_length: dict[int, float | None] | None = None,
    by_position: list[float] | None = None,
) -> Path:
    """One run folder; the final val loss is the curve's last point, as in a real run.

    by_length: val loss per evaluation length (None: not applicable), written with the other length fields;
    by_position: the per-position loss buckets at the longest length (null in metrics.json when not given)."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    config = make_config(run_dir, attention, seed, position)
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    overrides = [f"attention={attention['name']}", f"seed={seed}"]
    if metrics and status == FAILED:
        payload: dict[str, Any] = {
            "status": FAILED,
            "attention": attention["name"],
            "overrides": overrides,
            "error": FAILED_ERROR,
        }
        (run_dir / "error.txt").write_text("Traceback ...\n")
    else:
        steps = curve[-1][0] + 1
        final, best = curve[-1][1], min(v for _, v in curve)
        payload = {
            "status": OK,
            "attention": attention["name"],
            "overrides": overrides,
            "val_loss": final,
            "val_ppl": math.exp(final),
            "best_val_loss": best,
            "best_val_ppl": math.exp(best),
            "train_loss": final + 0.1,
            "global_step": steps,
            "tokens_seen": steps * TOKENS_PER_STEP,
            "tokens_per_sec": tokens_per_sec,
            "params": {"total": 5000, "attention": 1000, "non_embedding": 4000},
            "kv_cache_bytes_per_token": 512,
            "peak_memory_mb": 300.0,
            "wall_time_sec": 12.5,
            "device": "cpu",
            "output_dir": str(run_dir),
        }
        if by_length is not None:
            payload.update(length_fields(by_length, by_position, position or "learned"))
    if metrics:
        (run_dir / "metrics.json").write_text(json.dumps(payload))
    if events and status != FAILED:
        writer = SummaryWriter(log_dir=str(run_dir))
        for step, value in curve:
            writer.add_scalar("val/loss", value, step)
        image = np.full((20, 36, 3), image_value, dtype=np.uint8)
        image[:, : 18 + image_value % 18] = 200  # not a flat image, so a decoding mistake would show
        writer.add_image("attention/layer_0", image, curve[-1][0] + 1, dataformats="HWC")
        writer.close()
    return run_dir


def length_fields(by_length: dict[int, float | None], by_position: list[float] | None, position: str) -> dict[str, Any]:
    """The metrics.json fields a run trained with eval.lengths has, in the format training writes them."""
    longest = max(by_length)
    return {
        "val_loss_by_length": {str(n): loss for n, loss in by_length.items()},
        # the tail of each window: the whole window at 1x, TAIL_STEP worse per doubling beyond (made-up numbers)
        "val_loss_tail_by_length": {
            str(n): None if loss is None else loss + TAIL_STEP * (n // CONTEXT - 1) for n, loss in by_length.items()
        },
        "eval_not_applicable": {
            str(n): f"{position} positions stop at context_length={CONTEXT}"
            for n, loss in by_length.items()
            if loss is None
        },
        "eval_tokens": {str(n): EVAL_TOKENS for n in by_length},
        "loss_by_position": None
        if by_position is None
        else {"length": longest, "bucket_size": longest // len(by_position), "loss": by_position},
    }


TAIL_STEP = 0.1
MULTIHEAD = {"name": "multihead", "num_heads": 4, "dropout": 0.1}
GQA = {"name": "gqa", "num_heads": 4, "dropout": 0.1, "num_kv_heads": 2}
GQA_BAD = {"name": "gqa", "num_heads": 4, "dropout": 0.1, "num_kv_heads": 3}

# A seed group of 3 per position scheme, by evaluation length (CONTEXT=16 is the training context): rope is
# evaluated everywhere, learned positions cannot go past the context (None: null in metrics.json).
ROPE_BY_LENGTH = {16: (1.90, 1.92, 1.95), 32: (2.00, 2.04, 2.03), 64: (2.10, 2.20, 2.15)}
LEARNED_BY_LENGTH = {16: (1.88, 1.89, 1.93), 32: None, 64: None}
ROPE_BY_POSITION = ([1.9, 2.0, 2.1, 2.2], [1.8, 2.0, 2.0, 2.4], [2.0, 2.0, 2.3, 2.3])


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


KNOWN_COLUMNS = {*RUN_COLUMNS_BEFORE, *RUN_COLUMNS_AFTER}  # everything that is not a knob column
