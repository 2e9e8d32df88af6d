"""Generation speed: tokens/s of one `generate` call, the cached-vs-uncached check, and the benchmark of
greedy decoding with and without the KV cache on random GPTs (the committed `generation.json`).

`timed_generate` and `compare_cache` live here rather than in `sampling` because they are measurements: the
`generate` command uses them to report speed, and the benchmark uses them to time every variant. Random
weights are enough for the benchmark: speed does not depend on what the weights say, and no checkpoint is needed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..attention import resolve_knobs
from ..devices import resolve_device
from ..errors import UserError
from ..model import GPT
from ..sampling import generate
from .machine import describe_machine, finish_machine
from .timing import round_robin, timed


class GenerationError(UserError):
    """A generation setting that cannot work or a failed check; the message names the fix."""


@dataclass(frozen=True)
class TimedGeneration:
    """One `generate` call: the whole sequence (1, T + new), how many tokens were new, and the wall time."""

    tokens: Tensor
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def timed_generate(model: GPT, idx: Tensor, max_new_tokens: int, **sampling: Any) -> TimedGeneration:
    """`generate` (same keyword arguments) with its wall time (prefill included: a user waits for it too)."""
    out, seconds = timed(lambda: generate(model, idx, max_new_tokens, **sampling), idx.device)  # (B, T + new)
    return TimedGeneration(out, out.shape[1] - idx.shape[1], seconds)


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
            f": the cache path of {type(model.blocks[0].attn).__name__} is wrong; run tests/test_sampling.py, and "
            "generate with --no-cache meanwhile."
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
    spec = spec or GenerationBenchmark()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if spec.repeats < 1 or spec.prompt_tokens < 1 or spec.new_tokens < 1 or spec.warmup < 0:
        raise GenerationError("repeats, prompt_tokens and new_tokens must be >= 1, and warmup >= 0")
    if not spec.variants:
        raise GenerationError("no variants to benchmark: name at least one")
    if spec.prompt_tokens + spec.new_tokens > spec.context_length:
        raise GenerationError(
            f"prompt_tokens + new_tokens = {spec.prompt_tokens + spec.new_tokens} exceeds context_length="
            f"{spec.context_length}: past the context the cache is dropped, so the benchmark would not time it"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads or threads)
    try:
        machine = describe_machine(device, "float32")  # records the thread count in use and the load at start
        times, identical = _time_variants(spec, device)
    finally:
        torch.set_num_threads(threads)
    finish_machine(machine)
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
    for round_, order in round_robin(spec.variants, spec.warmup + spec.repeats):
        counted = round_ >= spec.warmup
        modes = (True, False) if round_ % 2 == 0 else (False, True)  # cached first every other round
        for name in order:
            runs = {
                use_cache: timed_generate(models[name], idx, spec.new_tokens, use_cache=use_cache)
                for use_cache in modes
            }
            identical[name] &= torch.equal(runs[True].tokens, runs[False].tokens)
            for use_cache, run in runs.items():
                if counted:
                    times[name][use_cache].append(run.seconds)
    return times, identical


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
