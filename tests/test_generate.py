"""Generation: the KV cache gives the same tokens as recomputing, sampling rules, stopping, loading checkpoints,
the CLI (scripts/generate.py) and the generation benchmark.

Models are tiny (vocab 50, context 24, d_model 32, 2 layers) and prompts short, so that 30 new tokens outgrow
the context and the fall-back from cached decoding to recomputation is exercised too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import pytest
import torch

from attention_lab.attention import available
from attention_lab.checkpoint import CheckpointError
from attention_lab.data import CharTokenizer, GPT2Tokenizer, TextDataModule
from attention_lab.generate import (
    GenerationBenchmark,
    GenerationError,
    benchmark_generation,
    compare_cache,
    encode_prompt,
    generate,
    load_model,
    model_weights,
    resolve_device,
    sample_next,
)
from attention_lab.model import GPT, KVCache
from attention_lab.module import LitGPT
from conftest import attention_knobs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "generate.py"

VOCAB, CONTEXT, D_MODEL, HEADS = 50, 24, 32, 4
PROMPT_LEN, NEW_TOKENS = 3, 30  # 33 tokens > CONTEXT: the cache is dropped once the context is full
# The special caching paths only show with a window and a latent smaller than the sequence.
GEN_KNOBS: dict[str, dict[str, Any]] = {"sliding_window": {"window": 4}, "latent": {"latent_dim": 8}}

CORPUS = "the quick brown fox jumps over the lazy dog, said the attention head. " * 30


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny, and on the shared 2-core machine a second OpenMP thread that
    waits for a busy core turns a 20 ms generation into seconds (measured: 0.02 s vs 4.4 s under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(name: str, **overrides: Any) -> GPT:
    """A seeded random GPT (eval mode, no dropout) with the test knobs of `name`."""
    torch.manual_seed(0)
    attention = {"name": name, **attention_knobs(name, **{**GEN_KNOBS.get(name, {}), **overrides})}
    model = GPT(VOCAB, CONTEXT, D_MODEL, 2, attention, emb_dropout=0.0, resid_dropout=0.0)
    return model.eval()


def prompt(batch: int = 1, length: int = PROMPT_LEN) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))  # (B, T)


# --- cached == uncached ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available())
def test_cached_and_uncached_greedy_tokens_are_identical(name: str) -> None:
    model, idx = tiny_gpt(name), prompt(batch=2)
    cached = generate(model, idx, NEW_TOKENS, temperature=0.0, use_cache=True)
    uncached = generate(model, idx, NEW_TOKENS, temperature=0.0, use_cache=False)
    assert cached.shape == (2, PROMPT_LEN + NEW_TOKENS) and cached.shape[1] > CONTEXT
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", available())
def test_cached_and_uncached_sampling_is_identical_with_the_same_seed(name: str) -> None:
    model, idx = tiny_gpt(name), prompt()
    runs = [
        generate(model, idx, NEW_TOKENS, 1.0, 5, use_cache=use_cache, generator=torch.Generator().manual_seed(7))
        for use_cache in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])


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
    with pytest.raises(GenerationError, match=r"differ \(first at position \d+\).*use_cache=false"):
        compare_cache(model, prompt(), 10)


# --- what the cache holds ----------------------------------------------------------------------------------

HD = D_MODEL // HEADS


@pytest.mark.parametrize(
    ("name", "knobs", "expected"),
    [
        ("multihead", {}, {"k": (2, HEADS, 10, HD), "v": (2, HEADS, 10, HD)}),
        ("gqa", {"num_kv_heads": 2}, {"k": (2, 2, 10, HD), "v": (2, 2, 10, HD)}),
        ("mqa", {}, {"k": (2, 1, 10, HD), "v": (2, 1, 10, HD)}),
        ("sliding_window", {"window": 4}, {"k": (2, HEADS, 3, HD), "v": (2, HEADS, 3, HD)}),  # window - 1
        ("latent", {"latent_dim": 8}, {"latent": (2, 10, 8)}),  # no k/v: they are re-expanded from the latent
        ("linear", {}, {"state": (2, HEADS, HD, HD), "norm": (2, HEADS, HD)}),  # no time dimension
    ],
)
def test_cache_after_prefill_holds_what_the_variant_needs(name: str, knobs: dict, expected: dict) -> None:
    model, cache = tiny_gpt(name, **knobs), KVCache(2)
    with torch.no_grad():
        model(prompt(batch=2, length=10), cache=cache)
    assert cache.length == 10
    for layer in cache.layers:
        assert {key: tuple(value.shape) for key, value in layer.items()} == expected


def test_linear_cache_does_not_grow_with_the_sequence() -> None:
    model, cache = tiny_gpt("linear"), KVCache(2)
    with torch.no_grad():
        model(prompt(length=4), cache=cache)
        before = {k: v.shape for k, v in cache.layers[0].items()}
        for _ in range(5):
            model(prompt(length=1), cache=cache)
    assert {k: v.shape for k, v in cache.layers[0].items()} == before


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_feeds_one_token_per_step_with_the_cache(use_cache: bool) -> None:
    """With the cache each step runs only the new token, until the context is full; then it recomputes."""
    model = tiny_gpt("multihead")
    lengths: list[int] = []
    model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    generate(model, prompt(), NEW_TOKENS, use_cache=use_cache)
    full = CONTEXT - PROMPT_LEN + 1  # steps until the sequence fills the context
    if use_cache:
        assert lengths[:full] == [PROMPT_LEN] + [1] * (full - 1)
    else:
        assert lengths[:full] == list(range(PROMPT_LEN, CONTEXT + 1))
    assert lengths[full:] == [CONTEXT] * (NEW_TOKENS - full)  # cropped to the last CONTEXT tokens


# --- sampling rules -----------------------------------------------------------------------------------------


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(4, VOCAB)
    assert torch.equal(sample_next(logits, 0.0, None, None), logits.argmax(-1, keepdim=True))
    assert torch.equal(sample_next(logits, 0.0, 5, None), logits.argmax(-1, keepdim=True))


def test_sample_next_never_leaves_the_top_k() -> None:
    logits = torch.randn(4, VOCAB)
    draws = 2000
    rows = logits.repeat_interleave(draws, dim=0)  # (4 * draws, vocab): one multinomial call
    picks = sample_next(rows, 2.0, 5, torch.Generator().manual_seed(0)).view(4, draws)
    top = logits.topk(5, dim=-1).indices  # (4, 5)
    for row in range(4):
        assert set(picks[row].tolist()) == set(top[row].tolist())  # inside the top 5, and each of them drawn


def test_top_k_one_sampling_equals_greedy() -> None:
    model, idx = tiny_gpt("gqa"), prompt(batch=2)
    sampled = generate(model, idx, 15, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, generate(model, idx, 15, temperature=0.0))


def test_same_seed_same_sample_other_seed_other_sample() -> None:
    model, idx = tiny_gpt("multihead"), prompt()

    def run(seed: int) -> torch.Tensor:
        return generate(model, idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


# --- stopping at end-of-text --------------------------------------------------------------------------------

EOT = 7


def force_eot(model: GPT, from_call: dict[int, int]) -> None:
    """From forward call `from_call[row]` on (0-based), make EOT the argmax of that row's last logits."""
    calls = {"n": 0}

    def hook(module: GPT, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, first in from_call.items():
            if calls["n"] >= first:
                output[row, -1, EOT] += 1000.0
        calls["n"] += 1
        return output

    model.register_forward_hook(hook)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_stops_at_eot(use_cache: bool) -> None:
    model = tiny_gpt("multihead")
    force_eot(model, {0: 2})
    out = generate(model, prompt(), 20, eot_token=EOT, use_cache=use_cache)
    assert out.shape[1] == PROMPT_LEN + 3  # two free tokens, then EOT, then stop
    assert out[0, -1] == EOT and EOT not in out[0, PROMPT_LEN:-1].tolist()


def test_finished_rows_pad_with_eot_until_every_row_is_done() -> None:
    model = tiny_gpt("gqa")
    force_eot(model, {0: 1, 1: 4})
    out = generate(model, prompt(batch=2), 20, eot_token=EOT)
    assert out.shape[1] == PROMPT_LEN + 5
    assert out[0, PROMPT_LEN + 1 :].tolist() == [EOT] * 4  # row 0 stopped after one token and stays stopped
    assert out[1, -1] == EOT and EOT not in out[1, PROMPT_LEN:-1].tolist()


def test_no_eot_token_means_no_early_stop() -> None:
    model = tiny_gpt("multihead")
    force_eot(model, {0: 0})
    assert generate(model, prompt(), 10, eot_token=None).shape[1] == PROMPT_LEN + 10


# --- prompts and devices ------------------------------------------------------------------------------------


def test_encode_prompt() -> None:
    char = CharTokenizer.from_text("abc ")
    assert encode_prompt(char, "ab c").tolist() == [[1, 2, 0, 3]]
    with pytest.raises(GenerationError, match=r"prompt='xyz' cannot be encoded.*not in the char"):
        encode_prompt(char, "xyz")
    with pytest.raises(GenerationError, match="no end-of-text token"):
        encode_prompt(char, "")
    assert encode_prompt(GPT2Tokenizer(), "").tolist() == [[GPT2Tokenizer.eot_token]]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(GenerationError, match="device=auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GenerationError, match="CUDA is not available"):
            resolve_device("cuda")


# --- loading checkpoints -------------------------------------------------------------------------------------

TRAINED_MODEL = {
    "context_length": 16,
    "d_model": 32,
    "n_layers": 2,
    "attention": {"name": "gqa", "num_heads": 4, "num_kv_heads": 2, "dropout": 0.0},
    "emb_dropout": 0.0,
    "resid_dropout": 0.0,
}
OPTIM = {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 1, "min_lr_ratio": 0.1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LitGPT]:
    """One optimizer step of a tiny LitGPT on a char corpus, saved the way Lightning saves checkpoints."""
    folder = tmp_path_factory.mktemp("trained")
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS)
    datamodule = TextDataModule(path=str(corpus), tokenizer="char", context_length=16, batch_size=2, cache_dir=None)
    module = LitGPT({**TRAINED_MODEL, "vocab_size": datamodule.vocab_size}, OPTIM, datamodule.tokenizer.state())
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(folder),
    )
    trainer.fit(module, datamodule=datamodule)
    path = folder / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, module.eval()


