"""The generation benchmark and its measurements: `timed_generate`, `compare_cache` (cached == uncached or a
GenerationError), `benchmark_generation`, `format_benchmark` and `attention-lab bench generation`.

Models are tiny (vocab 50, context 24, d_model 32, 1-2 layers), so everything here runs in about a second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from attention_lab.bench.generation import (
    GenerationBenchmark,
    GenerationError,
    benchmark_generation,
    compare_cache,
    format_benchmark,
    timed_generate,
)
from attention_lab.bench.results import OUTPUTS_ENV
from attention_lab.cli.bench import main
from attention_lab.errors import UserError
from attention_lab.model import GPT, KVCache

VOCAB, CONTEXT, D_MODEL, HEADS, PROMPT_LEN = 50, 24, 32, 4, 3
COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny, and on a shared 2-core machine a second OpenMP thread that
    waits for a busy core turns a 20 ms generation into seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(name: str, **knobs: Any) -> GPT:
    """A seeded random 2-layer GPT in eval mode, no dropout."""
    torch.manual_seed(0)
    attention = {"name": name, "num_heads": HEADS, "dropout": 0.0, **knobs}
    return GPT(VOCAB, CONTEXT, D_MODEL, 2, attention, emb_dropout=0.0, resid_dropout=0.0).eval()


def prompt(batch: int = 1, length: int = PROMPT_LEN) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))  # (B, T)


def test_timed_generate_counts_new_tokens_and_time() -> None:
    run = timed_generate(tiny_gpt("gqa"), prompt(batch=2), 7, temperature=0.0)
    assert run.tokens.shape == (2, PROMPT_LEN + 7)
    assert run.new_tokens == 7 and run.seconds > 0
    assert run.tokens_per_s == pytest.approx(7 / run.seconds)


def test_compare_cache_returns_both_timings() -> None:
    cached, uncached = compare_cache(tiny_gpt("gqa"), prompt(), 10)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert cached.new_tokens == uncached.new_tokens == 10 and cached.tokens_per_s > 0 and uncached.tokens_per_s > 0


def test_compare_cache_fails_when_the_cache_path_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_gpt("multihead")
    real_forward = model.forward

    def broken_cache(idx: torch.Tensor, return_weights: bool = False, cache: KVCache | None = None):
        logits = real_forward(idx, return_weights, cache)
        if cache is not None and idx.shape[1] == 1:  # decoding steps only: favour token 0
            logits = logits.clone()
            logits[..., 0] += 100.0
        return logits

    monkeypatch.setattr(model, "forward", broken_cache)
    with pytest.raises(GenerationError, match=r"differ \(first at position \d+\).*--no-cache"):
        compare_cache(model, prompt(), 10)
    assert issubclass(GenerationError, UserError)  # the generate command reports it in one line


def test_benchmark_generation_small() -> None:
    spec = GenerationBenchmark(
        variants=["sliding_window", "linear"], d_model=32, n_layers=1, context_length=24, new_tokens=8, repeats=2
    )
    result = benchmark_generation(spec, command="test")
    assert result["config"]["new_tokens"] == 8 and result["machine"]["cpu_count"] == os.cpu_count()
    for name in spec.variants:
        r = result["results"][name]
        assert r["identical_tokens"] and r["cached_tokens_per_s"] > 0 and r["uncached_tokens_per_s"] > 0
        assert len(r["cached_seconds"]) == len(r["uncached_seconds"]) == 2
    assert result["results"]["sliding_window"]["attention"]["window"] == 32  # the registry default, spelled out
    assert result["command"] == "test"
    assert "load_average_end" in result["machine"] or not hasattr(os, "getloadavg")
    assert torch.get_num_threads() == 1  # the caller's thread count is restored


def test_benchmark_refuses_to_outgrow_the_context() -> None:
    with pytest.raises(GenerationError, match="exceeds context_length=24"):
        benchmark_generation(GenerationBenchmark(context_length=24, prompt_tokens=8, new_tokens=20))


def test_format_benchmark_is_one_row_per_variant() -> None:
    result = {
        "results": {
            name: {
                "cached_tokens_per_s": 100.0,
                "uncached_tokens_per_s": 50.0,
                "speedup": 2.0,
                "identical_tokens": True,
            }
            for name in ("multihead", "linear")
        }
    }
    table = format_benchmark(result).splitlines()
    assert table[0].startswith("variant") and len(table) == 3
    assert table[1].split() == ["multihead", "100.0", "50.0", "2.00x", "True"]
    assert len(format_benchmark(result, variants=["linear"]).splitlines()) == 2


TINY_ARGV = ["generation", "--variants", "multihead", "latent", "--d-model", "32", "--n-layers", "1"]
TINY_ARGV += ["--context-length", "24", "--new-tokens", "8", "--repeats", "1", "--warmup", "0", "--threads", "1"]


def test_cli_writes_json_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY_ARGV, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "generation.json").read_text())
    assert result["command"].startswith("attention-lab bench generation --variants multihead latent")
    assert set(result["results"]) == {"multihead", "latent"}
    assert result["config"]["num_heads"] == 4 and result["config"]["repeats"] == 1
    out = capsys.readouterr().out
    assert "multihead" in out and f"wrote {tmp_path / 'generation.json'}" in out


def test_cli_default_path_is_a_new_folder_under_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old default was benchmarks/results/<cpu|gpu>/generation.json in the checkout: never again."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    committed = (COMMITTED / "cpu" / "generation.json").read_bytes()
    assert main(TINY_ARGV) == 0
    assert main(TINY_ARGV) == 0
    runs = sorted((tmp_path / "outputs" / "bench" / "generation").iterdir())
    assert len(runs) == 2  # two runs, two folders, even within the same second
    assert all((run / "generation.json").is_file() for run in runs)
    assert (COMMITTED / "cpu" / "generation.json").read_bytes() == committed


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--repeats", "0"], "--repeats"),
        (["--new-tokens", "0"], "--new-tokens"),
        (["--prompt-tokens", "20"], "--context-length"),  # 20 + 8 > 24
        (["--heads", "5"], "--heads"),  # 32 is not divisible by 5
        (["--n-layers", "x"], "--n-layers"),
    ],
)
def test_cli_bad_options_exit_2_with_one_error_line(
    extra: list[str], flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*TINY_ARGV, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and flag in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
