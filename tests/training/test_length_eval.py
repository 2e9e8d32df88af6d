"""Length generalisation: the window plan (same span at every length), the loss against a direct computation,
null-with-a-reason for lengths that cannot be evaluated, the per-position curve, and the record a run leaves."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attention_lab.model import GPT
from attention_lab.training.guards import RunInterrupted
from attention_lab.training.length_eval import EvalStopped, bucket_means, eval_windows, evaluate_lengths
from attention_lab.training.task import train
from attention_lab.viz import loss_by_position_figure
from tests.training.helpers import (
    LEAN_CALLBACKS,
    SignalAtTrainEnd,
    add_callback,
    make_cfg,
    read_events,
    read_metrics,
    run_cli,
    run_folders,
    tiny,
)

VOCAB, CONTEXT = 11, 8


def tiny_gpt(position: str, seed: int = 0) -> GPT:
    """A seeded random 1-layer GPT (d 16, context 8) with dropout on: a forward outside eval mode would differ."""
    torch.manual_seed(seed)
    attention = {"name": "multihead", "num_heads": 2, "dropout": 0.0, "qkv_bias": False}
    return GPT(VOCAB, CONTEXT, 16, 1, attention, emb_dropout=0.5, resid_dropout=0.0, position=position)


def val_tokens(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))  # (n,)


def direct_losses(model: GPT, tokens: torch.Tensor, length: int, windows: int) -> torch.Tensor:
    """(W, L) per-token losses of the first `windows` windows, one window at a time, in eval mode."""
    model.eval()
    with torch.no_grad():
        rows = []
        for i in range(windows):
            x = tokens[i * length : (i + 1) * length][None]  # (1, L)
            y = tokens[i * length + 1 : (i + 1) * length + 1]  # (L,)
            rows.append(F.cross_entropy(model(x)[0], y, reduction="none"))
    return torch.stack(rows)  # (W, L)


# ------------------------------------------------------------------------------------------------ the plan
def test_every_length_cuts_the_same_span() -> None:
    plan = eval_windows(100, [8, 16, 32])
    assert plan.windows == {8: 12, 16: 6, 32: 3} and plan.same_span
    assert {n * w for n, w in plan.windows.items()} == {96}, "99 targets: the largest multiple of lcm=32 is 96"


def test_the_span_is_a_multiple_of_the_lcm_not_of_the_longest() -> None:
    plan = eval_windows(100, [8, 12])  # lcm 24: span 96 (a multiple of 12 alone would allow 96 too, of 8: 96)
    assert plan.windows == {8: 12, 12: 8}
    plan = eval_windows(60, [8, 12])  # lcm 24: span 48, not 56 (8) or 48 (12) independently
    assert plan.windows == {8: 6, 12: 4} and plan.same_span


def test_without_one_lcm_block_each_length_takes_what_fits() -> None:
    plan = eval_windows(40, [8, 12, 32])  # lcm 96 > 39 targets
    assert plan.windows == {8: 4, 12: 3, 32: 1} and not plan.same_span


def test_a_length_longer_than_the_split_is_skipped_with_a_reason() -> None:
    plan = eval_windows(30, [8, 32])
    assert plan.windows == {8: 3}
    assert "val split has 30 tokens" in plan.skipped[32] and "data.val_fraction" in plan.skipped[32]
    assert eval_windows(33, [32]).windows == {32: 1}, "33 tokens: 32 inputs and 32 targets, exactly one window"


def test_learned_positions_skip_lengths_past_their_table() -> None:
    plan = eval_windows(100, [8, 32], max_length=8)
    assert plan.windows == {8: 12}
    assert plan.skipped == {32: "learned positions stop at context_length=8"}


@pytest.mark.parametrize(
    ("length", "buckets", "size", "means"),
    [
        (12, 4, 3, [1.0, 4.0, 7.0, 10.0]),
        (12, 5, 3, [1.0, 4.0, 7.0, 10.0]),  # 5 does not divide 12: the largest divisor <= 5 is 4
        (4, 16, 1, [0.0, 1.0, 2.0, 3.0]),  # more buckets than positions: one position each
        (7, 4, 7, [3.0]),  # a prime length: one bucket
    ],
)
def test_bucket_means(length: int, buckets: int, size: int, means: list[float]) -> None:
    got_size, got = bucket_means(torch.arange(float(length)), buckets)
    assert got_size == size and got.tolist() == means


# ------------------------------------------------------------------------------------------ the evaluation
@pytest.mark.parametrize("position", ["rope", "none", "alibi", "sinusoidal"])
def test_losses_at_1x_and_4x_match_a_direct_computation(position: str) -> None:
    model, tokens = tiny_gpt(position), val_tokens(70)  # 69 targets: lcm 32 -> span 64
    model.train()
    results = evaluate_lengths(model, tokens, [CONTEXT, 4 * CONTEXT], batch_tokens=2 * CONTEXT, position_buckets=64)
    assert model.training, "the model gets its train mode back"
    assert results.tokens == {8: 64, 32: 64} and results.not_applicable == {}
    short, long = direct_losses(model, tokens, 8, 8), direct_losses(model, tokens, 32, 2)  # (8, 8), (2, 32)
    assert math.isfinite(results.loss[32])
    assert results.loss[8] == pytest.approx(short.mean().item(), rel=1e-5)
    assert results.loss[32] == pytest.approx(long.mean().item(), rel=1e-5)
    curve = results.by_position
    assert curve.length == 32 and curve.bucket_size == 1  # 64 buckets asked, 32 positions: one each
    torch.testing.assert_close(torch.tensor(curve.loss), long.mean(dim=0), rtol=1e-5, atol=1e-6)


def test_the_position_curve_is_bucketed() -> None:
    model, tokens = tiny_gpt("rope"), val_tokens(70)
    results = evaluate_lengths(model, tokens, [8, 32], batch_tokens=64, position_buckets=4)
    expected = direct_losses(model, tokens, 32, 2).mean(dim=0).view(4, 8).mean(dim=1)  # (4,)
    assert results.by_position.bucket_size == 8
    torch.testing.assert_close(torch.tensor(results.by_position.loss), expected, rtol=1e-5, atol=1e-6)


def test_learned_positions_report_null_with_a_reason_past_the_context() -> None:
    model, tokens = tiny_gpt("learned"), val_tokens(70)
    results = evaluate_lengths(model, tokens, [8, 32], batch_tokens=16)
    assert results.loss[32] is None and results.not_applicable == {32: "learned positions stop at context_length=8"}
    assert results.loss[8] == pytest.approx(direct_losses(model, tokens, 8, 8).mean().item(), rel=1e-5)
    assert results.by_position.length == 8, "the curve is drawn at the longest length that was evaluated"
    metrics = results.metrics()
    assert metrics["val_loss_by_length"] == {"8": results.loss[8], "32": None}
    assert metrics["eval_not_applicable"] == {"32": "learned positions stop at context_length=8"}
    assert metrics["eval_tokens"] == {"8": 64}
    assert metrics["loss_by_position"]["length"] == 8 and len(metrics["loss_by_position"]["loss"]) == 8


def test_nothing_fits_gives_only_reasons() -> None:
    results = evaluate_lengths(tiny_gpt("rope"), val_tokens(20), [32], batch_tokens=16)
    assert results.loss == {32: None} and "val split has 20 tokens" in results.not_applicable[32]
    assert results.tokens == {} and results.metrics()["loss_by_position"] is None


def test_loss_by_position_figure_is_an_rgb_image() -> None:
    image = loss_by_position_figure([2.0, 1.5, 1.4, 3.0], bucket_size=8, context_length=16, title="step 4")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.min() < 128, "something is drawn"


# ----------------------------------------------------------------------------------------------- the runs
def test_a_rope_run_records_the_loss_at_each_length(tmp_path: Path, corpus: Path, capsys) -> None:
    overrides = [*tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=2", "model.position=rope"]
    metrics = train(make_cfg(tmp_path, [*overrides, "eval.lengths=[1,2,4]", "eval.position_buckets=16"]))
    saved = read_metrics(tmp_path / "run")
    assert saved["status"] == "ok"
    by_length = saved["val_loss_by_length"]
    assert set(by_length) == {"32", "64", "128"} and all(math.isfinite(v) for v in by_length.values())
    assert saved["eval_not_applicable"] == {}
    assert len(set(saved["eval_tokens"].values())) == 1, "every length predicts the same tokens"
    curve = saved["loss_by_position"]
    assert curve["length"] == 128 and curve["bucket_size"] == 8 and len(curve["loss"]) == 16
    assert metrics["val_loss_by_length"] == by_length
    assert "val loss by length: 32: " in capsys.readouterr().out
    tags = read_events(tmp_path / "run")
    assert {"val_len/32/loss", "val_len/64/loss", "val_len/128/loss"} <= tags["scalars"]
    assert "val_len/loss_by_position" in tags["images"]


def test_a_learned_run_reports_null_with_a_reason_and_exits_0(tmp_path: Path, corpus: Path) -> None:
    log_dir = tmp_path / "outputs"
    overrides = [*tiny(corpus=corpus), *LEAN_CALLBACKS, "logger=csv", "trainer.max_steps=2", "eval.lengths=[1,2]"]
    assert run_cli([*overrides, "model.position=learned"], log_dir) == 0
    saved = read_metrics(run_folders(log_dir)[0])
    assert saved["status"] == "ok" and math.isfinite(saved["val_loss_by_length"]["32"])
    assert saved["val_loss_by_length"]["64"] is None
    assert saved["eval_not_applicable"] == {"64": "learned positions stop at context_length=32"}
    assert saved["loss_by_position"]["length"] == 32
    # the 1x span is cut for both lengths asked for (lcm 64), as a rope run's is: close to val/loss, not equal
    assert saved["eval_tokens"]["32"] % 64 == 0
    assert saved["val_loss_by_length"]["32"] == pytest.approx(saved["val_loss"], rel=1e-2)
    assert saved["val_loss_tail_by_length"] == {"32": saved["val_loss_by_length"]["32"], "64": None}


def test_learned_and_relative_runs_are_scored_on_the_same_tokens() -> None:
    """Found by review: the span was cut for the lengths a model can run, so a learned run's 1x loss (46,464
    tokens) and a rope run's (46,080) were taken on different text."""
    learned = eval_windows(1000, [32, 64, 128], max_length=32)
    relative = eval_windows(1000, [32, 64, 128], max_length=None)
    assert learned.windows[32] * 32 == relative.windows[32] * 32 == 896  # 7 blocks of lcm 128
    assert set(learned.skipped) == {64, 128}