def edited_checkpoint(src: Path, dst: Path, edit) -> Path:
    """A copy of a checkpoint with `edit(checkpoint)` applied (weights_only load: plain data only)."""
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, dst)
    return dst


def test_load_model_round_trip(trained: tuple[Path, LitGPT]) -> None:
    path, module = trained
    model, tokenizer, hparams = load_model(path)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert hparams["model"] == module.hparams.model and hparams["tokenizer"] == module.hparams.tokenizer
    assert isinstance(tokenizer, CharTokenizer) and tokenizer.state() == module.hparams.tokenizer
    idx = encode_prompt(tokenizer, "the lazy dog")
    with torch.no_grad():
        torch.testing.assert_close(model(idx), module.model(idx), rtol=0, atol=0)
    assert torch.equal(generate(model, idx, 20), generate(module.model, idx, 20))


def test_checkpoint_is_plain_data(trained: tuple[Path, LitGPT]) -> None:
    """read_checkpoint (inside load_model) uses weights_only=True; loading at all proves nothing else is needed."""
    checkpoint = torch.load(trained[0], map_location="cpu", weights_only=True)
    assert set(model_weights(checkpoint["state_dict"])) == set(trained[1].model.state_dict())


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'nope.ckpt'} does not exist"):
        load_model(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_corrupt_checkpoint(kind: str, trained: tuple[Path, LitGPT], tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    data = trained[0].read_bytes()
    bad.write_bytes(os.urandom(4096) if kind == "random" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"attention": {"name": "multihead", "num_heads": 4, "dropout": 0.0}},
            r"attention: checkpoint \{'name': 'gqa'",
        ),
        ({"d_model": 64}, r"d_model: checkpoint 32 vs config 64"),
        ({"n_layers": 3}, r"n_layers: checkpoint 2 vs config 3"),
    ],
)
def test_expect_model_names_the_differing_setting(
    change: dict, message: str, trained: tuple[Path, LitGPT], tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_model(trained[0], expect_model={**TRAINED_MODEL, **change})


def test_expect_model_without_vocab_size_means_the_checkpoints(trained: tuple[Path, LitGPT]) -> None:
    model, _, _ = load_model(trained[0], expect_model=dict(TRAINED_MODEL))
    assert model.vocab_size == trained[1].model.vocab_size


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("model.final_norm.bias"), r"missing: final_norm\.bias"),
        (lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(1)), r"unexpected: extra\.weight"),
        (
            lambda sd: sd.__setitem__("model.pos_emb.weight", torch.zeros(8, 32)),
            r"shape mismatch: pos_emb\.weight \(8, 32\) vs model \(16, 32\)",
        ),
    ],
)
def test_weights_that_do_not_fit_are_refused(edit, message: str, trained: tuple[Path, LitGPT], tmp_path: Path) -> None:
    path = edited_checkpoint(trained[0], tmp_path / "edited.ckpt", lambda ckpt: edit(ckpt["state_dict"]))
    with pytest.raises(CheckpointError, match=rf"{message}.*retrain"):
        load_model(path)


