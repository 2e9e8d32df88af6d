"""The loop benchmark: our training step against plain loops and a minimal reference GPT.

The reference must be the same model as ours with `bias=False` (same parameters, causal, trainable), or the
ratio `ours/reference` would compare different amounts of arithmetic. End-to-end runs use tiny settings
(2 timed steps at batch 2); the compiled contender compiles for tens of seconds, so it is slow-marked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attention_lab.bench import loop
from attention_lab.bench.loop import ATTENTION, MODEL, LoopBenchmark, Run, reference_model, summarize_runs
from attention_lab.cli import bench as cli
from attention_lab.cli.bench import main
from attention_lab.errors import UserError
from attention_lab.model import GPT
from attention_lab.training.optim import build_adamw

VOCAB = 65  # the char tokenizer's vocabulary on the built-in corpus


def _shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    return sorted(tuple(p.shape) for p in model.parameters())


def test_reference_has_exactly_our_bias_free_parameters_at_the_benchmark_shape() -> None:
    ours = GPT(**MODEL, attention=ATTENTION, vocab_size=VOCAB, bias=False)
    reference = reference_model(VOCAB)
    assert _shapes(reference) == _shapes(ours)
    total = sum(p.numel() for p in reference.parameters())  # the tied head counted once
    embeddings = reference.tok_emb.weight.numel() + reference.pos_emb.weight.numel()
    assert total == ours.num_params()["total"]
    assert total - embeddings == ours.num_params()["non_embedding"]
    assert total < sum(p.numel() for p in GPT(**MODEL, attention=ATTENTION, vocab_size=VOCAB).parameters())
    assert reference.head.weight is reference.tok_emb.weight  # tied, as ours


def test_reference_is_causal_and_shaped_like_ours() -> None:
    torch.manual_seed(0)
    model = reference_model(VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 16))  # (B, T)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB  # only positions >= 10 differ
    with torch.no_grad():
        logits, logits_changed = model(idx), model(changed)  # (B, T, V)
    assert logits.shape == (2, 16, VOCAB)
    torch.testing.assert_close(logits[:, :10], logits_changed[:, :10], rtol=0, atol=1e-6)
    assert not torch.allclose(logits[:, 10:], logits_changed[:, 10:])  # the control: later positions do see it


def test_reference_learns_a_batch_with_the_benchmark_optimizer() -> None:
    torch.manual_seed(0)
    model = reference_model(VOCAB).train()
    optimizer = build_adamw(model, loop.OPTIM, "cpu")
    x = torch.randint(0, VOCAB, (2, 32))  # (B, T)
    y = torch.roll(x, -1, dims=1)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_cli_names_the_contenders_bench_loop_has() -> None:
    """The parser repeats them so that it need not import Lightning; they must not drift apart."""
    assert tuple(loop.CONTENDERS) == cli.LOOP_CHOICES
    assert cli.LOOP_CONTENDERS == loop.DEFAULT_CONTENDERS


def _runs(names: list[str], tokens: dict[str, list[float]]) -> dict[str, list[Run]]:
    """Runs whose warm-up is 11 s the first time and 1 s after; CPU-time rates a quarter of the wall-clock ones
    (two threads, half busy), except `ours` at a fifth."""
    cpu = {n: 0.2 if n == "ours" else 0.25 for n in names}
    return {n: [Run(t, 10.0 * (i == 0) + 1.0, cpu[n] * t) for i, t in enumerate(tokens[n])] for n in names}


def test_summary_takes_each_ratio_within_a_repeat_then_the_median() -> None:
    tokens = {
        "hand": [100.0, 50.0, 100.0],
        "lightning": [90.0, 50.0, 110.0],
        "reference": [100.0, 100.0, 40.0],
        "ours": [110.0, 95.0, 44.0],
        "ours_compiled": [220.0, 190.0, 44.0],
    }
    result = summarize_runs(_runs(list(tokens), tokens), LoopBenchmark(contenders=list(tokens)), {}, "cmd")
    ratios = result["ratios"]
    assert ratios["ours/reference"]["per_pair"] == pytest.approx([1.1, 0.95, 1.1])
    assert ratios["ours/reference"]["median"] == pytest.approx(1.1)  # not 104.3 / 100 (medians' ratio)
    assert ratios["ours/reference"]["median_cpu"] == pytest.approx(1.1 * 0.2 / 0.25)
    assert ratios["lightning/hand"]["median"] == pytest.approx(1.0)
    assert result["compile"]["speedup"] == pytest.approx(2.0)
    assert result["compile"]["warmup_seconds_cold_cache"] == 11.0  # the first run
    assert result["compile"]["warmup_seconds_warm_cache"] == 1.0  # the median of the later ones
    assert result["median_ratio"] == ratios["lightning/hand"]["median"]  # loop_overhead.json's keys
    assert result["contenders"]["ours"]["median_tokens_per_sec"] == 95.0


def test_summary_without_the_hand_loop_has_no_legacy_keys_and_no_missing_ratio() -> None:
    tokens = {"reference": [100.0], "ours": [99.0]}
    result = summarize_runs(_runs(list(tokens), tokens), LoopBenchmark(contenders=list(tokens)), {}, None)
    assert list(result["ratios"]) == ["ours/reference"]
    assert "median_ratio" not in result and "compile" not in result


def test_unknown_contenders_are_refused() -> None:
    with pytest.raises(UserError, match="choose from"):
        loop.check_spec(LoopBenchmark(contenders=["ours", "nanogpt"]))


@pytest.mark.parametrize(
    ("extra", "flag"),
    [(["--steps", "0"], "--steps"), (["--batch-size", "-2"], "--batch-size"), (["--contenders", "x"], "--contenders")],
)
def test_bad_options_exit_2_before_anything_runs(
    extra: list[str], flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["loop", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and flag in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # ~3 s: four contenders twice; CI runs it
@pytest.mark.parametrize(
    ("contenders", "file"),
    [(["hand", "lightning"], "loop_overhead.json"), ([], "loop_reference.json")],  # []: the default four
)
def test_loop_benchmark_end_to_end(contenders: list[str], file: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTENTION_LAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results"
    argv = ["loop", "--repeats", "2", "--warmup", "1", "--steps", "2", "--batch-size", "2", "--out", str(out)]
    argv += ["--contenders", *contenders] if contenders else []
    assert main(argv) == 0
    assert [p.name for p in out.iterdir()] == [file]
    result = json.loads((out / file).read_text())
    # the keys loop_overhead.json has always had
    assert len(result["hand_tokens_per_sec"]) == len(result["lightning_tokens_per_sec"]) == 2
    assert all(v > 0 for v in result["hand_tokens_per_sec"] + result["lightning_tokens_per_sec"])
    assert result["median_ratio"] > 0 and len(result["ratio_per_pair"]) == 2
    assert result["timed_steps"] == 2 and result["model"]["batch_size"] == 2
    assert result["machine"]["cpu_count"] == os.cpu_count()  # the shared machine description
    assert result["command"] == "attention-lab bench " + " ".join(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "results"]  # TensorBoard logs went to a temp dir
    names = contenders or list(loop.DEFAULT_CONTENDERS)
    assert list(result["contenders"]) == names
    for entry in result["contenders"].values():
        assert len(entry["tokens_per_sec"]) == len(entry["warmup_seconds"]) == 2
        assert entry["median_tokens_per_sec"] > 0 and all(s > 0 for s in entry["warmup_seconds"])
    if "ours" in names:
        assert result["ratios"]["ours/reference"]["median"] > 0


@pytest.mark.slow  # ~30 s: inductor compiles the model from a cold cache
def test_the_compiled_contender_records_its_warm_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = LoopBenchmark(
        repeats=1,
        warmup=1,
        steps=2,
        batch_size=2,
        cache_dir=str(tmp_path / "cache"),
        contenders=["ours", "ours_compiled"],
    )
    result = loop.run_loop_benchmark(spec)
    compiled = result["compile"]
    assert compiled["speedup"] > 0 and compiled["warmup_seconds_cold_cache"] > compiled["eager_warmup_seconds"]
    assert compiled["warmup_seconds_warm_cache"] is None  # one compiled run: no warm-cache one
