"""Sampling from a GPT: greedy, temperature and top-k, with a KV cache for every variant.

The cache (`model.KVCache`) holds what each variant needs: K/V heads (only the shared ones for gqa/mqa), the
last window - 1 tokens for sliding_window, the latent for latent, the running sums for linear. Positions are
learned and absolute, so once a sequence outgrows `context_length` every step must recompute the cropped
window; from there on the cache cannot help and sampling continues uncached (same tokens either way).

Also here, so that `scripts/generate.py` stays a thin argument parser:
- `load_model`: rebuild the GPT and its tokenizer from a training checkpoint, safely (`weights_only=True`,
  no arbitrary unpickling) and strictly (every weight must fit), with errors that name the fix;
- `timed_generate` / `compare_cache`: tokens/s of one generation, and the cached-vs-uncached check;
- `benchmark_generation`: tokens/s with and without the cache on random GPTs, for the committed results.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .attention import resolve_knobs
from .checkpoint import CheckpointError, check_same_model, read_checkpoint
from .data import Tokenizer, tokenizer_from_state
from .model import GPT, KVCache

MODEL_PREFIX = "model."  # LitGPT keeps the GPT as `self.model`: its weights are `model.<name>` in the state_dict


class GenerationError(ValueError):
    """A generation setting that cannot work (device, prompt) or a failed check; the message names the fix."""


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """logits (B, vocab) -> next ids (B, 1). temperature 0 is greedy; top-k is applied before temperature."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(
    model: GPT,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eot_token: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Extend idx (B, T) by up to `max_new_tokens`; stops early once every row has produced `eot_token`."""
    was_training = model.training
    model.eval()
    ctx = model.context_length
    cache = KVCache(model.n_layers) if use_cache and idx.shape[1] <= ctx else None
    pending = idx  # tokens the model has not seen yet (with a cache) or the whole sequence (without)
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if cache is not None and cache.length + pending.shape[1] > ctx:
            cache, pending = None, idx  # outgrew the learned positions: recompute the cropped window
        logits = model(pending if cache is not None else idx[:, -ctx:], cache=cache)[:, -1]  # (B, vocab)
        next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
        if eot_token is not None:
            next_id = next_id.masked_fill(finished[:, None], eot_token)
            finished |= next_id.squeeze(1) == eot_token
        idx = torch.cat((idx, next_id), dim=1)
        pending = next_id
        if eot_token is not None and bool(finished.all()):
            break
    model.train(was_training)
    return idx


# ----------------------------------------------------------------------------------------------------------
# Loading a trained model
# ----------------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda[:N]` or `auto` (CUDA when there is one) -> a device; fail early rather than at the first op."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise GenerationError(f"device={name!r} is not a device: use device=cpu, device=cuda or device=auto") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"device={name} but CUDA is not available here: use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda"):
        raise GenerationError(f"device={name!r} is not supported: use device=cpu, device=cuda or device=auto")
    return device


def model_weights(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The GPT's own weights: `model.`-prefixed keys with the prefix stripped.

    Everything else in a LightningModule's state_dict is dropped on purpose: metric states (`val_loss.*`) and
    the `_forward.*` alias of the same GPT are not part of the model.
    """
    return {key[len(MODEL_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(MODEL_PREFIX)}


def _weight_mismatches(model: GPT, weights: dict[str, Tensor]) -> list[str]:
    """Every way `weights` does not fit `model` (missing, unexpected, wrong shape), as short phrases."""
    expected = model.state_dict()
    problems = []
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    wrong_shape = [
        f"{key} {tuple(weights[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in weights and weights[key].shape != expected[key].shape
    ]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{label}: {', '.join(keys[:5])}{more}")
    return problems


def _checkpoint_tokenizer(checkpoint: dict[str, Any], path: str | Path) -> Tokenizer:
    """The tokenizer the model was trained with: LitGPT's `tokenizer` hparam, else the datamodule's saved state."""
    state = checkpoint["hyper_parameters"].get("tokenizer")
    if state is None:  # a LitGPT built without tokenizer=...; TextDataModule.state_dict() carries it too
        saved = [
            v["tokenizer"] for v in checkpoint.values() if isinstance(v, dict) and isinstance(v.get("tokenizer"), dict)
        ]
        state = saved[0] if saved else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} does not say which tokenizer it was trained with (no hyper_parameters.tokenizer): "
            "it was not written by train.py; retrain with scripts/train.py, which saves the tokenizer."
        )
    try:
        return tokenizer_from_state(state)
    except ValueError as err:  # includes DataConfigError / TokenizerFilesError, whose messages name the fix
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its tokenizer {state.get('name')!r}: {err}") from err