def test_non_model_keys_are_ignored(trained: tuple[Path, LitGPT], tmp_path: Path) -> None:
    def add_metric_state(ckpt: dict) -> None:
        ckpt["state_dict"]["val_loss.mean_value"] = torch.tensor(3.0)
        ckpt["state_dict"]["val_loss.weight"] = torch.tensor(2.0)

    path = edited_checkpoint(trained[0], tmp_path / "metric.ckpt", add_metric_state)
    model, _, _ = load_model(path)
    torch.testing.assert_close(model.state_dict(), trained[1].model.state_dict(), rtol=0, atol=0)


def test_tokenizer_falls_back_to_the_datamodule_state(trained: tuple[Path, LitGPT], tmp_path: Path) -> None:
    def drop_hparam(ckpt: dict) -> None:
        ckpt["hyper_parameters"]["tokenizer"] = None

    _, tokenizer, _ = load_model(edited_checkpoint(trained[0], tmp_path / "a.ckpt", drop_hparam))
    assert tokenizer.state() == trained[1].hparams.tokenizer

    def drop_both(ckpt: dict) -> None:
        drop_hparam(ckpt)
        del ckpt["TextDataModule"]

    with pytest.raises(CheckpointError, match="does not say which tokenizer"):
        load_model(edited_checkpoint(trained[0], tmp_path / "b.ckpt", drop_both))