def test_the_tail_loss_is_the_mean_of_the_last_context_positions() -> None:
    torch.manual_seed(0)
    model = tiny_gpt("none")
    tokens = torch.randint(0, VOCAB, (600,))
    results = evaluate_lengths(model, tokens, [8, 32], batch_tokens=64, position_buckets=4, tail=8)
    losses = direct_losses(model, tokens, 32, 18)  # (W, L): 18 windows of 32 in the 576-token span (lcm 32)
    assert results.tokens[32] == 18 * 32
    assert results.tail[32] == pytest.approx(losses[:, -8:].mean().item(), rel=1e-5)
    assert results.tail[8] == pytest.approx(results.loss[8], rel=1e-6)  # at 1x the tail is the whole window


def test_a_stop_request_ends_the_evaluation_between_batches() -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1  # the second batch

    with pytest.raises(EvalStopped):
        evaluate_lengths(tiny_gpt("rope"), torch.randint(0, VOCAB, (600,)), [8], batch_tokens=16, should_stop=stop)
    assert len(calls) == 2


def test_no_lengths_leave_no_keys(finished_run: Path) -> None:
    saved = read_metrics(finished_run / "run")
    assert saved["status"] == "ok"
    assert not {"val_loss_by_length", "eval_not_applicable", "eval_tokens", "loss_by_position"} & set(saved)