def _build_model(hparams: dict[str, Any], path: str | Path) -> GPT:
    """GPT(**hparams["model"]), with a CheckpointError when the saved settings no longer build a model."""
    kwargs = hparams.get("model")
    if not isinstance(kwargs, dict):
        raise CheckpointError(
            f"checkpoint {path} has no hyper_parameters.model (the GPT's settings): it was not written by "
            "attention_lab's LitGPT; use a checkpoint from scripts/train.py."
        )
    try:
        return GPT(**kwargs)
    except (TypeError, ValueError) as err:  # renamed/removed settings, or knobs this version rejects
        raise CheckpointError(
            f"checkpoint {path}: its model settings {kwargs} do not build a GPT in this version ({err}); "
            "use the attention-lab version it was trained with, or retrain."
        ) from err


def load_model(
    ckpt_path: str | Path, device: str | torch.device = "cpu", expect_model: dict[str, Any] | None = None
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Rebuild (GPT in eval mode on `device`, its tokenizer, the checkpoint's hyper_parameters) from a checkpoint.

    Needs nothing but the file: LitGPT saves the GPT's kwargs and the tokenizer's state as hyper-parameters, and
    the weights are loaded with `weights_only=True`, so a checkpoint cannot run code. The load is strict: a
    partial load would sample from half-random weights without any sign of it.

    `expect_model` (GPT kwargs, e.g. from a config) makes a checkpoint of another variant or width fail with the
    differing settings named; a missing/None `vocab_size` there means "whatever the checkpoint says".
    """
    checkpoint = read_checkpoint(ckpt_path)  # CheckpointError for missing / corrupt / foreign files
    hparams = dict(checkpoint["hyper_parameters"])
    if expect_model is not None:
        saved_vocab = (hparams.get("model") or {}).get("vocab_size")
        expected = {**expect_model, "vocab_size": expect_model.get("vocab_size") or saved_vocab}
        check_same_model(checkpoint, expected, ckpt_path)
    model = _build_model(hparams, ckpt_path)
    weights = model_weights(checkpoint["state_dict"])
    problems = _weight_mismatches(model, weights)
    if problems:
        raise CheckpointError(
            f"checkpoint {ckpt_path}: its weights do not fit the model its hyper_parameters describe "
            f"({'; '.join(problems)}): the file was edited or written by another version of attention-lab; "
            "use an untouched checkpoint from scripts/train.py, or retrain."
        )
    model.load_state_dict(weights, strict=True)
    tokenizer = _checkpoint_tokenizer(checkpoint, ckpt_path)
    if tokenizer.vocab_size > model.vocab_size:
        raise CheckpointError(
            f"checkpoint {ckpt_path}: its tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.vocab_size}: the checkpoint is inconsistent; retrain with scripts/train.py."
        )
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(device).eval(), tokenizer, hparams


def encode_prompt(tokenizer: Tokenizer, prompt: str, device: torch.device | str = "cpu") -> Tensor:
    """Prompt text -> ids (1, T). An empty prompt starts from end-of-text where the tokenizer has one."""
    if prompt:
        try:
            ids = tokenizer.encode(prompt)
        except ValueError as err:  # e.g. characters a char tokenizer never saw
            raise GenerationError(f"prompt={prompt!r} cannot be encoded: {err}") from err
    elif tokenizer.eot_token is not None:
        ids = [tokenizer.eot_token]
    else:
        ids = []
    if not ids:
        raise GenerationError(
            f"prompt={prompt!r} gives no tokens and the {tokenizer.name} tokenizer has no end-of-text token to "
            'start from: give at least one character, e.g. prompt="The "'
        )
    return torch.tensor([ids], dtype=torch.long, device=device)


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimedGeneration:
    """One `generate` call: the whole sequence (1, T + new), how many tokens were new, and the wall time."""

    tokens: Tensor
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(model: GPT, idx: Tensor, max_new_tokens: int, **sampling: Any) -> TimedGeneration:
    """`generate` (same keyword arguments) with its wall time (prefill included: a user waits for it too)."""
    _sync(idx.device)
    start = time.perf_counter()
    out = generate(model, idx, max_new_tokens, **sampling)
    _sync(idx.device)
    return TimedGeneration(out, out.shape[1] - idx.shape[1], time.perf_counter() - start)


def compare_cache(
    model: GPT, idx: Tensor, max_new_tokens: int, eot_token: int | None = None
) -> tuple[TimedGeneration, TimedGeneration]:
    """Greedy decoding with and without the KV cache; GenerationError unless the tokens are identical.

    Greedy, because then any difference is the cache's fault and not the sampler's.
    """
    cached = timed_generate(model, idx, max_new_tokens, eot_token=eot_token, use_cache=True)
    uncached = timed_generate(model, idx, max_new_tokens, eot_token=eot_token, use_cache=False)
    if not torch.equal(cached.tokens, uncached.tokens):
        raise GenerationError(
            f"greedy tokens with and without the KV cache differ ({_first_difference(cached.tokens, uncached.tokens)})"
            f": the cache path of {type(model.blocks[0].attn).__name__} is wrong; run tests/test_generate.py, and "
            "generate with use_cache=false meanwhile."
        )
    return cached, uncached


def _first_difference(a: Tensor, b: Tensor) -> str:
    """Where two (B, T) token sequences first differ, for the error message."""
    n = min(a.shape[1], b.shape[1])
    columns = (a[:, :n] != b[:, :n]).any(dim=0).nonzero()  # (k, 1)
    return f"first at position {int(columns[0, 0])}" if len(columns) else f"lengths {a.shape[1]} vs {b.shape[1]}"


# ----------------------------------------------------------------------------------------------------------
# Benchmark: tokens/s with and without the KV cache
# ----------------------------------------------------------------------------------------------------------

BENCHMARK_VARIANTS = ("multihead", "gqa", "sliding_window", "linear", "latent")


@dataclass
class GenerationBenchmark:
    """What `benchmark_generation` measures; stored next to the numbers. Attention knobs other than num_heads
    and dropout (0) are the registry defaults (gqa num_kv_heads=2, sliding_window window=32, latent
    latent_dim=32) unless `knobs` overrides them per variant."""

    variants: list[str] = field(default_factory=lambda: list(BENCHMARK_VARIANTS))
    d_model: int = 128
    n_layers: int = 4
    num_heads: int = 4
    context_length: int = 256
    vocab_size: int = 100
    prompt_tokens: int = 8
    new_tokens: int = 200
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    threads: int | None = None  # torch intra-op threads while timing; None = torch's default (all cores)
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)


def benchmark_attention(spec: GenerationBenchmark, variant: str) -> dict[str, Any]:
    """The attention config of one benchmarked variant, every knob spelled out (defaults resolved) for the JSON."""
    knobs = {"num_heads": spec.num_heads, "dropout": 0.0, **spec.knobs.get(variant, {})}
    return {"name": variant, **resolve_knobs(variant, knobs)}


def benchmark_model(spec: GenerationBenchmark, variant: str) -> GPT:
    """A random-weight GPT of the benchmark's size (seeded, so every run times the same weights)."""
    with torch.random.fork_rng(devices=[]):  # seeded without moving the caller's random stream
        torch.manual_seed(spec.seed)
        model = GPT(
            vocab_size=spec.vocab_size,
            context_length=spec.context_length,
            d_model=spec.d_model,
            n_layers=spec.n_layers,
            attention=benchmark_attention(spec, variant),
            emb_dropout=0.0,
            resid_dropout=0.0,
        )
    return model.eval()


def benchmark_generation(
    spec: GenerationBenchmark | None = None, device: str | torch.device = "cpu", command: str | None = None
) -> dict[str, Any]:
    """Greedy generation tokens/s with and without the KV cache, per variant: medians over `repeats` rounds.

    The machine is shared and noisy, so the runs are interleaved: each round times every variant, cached and
    uncached back to back (the order of both alternates between rounds), so a burst of load hits all alike;
    `warmup` untimed rounds first. Each timed pair also checks that both paths produce the same tokens.
    """
    from .benchmark import BenchConfig, machine_description  # machine facts, shared with the attention benchmark

    spec = spec or GenerationBenchmark()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if spec.repeats < 1 or spec.prompt_tokens < 1 or spec.new_tokens < 1:
        raise GenerationError("benchmark.repeats, benchmark.prompt_tokens and benchmark.new_tokens must be >= 1")
    if spec.prompt_tokens + spec.new_tokens > spec.context_length:
        raise GenerationError(
            f"prompt_tokens + new_tokens = {spec.prompt_tokens + spec.new_tokens} exceeds context_length="
            f"{spec.context_length}: past the context the cache is dropped, so the benchmark would not time it"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads or threads)
    try:
        machine = machine_description(BenchConfig(device=str(device), dtype="float32"))  # threads, load at start
        times, identical = _time_variants(spec, device)
    finally:
        torch.set_num_threads(threads)
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    results = {}
    for name in spec.variants:
        cached_s, uncached_s = statistics.median(times[name][True]), statistics.median(times[name][False])
        results[name] = {
            "cached_tokens_per_s": round(spec.new_tokens / cached_s, 1),
            "uncached_tokens_per_s": round(spec.new_tokens / uncached_s, 1),
            "speedup": round(uncached_s / cached_s, 2),
            "cached_seconds": [round(s, 4) for s in times[name][True]],
            "uncached_seconds": [round(s, 4) for s in times[name][False]],
            "identical_tokens": identical[name],
            "attention": benchmark_attention(spec, name),
            "kv_cache_bytes_per_token": benchmark_model(spec, name).kv_cache_bytes_per_token(),
        }
    return {
        "what": (
            "greedy generation tokens/s (new tokens / wall time of generate(), prefill included), batch 1, "
            "random weights, with the KV cache (use_cache=True) and without (full recompute each step); "
            "median over the timed rounds"
        ),
        "command": command,
        "machine": machine,
        "config": asdict(spec),
        "results": results,
    }


def _time_variants(
    spec: GenerationBenchmark, device: torch.device
) -> tuple[dict[str, dict[bool, list[float]]], dict[str, bool]]:
    """Seconds of each timed generation per variant and cache setting, and whether cached == uncached."""
    models = {name: benchmark_model(spec, name).to(device) for name in spec.variants}
    prompt_gen = torch.Generator().manual_seed(spec.seed)
    idx = torch.randint(0, spec.vocab_size, (1, spec.prompt_tokens), generator=prompt_gen).to(device)  # (1, T)
    times: dict[str, dict[bool, list[float]]] = {name: {True: [], False: []} for name in spec.variants}
    identical = dict.fromkeys(spec.variants, True)
    for round_ in range(spec.warmup + spec.repeats):
        timed = round_ >= spec.warmup
        order = spec.variants[round_ % len(spec.variants) :] + spec.variants[: round_ % len(spec.variants)]
        for name in order:
            modes = (True, False) if round_ % 2 == 0 else (False, True)
            runs = {
                use_cache: timed_generate(models[name], idx, spec.new_tokens, use_cache=use_cache)
                for use_cache in modes
            }
            identical[name] &= torch.equal(runs[True].tokens, runs[False].tokens)
            for use_cache, run in runs.items():
                if timed:
                    times[name][use_cache].append(run.seconds)
    return times, identical


def default_benchmark_path(device: torch.device) -> Path:
    """benchmarks/results/<cpu|gpu>/generation.json in this checkout, next to the attention micro-benchmark."""
    root = Path(__file__).resolve().parents[2]
    return root / "benchmarks" / "results" / ("gpu" if device.type == "cuda" else "cpu") / "generation.json"


def format_benchmark(result: dict[str, Any], variants: Sequence[str] | None = None) -> str:
    """A small table of the benchmark, for the terminal."""
    rows = [f"{'variant':<16}{'cached tok/s':>14}{'uncached tok/s':>16}{'speedup':>9}  identical"]
    for name, r in result["results"].items():
        if variants is None or name in variants:
            rows.append(
                f"{name:<16}{r['cached_tokens_per_s']:>14.1f}{r['uncached_tokens_per_s']:>16.1f}"
                f"{r['speedup']:>8.2f}x  {r['identical_tokens']}"
            )
    return "\n".join(rows)