def test_settings_that_no_longer_build_a_model(trained: tuple[Path, LitGPT], tmp_path: Path) -> None:
    def rename(ckpt: dict) -> None:
        ckpt["hyper_parameters"]["model"]["width"] = ckpt["hyper_parameters"]["model"].pop("d_model")

    with pytest.raises(CheckpointError, match="do not build a GPT in this version"):
        load_model(edited_checkpoint(trained[0], tmp_path / "c.ckpt", rename))


# --- the CLI -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> Iterator[ModuleType]:
    """scripts/generate.py imported as a module, so its main(argv) runs in-process (no interpreter start)."""
    spec = importlib.util.spec_from_file_location("generate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_cli_greedy_with_compare_cache(cli: ModuleType, trained: tuple[Path, LitGPT], capsys) -> None:
    args = [f"ckpt={trained[0]}", "prompt=the quick, brown", "temperature=0", "compare_cache=true", "max_new_tokens=30"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "attention=gqa" in out
    assert "the quick, brown" in out  # the comma survives: the prompt is taken verbatim
    assert "30 new tokens" in out and "tokens/s (KV cache on, greedy" in out
    assert "identical tokens with and without the cache" in out
    assert "with cache:" in out and "without cache:" in out


def test_cli_sampling_is_seeded(cli: ModuleType, trained: tuple[Path, LitGPT], capsys) -> None:
    def text(seed: int) -> str:
        assert cli.main([f"ckpt={trained[0]}", "prompt='the '", "max_new_tokens=40", f"seed={seed}"]) == 0
        return capsys.readouterr().out.splitlines()[1]

    assert text(0) == text(0) != text(1)
    assert text(0).startswith("the ")  # Hydra-style quotes are removed, the space is kept


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["ckpt={missing}"], 1, "{missing} does not exist"),
        (["ckpt={ckpt}", "prompt=THE"], 1, "cannot be encoded"),
        ([], 2, "ckpt is required"),
        (["ckpt={ckpt}", "colour=red"], 2, "unknown setting colour"),
        (["ckpt={ckpt}", "max_new_tokens=many"], 2, "max_new_tokens"),
        (["ckpt={ckpt}", "top_k=0"], 2, "top_k=0 must be >= 1"),
        (["ckpt={ckpt}", "mode=train"], 2, "mode=train is unknown"),
        (["just-a-word"], 2, "expected key=value"),
    ],
)
def test_cli_errors_are_one_line(
    args: list[str], status: int, message: str, cli: ModuleType, trained: tuple[Path, LitGPT], tmp_path: Path, capsys
) -> None:
    paths = {"missing": tmp_path / "missing.ckpt", "ckpt": trained[0]}
    assert cli.main([a.format(**paths) for a in args]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("generate.py: error:")
    assert message.format(**paths) in err


def test_cli_benchmark_writes_json(cli: ModuleType, tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen.json"
    args = [
        "mode=benchmark",
        f"out={out}",
        "benchmark.variants=[multihead,latent]",
        "benchmark.d_model=32",
        "benchmark.n_layers=1",
        "benchmark.context_length=24",
        "benchmark.new_tokens=8",
        "benchmark.repeats=1",
        "benchmark.warmup=0",
    ]
    assert cli.main(args) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python scripts/generate.py mode=benchmark")
    assert set(result["results"]) == {"multihead", "latent"}
    assert "multihead" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_subprocess(trained: tuple[Path, LitGPT], tmp_path: Path) -> None:
    """The real entry point, from a foreign working directory: exit codes, output, and no folders created."""

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}  # see _one_thread
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
        )

    ok = run(f"ckpt={trained[0]}", "prompt=the quick", "temperature=0", "compare_cache=true", "max_new_tokens=20")
    assert ok.returncode == 0, ok.stderr
    assert "tokens/s (KV cache on, greedy" in ok.stdout and "without cache:" in ok.stdout
    missing = tmp_path / "no" / "such.ckpt"
    bad = run(f"ckpt={missing}")
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and str(missing) in bad.stderr and "Traceback" not in bad.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log files


# --- benchmark -----------------------------------------------------------------------------------------------


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


def test_benchmark_refuses_to_outgrow_the_context() -> None:
    with pytest.raises(GenerationError, match="exceeds context_length=24"):
        benchmark_generation(GenerationBenchmark(context_length=24, prompt_tokens=8, new_tokens=20))