@pytest.mark.parametrize(
    "value", ["[0]", pytest.param("[a]", marks=pytest.mark.slow), pytest.param("[1,-2]", marks=pytest.mark.slow)]
)
def test_bad_lengths_exit_2_naming_the_setting(tmp_path: Path, corpus: Path, capsys, value: str) -> None:
    code = run_cli([*tiny(corpus=corpus), f"eval.lengths={value}"], tmp_path / "outputs")
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    assert "eval.lengths=" in stderr and "integers >= 1" in stderr and "Traceback" not in stderr


def test_a_signal_during_the_length_evaluation_stops_the_run_with_a_record(tmp_path: Path, corpus: Path) -> None:
    """Found by review: a SIGTERM after the last step (during a long 8x evaluation) was recorded and never acted
    on, so the run ended `ok` with exit 0 and a sweep went on to its next job."""
    cfg = make_cfg(tmp_path, [*tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=2", "eval.lengths=[1,2]"])
    add_callback(cfg, "term", SignalAtTrainEnd, signum=int(signal.SIGTERM))
    with pytest.raises(RunInterrupted) as stop:
        train(cfg)
    assert stop.value.code == 143 and stop.value.during == "eval.lengths"
    saved = read_metrics(tmp_path / "run")
    assert saved["status"] == "interrupted" and saved["stopped_at_step"] == saved["global_step"] == 2
    assert "resume" not in saved, "training had finished: a resume would be refused as a finished run"
    assert "the signal stopped the eval.lengths evaluation" in saved["note"]
    assert "val_loss_by_length" not in saved
