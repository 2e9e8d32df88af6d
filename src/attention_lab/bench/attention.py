"""Micro-benchmark of the attention modules: time and memory against sequence length, for every variant.

What is measured, per variant and length T (input x: (B, T, d_model)):
- `fwd_ms`: one forward in eval mode under `torch.no_grad()` (inference cost).
- `fwd_bwd_ms`: forward + backward in train mode, dropout 0, with x requiring grad as inside a model
  (training cost of the layer).
- `saved_bytes`: activation memory of one training step: the bytes of the distinct tensor storages that
  autograd keeps for the backward pass, collected with `torch.autograd.graph.saved_tensors_hooks`,
  parameters, buffers and the input itself excluded. This is what a layer adds to memory per training
  step, it is device independent, and it is exact on CPU, where PyTorch has no peak-memory counter. It shows
  the (B, H, T, T) weights that explicit attention keeps, against O(T) for the SDPA and linear kernels.
- `peak_bytes` (CUDA only): `torch.cuda.max_memory_allocated` during forward + backward, above what was
  allocated before (includes the temporaries that `saved_bytes` does not).

How, so that the numbers can be trusted on a shared, noisy machine:
- every variant is first checked: its training path (e.g. SDPA, prefix sums) must match its explicit
  formula (`forward(x, return_weights=True)`) computed in float32; a variant that fails is not timed;
- warm-up rounds, then `repeats` rounds in which all variants run one after another (round-robin, starting
  at a different variant each round), so that a burst of load hits all variants alike; medians and IQRs;
- `time.perf_counter`, with the device synchronised around each call (`timing.timed`);
- a variant is skipped at the next length once its predicted time there exceeds `max_seconds_per_point`,
  and after an out-of-memory error; skipped points are recorded with the reason.

`sliding_dense=True` (`--sliding-dense`) adds the row `sliding_window_dense`: sliding_window with its blocked
kernel switched off (`blocked = False`), i.e. the dense (T, T) band mask through SDPA it replaced, timed in the
same rounds so that the two can be compared point by point.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attention import available, build_attention, count_params, get_variant
from ..errors import UserError
from .machine import describe_machine, finish_machine, load1
from .timing import round_robin, summarize, timed

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# max |fast - reference| / max |reference|, reference = explicit formula in float32
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2, "float16": 5e-3}
DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096)  # CPU
GPU_LENGTHS = (*DEFAULT_LENGTHS, 8192, 16384)
VERIFY_BATCH, VERIFY_LENGTH = 2, 64
DENSE_BAND = "sliding_window_dense"  # the row of `sliding_dense`: sliding_window with blocked = False

MEMORY_METRIC = (
    "saved_bytes: bytes of the distinct tensor storages autograd saves for backward in one forward pass "
    "(train mode, dropout 0), parameters, buffers and the input excluded = the layer's activation memory "
    "per training step. peak_bytes (CUDA only): torch.cuda.max_memory_allocated during forward+backward "
    "above the memory allocated before it."
)


@dataclass
class BenchConfig:
    """Everything a run depends on; stored in the JSON next to the results."""

    variants: list[str] = field(default_factory=available)
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    d_model: int = 256
    heads: int = 8
    batch: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    window: int = 128
    max_seconds_per_point: float = 120.0
    verify: bool = True
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None keeps torch's default (recorded in the JSON)
    sliding_dense: bool = False  # also time sliding_window's dense (T, T) band, as the row `sliding_window_dense`


# --- building -----------------------------------------------------------------------------------------


def variant_knobs(name: str, cfg: BenchConfig) -> dict[str, Any]:
    """The knobs `name` accepts, set from the benchmark's width and heads (dropout 0: timing, not training)."""
    accepted = get_variant(name).knobs
    wanted = {
        "num_heads": cfg.heads,
        "dropout": 0.0,
        "num_kv_heads": max(1, cfg.heads // 4),
        "window": cfg.window,
        "latent_dim": max(1, cfg.d_model // 4),
        "causal": True,
        "qkv_bias": False,
    }
    return {key: value for key, value in wanted.items() if key in accepted}


def rows(cfg: BenchConfig) -> list[tuple[str, str]]:
    """(row name, variant) per row of the results: the variants, and with `sliding_dense` the dense band right
    after sliding_window (or last)."""
    out = [(name, name) for name in cfg.variants]
    if cfg.sliding_dense:
        at = cfg.variants.index("sliding_window") + 1 if "sliding_window" in cfg.variants else len(out)
        out.insert(at, (DENSE_BAND, "sliding_window"))
    return out


def build_module(name: str, cfg: BenchConfig, context_length: int, row: str | None = None) -> nn.Module:
    """Variant `name` at the benchmark's settings; the row `sliding_window_dense` gets its blocked kernel off."""
    module = build_attention(name, cfg.d_model, context_length, **variant_knobs(name, cfg))
    if row == DENSE_BAND:
        module.blocked = False
    return module.to(device=cfg.device, dtype=DTYPES[cfg.dtype])


def kernel_of(module: nn.Module) -> str:
    """What the training path computes with: "explicit" (materialises (B, H, T, T)), "sdpa" or "linear"; an SDPA
    variant with attention.logit_softcap says "explicit (logit_softcap)" (its `kernel_in_use`)."""
    return getattr(module, "kernel_in_use", getattr(module, "kernel", "explicit"))  # the chapter's: all explicit


# --- verification -------------------------------------------------------------------------------------


def verify(module: nn.Module, cfg: BenchConfig) -> tuple[bool, float]:
    """Does the training path (fast kernel) agree with the explicit formula? Returns (ok, relative error).

    The reference is `forward(x, return_weights=True)` of a float32 copy, so a low-precision run is
    checked against exact arithmetic; the tolerance is relative to the largest output. A windowed variant is
    checked past two windows (2 * window + 1, capped at the longest length), so that its blocked kernel, with a
    partial last block, is what gets checked rather than the plain causal path of short sequences.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    window = getattr(module, "window", None) or 0
    t = min(max(VERIFY_LENGTH, 2 * window + 1), max(cfg.lengths))
    x = torch.randn(VERIFY_BATCH, t, cfg.d_model, generator=gen).to(cfg.device)  # (B, T, d)
    reference_module = copy.deepcopy(module).float().eval()
    was_training = module.training
    module.eval()
    with torch.no_grad():
        fast = module(x.to(DTYPES[cfg.dtype])).float()
        reference = reference_module(x, return_weights=True)[0]
    module.train(was_training)
    error = ((fast - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
    return bool(error <= TOLERANCE[cfg.dtype]), error


# --- timing and memory --------------------------------------------------------------------------------


def time_forward(module: nn.Module, x: Tensor) -> float:
    """Seconds for one inference forward (eval mode, no autograd)."""
    module.eval()
    with torch.no_grad():
        _, seconds = timed(lambda: module(x), x.device)
    return seconds


def time_forward_backward(module: nn.Module, x: Tensor, grad: Tensor) -> float:
    """Seconds for one training forward + backward; x requires grad, as the output of a previous layer would."""
    module.train()
    x = x.detach().requires_grad_(True)
    _, seconds = timed(lambda: module(x).backward(grad), x.device)
    module.zero_grad(set_to_none=True)
    return seconds


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def saved_activation_bytes(module: nn.Module, x: Tensor, grad: Tensor) -> int:
    """Bytes autograd keeps for backward after one training forward (see MEMORY_METRIC).

    Storages are counted once each (views share them) and at their full size (a view keeps all of it alive).
    """
    module.train()
    x = x.detach().requires_grad_(True)
    exclude = {_storage_key(t) for t in (*module.parameters(), *module.buffers(), x)}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key and key not in exclude:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    out.backward(grad)
    module.zero_grad(set_to_none=True)
    return sum(saved.values())


def peak_cuda_bytes(module: nn.Module, x: Tensor, grad: Tensor) -> int | None:
    """Peak CUDA memory of forward + backward above the memory in use before it; None off CUDA."""
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    time_forward_backward(module, x, grad)
    return torch.cuda.max_memory_allocated(x.device) - base


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# --- the run ------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    """One variant during the run: its module, its fate so far and its results per length."""

    name: str
    module: nn.Module
    info: dict[str, Any]
    points: dict[int, dict[str, Any]] = field(default_factory=dict)
    skip_reason: str | None = None
    last_point: tuple[int, float] | None = None  # (T, seconds per fwd + fwd_bwd pair) to predict the next one
    prev_point: tuple[int, float] | None = None


def _predicted_seconds(entry: _Entry, t: int, calls: int) -> float:
    """Seconds the point at length t will take: `calls` times the median cost of one fwd + (fwd+bwd) seen
    at the last length, grown by the exponent seen between the last two lengths (within [1, 2]; 2 if unknown).

    Medians rather than wall time spent, so a one-off first-call overhead at a short length does not skip
    a variant at the longer ones.
    """
    if entry.last_point is None:
        return 0.0
    t_last, c_last = entry.last_point
    exponent = 2.0
    if entry.prev_point is not None:
        t_prev, c_prev = entry.prev_point
        exponent = min(2.0, max(1.0, math.log(max(c_last, 1e-9) / max(c_prev, 1e-9)) / math.log(t_last / t_prev)))
    return calls * c_last * (t / t_last) ** exponent


def _make_entries(cfg: BenchConfig) -> list[_Entry]:
    entries = []
    element_bytes = torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()
    for row, name in rows(cfg):
        torch.manual_seed(cfg.seed)
        module = build_module(name, cfg, max(cfg.lengths), row)
        info: dict[str, Any] = {
            "knobs": variant_knobs(name, cfg),
            "kernel": kernel_of(module),
            "params": count_params(module),
            "kv_cache_bytes_per_token": module.kv_cache_bytes_per_token(element_bytes),
            "verified": None,
            "verify_rel_error": None,
        }
        entry = _Entry(row, module, info)
        if cfg.verify:
            ok, error = verify(module, cfg)
            info["verified"], info["verify_rel_error"] = ok, error
            log.info("verify %-18s rel. error %.2e %s", row, error, "ok" if ok else "FAILED: not timed")
            if not ok:
                entry.skip_reason = f"failed verification (rel. error {error:.2e} > {TOLERANCE[cfg.dtype]:.0e})"
        entries.append(entry)
    return entries


def _guarded(entry: _Entry, fn: Callable[[], Any]) -> Any:
    """Run fn; on out-of-memory mark the variant as skipped from here on and return None."""
    try:
        return fn()
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not _is_oom(error):
            raise
        entry.skip_reason = f"out of memory: {str(error).splitlines()[0][:120]}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def _measure_length(entries: list[_Entry], t: int, cfg: BenchConfig) -> None:
    """All variants at one length: warm-up, memory, then interleaved timed rounds."""
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(cfg.seed + t)
    x = torch.randn(cfg.batch, t, cfg.d_model, generator=gen).to(device=device, dtype=dtype)  # (B, T, d)
    grad = torch.randn(cfg.batch, t, cfg.d_model, generator=gen).to(device=device, dtype=dtype)  # (B, T, d)

    calls = cfg.warmup + cfg.repeats + 1  # + 1: the memory measurement
    for entry in entries:
        predicted = _predicted_seconds(entry, t, calls)
        if entry.skip_reason is None and predicted > cfg.max_seconds_per_point:
            entry.skip_reason = (
                f"predicted {predicted:.0f} s at T={t} > --max-seconds-per-point {cfg.max_seconds_per_point:g}"
            )
    active = [e for e in entries if e.skip_reason is None]
    spent = dict.fromkeys((e.name for e in active), 0.0)

    def run(entry: _Entry, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = _guarded(entry, fn)
        spent[entry.name] += time.perf_counter() - start
        return result

    memory = {}
    for entry in active:
        for _ in range(cfg.warmup):
            run(entry, lambda e=entry: (time_forward(e.module, x), time_forward_backward(e.module, x, grad)))
        saved = run(entry, lambda e=entry: saved_activation_bytes(e.module, x, grad))
        peak = run(entry, lambda e=entry: peak_cuda_bytes(e.module, x, grad))
        memory[entry.name] = (saved, peak)

    fwd: dict[str, list[float]] = {e.name: [] for e in active}
    fwd_bwd: dict[str, list[float]] = {e.name: [] for e in active}
    for _, order in round_robin(active, cfg.repeats):  # a different variant first each round
        for entry in order:
            if entry.skip_reason is not None:
                continue
            f = run(entry, lambda e=entry: time_forward(e.module, x))
            fb = run(entry, lambda e=entry: time_forward_backward(e.module, x, grad))
            if f is not None and fb is not None:
                fwd[entry.name].append(f)
                fwd_bwd[entry.name].append(fb)

    for entry in entries:
        if entry not in active or entry.skip_reason is not None:
            entry.points[t] = {"status": "skipped", "reason": entry.skip_reason}
            continue
        saved, peak = memory[entry.name]
        entry.points[t] = {
            "status": "ok",
            "fwd_ms": summarize(fwd[entry.name]),
            "fwd_bwd_ms": summarize(fwd_bwd[entry.name]),
            "saved_bytes": saved,
            "peak_bytes": peak,
            "seconds_spent": spent[entry.name],
        }
        per_call = (entry.points[t]["fwd_ms"]["median"] + entry.points[t]["fwd_bwd_ms"]["median"]) / 1e3
        entry.prev_point, entry.last_point = entry.last_point, (t, per_call)
        log.info(
            "T=%-5d %-18s fwd %9.2f ms  fwd+bwd %9.2f ms  saved %8.1f MiB  (%.1f s)",
            t,
            entry.name,
            entry.points[t]["fwd_ms"]["median"],
            entry.points[t]["fwd_bwd_ms"]["median"],
            saved / 2**20,
            spent[entry.name],
        )


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Verify, then time and measure every variant at every length; returns the JSON-ready result."""
    unknown = sorted(set(cfg.variants) - set(available()))
    if unknown:
        raise UserError(f"unknown variants {unknown}: choose from {available()}.")
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype {cfg.dtype!r}: choose one of {sorted(DTYPES)}.")
    cfg.lengths = sorted(set(cfg.lengths))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or threads)
    try:
        machine = describe_machine(cfg.device, cfg.dtype)  # records the thread count in use
        start = time.perf_counter()
        entries = _make_entries(cfg)
        load: dict[str, list[float | None]] = {}  # 1-min load average before and after each length
        for t in cfg.lengths:
            before = load1()
            _measure_length(entries, t, cfg)
            load[str(t)] = [before, load1()]
    finally:
        torch.set_num_threads(threads)  # the caller's setting back (the CLI may run several benchmarks)
    machine["load_average_by_length"] = load
    finish_machine(machine)
    machine["total_seconds"] = round(time.perf_counter() - start, 1)
    return {
        "machine": machine,
        "config": asdict(cfg),
        "memory_metric": MEMORY_METRIC,
        "variants": {e.name: {**e.info, "points": {str(t): p for t, p in e.points.items()}} for e in entries},
    }
