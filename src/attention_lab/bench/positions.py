"""What each position scheme costs in speed: one training step of a small GPT, per variant, scheme and length.

A whole-model step (forward, cross-entropy, backward) is measured rather than the attention layer alone,
because that is what a user pays, and the schemes act in different places: `learned` and `sinusoidal` add
a vector to the token embeddings once, `rope` rotates q and k in every layer, `alibi` builds a (H, T, T) bias
in every layer, which on the SDPA path becomes a float mask that keeps SDPA off `is_causal` and its fastest
kernels; `none` (NoPE) does nothing, so it is the baseline: every scheme is reported as a ratio to `none`
for the same variant and length.

How, so that a ratio of a few percent can be trusted on a shared, noisy machine:
- one model per (variant, scheme), seeded alike, built once for the longest length (the learned table needs
  it), dropout 0; a pair the registry refuses (linear + alibi) is recorded as skipped with the registry's reason;
- per length: `warmup` untimed rounds, then `repeats` timed rounds; each round runs every variant, and within
  a variant every scheme back to back, both orders rotating between rounds (`timing.round_robin`), so a burst
  of load hits a scheme and its baseline alike;
- ratios are taken within a round (scheme / none of the same round) and their median reported: a ratio
  measured in one run, not a ratio of medians measured minutes apart;
- bfloat16 / float16 run under `torch.autocast` with float32 weights, as training's `bf16-mixed` does.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention import AttentionConfigError, available, get_variant, resolve_knobs
from ..attention.positions import POSITIONS
from ..attention.registry import check_position
from ..devices import resolve_device
from ..errors import UserError
from ..model import GPT
from .machine import describe_machine, finish_machine, load1
from .plots import plot_positions
from .results import write_csv, write_json
from .timing import round_robin, summarize, timed

log = logging.getLogger(__name__)

BASELINE = "none"  # every ratio is to this scheme (NoPE: no position work at all)
DEFAULT_VARIANTS = ("sdpa", "multihead", "gqa", "sliding_window", "linear")
DEFAULT_LENGTHS = (128, 512, 1024)  # CPU: the default grid takes 1-3 minutes on 2 cores (more under load)
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
STEM = "positions"


@dataclass
class PositionsBenchmark:
    """Everything a run depends on; stored in the JSON next to the numbers. Attention knobs other than
    num_heads and dropout (0) are the registry defaults (gqa num_kv_heads=2, sliding_window window=32)."""

    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    schemes: list[str] = field(default_factory=lambda: list(POSITIONS))
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    n_layers: int = 2
    d_model: int = 128
    num_heads: int = 4
    batch: int = 4
    vocab_size: int = 96  # a character vocabulary
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    seed: int = 0
    threads: int | None = None  # torch intra-op threads while timing; None keeps torch's default


def check_spec(spec: PositionsBenchmark) -> None:
    """Refuse settings that cannot run (UserError), before any model is built; adds the baseline scheme."""
    unknown = sorted(set(spec.variants) - set(available()))
    if unknown:
        raise UserError(f"unknown variants {unknown}: choose from {available()}.")
    bad = sorted(set(spec.schemes) - set(POSITIONS))
    if bad:
        raise UserError(f"unknown position schemes {bad}: choose from {list(POSITIONS)}.")
    if spec.dtype not in AUTOCAST:
        raise UserError(f"dtype {spec.dtype!r}: choose one of {sorted(AUTOCAST)}.")
    if not spec.variants or not spec.lengths:
        raise UserError("nothing to measure: name at least one variant and one length.")
    small = {"lengths": min(spec.lengths), "repeats": spec.repeats, "n_layers": spec.n_layers, "batch": spec.batch}
    for name, value in small.items():
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}.")
    if spec.warmup < 0:
        raise UserError(f"warmup must be >= 0, got {spec.warmup}.")
    if spec.d_model % spec.num_heads:
        raise UserError(f"d_model {spec.d_model} is not divisible by num_heads {spec.num_heads}.")
    spec.variants, spec.lengths = list(dict.fromkeys(spec.variants)), sorted(set(spec.lengths))
    spec.schemes = list(dict.fromkeys([*spec.schemes, BASELINE]))  # without the baseline there is no ratio


# --- building -----------------------------------------------------------------------------------------


def attention_config(spec: PositionsBenchmark, variant: str) -> dict[str, Any]:
    """The attention config of one variant, every knob spelled out (defaults resolved) for the JSON."""
    return {"name": variant, **resolve_knobs(variant, {"num_heads": spec.num_heads, "dropout": 0.0})}


def refusal(variant: str, scheme: str) -> str | None:
    """Why the registry refuses `scheme` for `variant` (its own message), or None if it is supported."""
    if scheme in get_variant(variant).positions:
        return None
    try:
        check_position(variant, scheme)
    except AttentionConfigError as err:
        return str(err)
    return None  # pragma: no cover - the registry's table and its check agree


def build_model(spec: PositionsBenchmark, variant: str, scheme: str) -> GPT:
    """A random-weight GPT for the longest length, seeded alike for every scheme, dropout 0, in train mode."""
    with torch.random.fork_rng(devices=[]):  # seeded without moving the caller's random stream
        torch.manual_seed(spec.seed)
        model = GPT(
            vocab_size=spec.vocab_size,
            context_length=max(spec.lengths),
            d_model=spec.d_model,
            n_layers=spec.n_layers,
            attention=attention_config(spec, variant),
            emb_dropout=0.0,
            resid_dropout=0.0,
            position=scheme,
        )
    return model.to(spec.device).train()


def sdpa_mask(model: GPT, t: int) -> str | None:
    """What the first layer hands SDPA at length t: "is_causal" (the fast kernels), "bool mask" or "float mask";
    None when the layer does not use SDPA. Asks the layer itself, so the record cannot drift from what it does."""
    attn = model.blocks[0].attn
    if getattr(attn, "kernel", "explicit") != "sdpa":
        return None
    mask = attn._sdpa_mask(t, t, next(model.parameters()).device)  # (Tq, Tk) or (H, Tq, Tk), or None
    return "is_causal" if mask is None else ("bool mask" if mask.dtype == torch.bool else "float mask")


# --- timing -------------------------------------------------------------------------------------------


def train_step(model: GPT, idx: Tensor, targets: Tensor, autocast: torch.dtype | None) -> None:
    """Forward, cross-entropy and backward: idx, targets (B, T). The loss is taken in float32, as in training."""
    context = torch.autocast(idx.device.type, dtype=autocast) if autocast else nullcontext()
    with context:
        logits = model(idx)  # (B, T, vocab)
    F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()


@dataclass(eq=False)
class _Contender:
    """One (variant, scheme) during the run: its model (None if refused) and its seconds per length and round."""

    variant: str
    scheme: str
    model: GPT | None
    reason: str | None = None  # why it is not (or no longer) timed
    seconds: dict[int, list[float | None]] = field(default_factory=dict)


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _time_step(c: _Contender, idx: Tensor, targets: Tensor, autocast: torch.dtype | None) -> float | None:
    """Seconds of one step; None after an out-of-memory error, which skips the contender from here on."""
    assert c.model is not None
    try:
        _, seconds = timed(lambda: train_step(c.model, idx, targets, autocast), idx.device)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not _is_oom(error):
            raise
        c.reason = f"out of memory at T={idx.shape[1]}: {str(error).splitlines()[0][:120]}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None
    finally:
        c.model.zero_grad(set_to_none=True)
    return seconds


def _measure_length(by_variant: dict[str, list[_Contender]], t: int, spec: PositionsBenchmark) -> None:
    """Every contender at length t: warm-up rounds, then timed rounds, schemes of a variant back to back."""
    device, autocast = torch.device(spec.device), AUTOCAST[spec.dtype]
    gen = torch.Generator().manual_seed(spec.seed + t)
    idx = torch.randint(0, spec.vocab_size, (spec.batch, t), generator=gen).to(device)  # (B, T)
    targets = torch.randint(0, spec.vocab_size, (spec.batch, t), generator=gen).to(device)  # (B, T)
    for contenders in by_variant.values():
        for c in contenders:
            c.seconds[t] = [None] * spec.repeats
    rounds = spec.warmup + spec.repeats
    scheme_orders = {v: [order for _, order in round_robin(cs, rounds)] for v, cs in by_variant.items()}
    for round_, variants in round_robin(list(by_variant), rounds):
        for variant in variants:
            for c in scheme_orders[variant][round_]:
                if c.reason is None:
                    seconds = _time_step(c, idx, targets, autocast)
                    if round_ >= spec.warmup:
                        c.seconds[t][round_ - spec.warmup] = seconds


# --- results ------------------------------------------------------------------------------------------


def _ratios(times: list[float | None], baseline: list[float | None]) -> list[float]:
    """scheme / none within each round where both were timed."""
    return [a / b for a, b in zip(times, baseline, strict=True) if a is not None and b is not None]


def _row(c: _Contender, t: int, baseline: _Contender) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": c.variant, "scheme": c.scheme, "T": t}
    times = [s for s in c.seconds.get(t, []) if s is not None]
    if not times:
        return {**row, "status": "skipped", "reason": c.reason or "not timed"}
    ratios = _ratios(c.seconds[t], baseline.seconds[t])
    p25, p50, p75 = np.percentile(ratios, [25, 50, 75]) if ratios else (None, None, None)
    return {
        **row,
        "status": "ok",
        "ms_per_step": summarize(times),
        "ratio_to_none": None if p50 is None else float(p50),
        "ratio_p25": None if p25 is None else float(p25),
        "ratio_p75": None if p75 is None else float(p75),
        "ratio_per_round": [round(r, 4) for r in ratios],
        "sdpa_mask": sdpa_mask(c.model, t) if c.model is not None else None,
    }


def run_positions(spec: PositionsBenchmark | None = None, command: str | None = None) -> dict[str, Any]:
    """Time a training step for every (variant, scheme, length); returns the JSON-ready result."""
    spec = spec or PositionsBenchmark()
    check_spec(spec)
    spec.device = str(resolve_device(spec.device, setting="--device"))
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads or threads)
    try:
        machine = describe_machine(spec.device, spec.dtype)  # records the thread count in use
        start = time.perf_counter()
        by_variant: dict[str, list[_Contender]] = {}
        for variant in spec.variants:
            by_variant[variant] = []
            for scheme in spec.schemes:
                reason = refusal(variant, scheme)
                model = None if reason else build_model(spec, variant, scheme)
                by_variant[variant].append(_Contender(variant, scheme, model, reason))
        load: dict[str, list[float | None]] = {}  # 1-min load average before and after each length
        for t in spec.lengths:
            before = load1()
            _measure_length(by_variant, t, spec)
            load[str(t)] = [before, load1()]
            log.info("T=%d done (%.0f s so far)", t, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)  # the caller's setting back
    machine["load_average_by_length"] = load
    finish_machine(machine)
    machine["total_seconds"] = round(time.perf_counter() - start, 1)
    rows = []
    for contenders in by_variant.values():
        baseline = next(c for c in contenders if c.scheme == BASELINE)
        rows.extend(_row(c, t, baseline) for c in contenders for t in spec.lengths)
    return {
        "what": (
            "ms per training step (forward + float32 cross-entropy + backward, dropout 0, random tokens) of a "
            "small GPT per attention variant x position scheme x length T; ratio_to_none: median over the timed "
            "rounds of (step time of the scheme / step time of `none`, same variant, T and round)"
        ),
        "command": command,
        "machine": machine,
        "config": asdict(spec),
        "models": {
            v: {
                "attention": attention_config(spec, v),
                "kernel": next(getattr(c.model.blocks[0].attn, "kernel", "explicit") for c in cs if c.model),
                "params": {c.scheme: c.model.num_params()["total"] for c in cs if c.model is not None},
            }
            for v, cs in by_variant.items()
        },
        "rows": rows,
    }


# --- writing and printing -----------------------------------------------------------------------------

CSV_FIELDS = ["variant", "scheme", "T", "status", "ms_median", "ms_iqr", "ratio_to_none", "ratio_p25", "ratio_p75"]
CSV_FIELDS += ["sdpa_mask", "reason"]


def _rounded(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)


def csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (variant, scheme, length); skipped ones keep their reason."""
    out = []
    for r in result["rows"]:
        ok = r["status"] == "ok"
        out.append(
            {
                **{key: r[key] for key in ("variant", "scheme", "T", "status")},
                "ms_median": round(r["ms_per_step"]["median"], 3) if ok else "",
                "ms_iqr": round(r["ms_per_step"]["iqr"], 3) if ok else "",
                **{key: _rounded(r.get(key)) for key in ("ratio_to_none", "ratio_p25", "ratio_p75")},
                "sdpa_mask": r.get("sdpa_mask") or "",
                "reason": r.get("reason") or "",
            }
        )
    return out


def write_positions(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """positions.json (everything), positions.csv (one row per variant, scheme and length), positions.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{STEM}.{ext}" for ext in ("json", "csv", "png")}
    write_json(result, paths["json"])
    write_csv(csv_rows(result), CSV_FIELDS, paths["csv"])
    plot_positions(result, paths["png"])
    return paths


def format_positions(result: dict[str, Any]) -> str:
    """The median ratios to `none` as a table for the terminal: one line per variant and length."""
    schemes = result["config"]["schemes"]
    table = {(r["variant"], r["T"], r["scheme"]): r for r in result["rows"]}
    lines = [f"{'variant':<16}{'T':>6}" + "".join(f"{s:>12}" for s in schemes) + f"{'none ms':>11}"]
    for variant in result["config"]["variants"]:
        for t in result["config"]["lengths"]:
            cells = []
            for scheme in schemes:
                ratio = table[variant, t, scheme].get("ratio_to_none")
                cells.append(f"{'-' if ratio is None else f'{ratio:.3f}':>12}")
            base = table[variant, t, BASELINE]
            ms = f"{base['ms_per_step']['median']:.1f}" if base["status"] == "ok" else "-"
            lines.append(f"{variant:<16}{t:>6}" + "".join(cells) + f"{ms:>11}")
    return "\n".join(lines)
