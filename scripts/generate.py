"""Sample text from a trained checkpoint, or measure generation speed with and without the KV cache.

    python scripts/generate.py ckpt=outputs/runs/<run>/checkpoints/last.ckpt prompt="The "
    python scripts/generate.py ckpt=... temperature=0 compare_cache=true   # cached == uncached? tokens/s of both
    python scripts/generate.py ckpt=... device=auto top_k=null temperature=1.0 seed=3
    python scripts/generate.py mode=benchmark        # -> benchmarks/results/cpu/generation.json (no ckpt needed)
    python scripts/generate.py mode=benchmark benchmark.repeats=5 "benchmark.variants=[multihead,linear]"

Settings are `key=value` overrides of conf/generate.yaml; `--help` prints them all. Why not @hydra.main:
generating text should not create a run folder or reconfigure logging, and a prompt is free text, which
Hydra's override grammar (commas, quotes, brackets) and YAML (`#`, `: `) would misparse. So `prompt` and
`ckpt` are taken verbatim (one pair of surrounding quotes is removed, so Hydra-style 'prompt="Hi, you"' works
too); every other value is parsed like OmegaConf.from_dotlist and type-checked against `GenerateConfig`.

Output: a line describing the checkpoint, the prompt and its continuation, then the tokens/s of generation
(and with compare_cache=true the tokens/s with and without the cache). Errors (missing or corrupt checkpoint,
a bad setting) print one line on stderr and exit with status 1, or 2 for a malformed command line.
The logic lives in `attention_lab.generate`; this file only reads settings and prints.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

ROOT = Path(__file__).resolve().parents[1]
try:
    import attention_lab  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(ROOT / "src"))

from attention_lab.attention import AttentionConfigError  # noqa: E402
from attention_lab.checkpoint import CheckpointError  # noqa: E402
from attention_lab.data import DataConfigError, Tokenizer  # noqa: E402
from attention_lab.generate import (  # noqa: E402
    GenerationBenchmark,
    GenerationError,
    benchmark_generation,
    compare_cache,
    default_benchmark_path,
    encode_prompt,
    format_benchmark,
    load_model,
    resolve_device,
    timed_generate,
)

CONFIG = ROOT / "conf" / "generate.yaml"
VERBATIM_KEYS = ("prompt", "ckpt")  # free text: never parsed as YAML
MODES = ("sample", "benchmark")


class UsageError(ValueError):
    """The command line itself is malformed (exit status 2)."""


@dataclass
class GenerateConfig:
    """Types of the settings; their values live in conf/generate.yaml (MISSING here means "see the YAML")."""

    mode: str = MISSING
    ckpt: str = MISSING
    prompt: str = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int | None = MISSING
    seed: int = MISSING
    use_cache: bool = MISSING
    device: str = MISSING
    compare_cache: bool = MISSING
    out: str | None = MISSING
    benchmark: GenerationBenchmark = field(default_factory=GenerationBenchmark)


# ------------------------------------------------------------------------------------------------ settings
def _unquote(value: str) -> str:
    """Drop one pair of matching surrounding quotes, as Hydra would for prompt="..." passed through the shell."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_overrides(args: list[str]) -> DictConfig:
    """`key=value` arguments -> a config; free-text keys verbatim, everything else as YAML values."""
    dotlist, verbatim = [], {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UsageError(f'expected key=value, got {arg!r} (e.g. ckpt=path/to/last.ckpt prompt="The ")')
        if key in VERBATIM_KEYS:
            verbatim[key] = _unquote(value)
        else:
            dotlist.append(arg)
    try:
        overrides = OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as err:
        raise UsageError(f"cannot parse {' '.join(dotlist)}: {_first_line(err)}") from err
    for key, value in verbatim.items():
        overrides[key] = value
    return overrides


def load_config(args: list[str]) -> DictConfig:
    """conf/generate.yaml + overrides, type-checked; UsageError names the bad or unknown setting."""
    schema = OmegaConf.structured(GenerateConfig)
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.load(CONFIG), parse_overrides(args))
    except ConfigKeyError as err:
        valid = ", ".join(k for k in schema if k != "benchmark") + ", benchmark.<" + ", ".join(schema.benchmark) + ">"
        raise UsageError(f"unknown setting {err.full_key}: the settings are {valid}") from err
    except OmegaConfBaseException as err:  # a value of the wrong type
        raise UsageError(f"{err.full_key}: {_first_line(err)}") from err
    check_settings(cfg)
    return cfg


def check_settings(cfg: DictConfig) -> None:
    """Values that parse but cannot work, rejected before the (slow) checkpoint load."""
    if cfg.mode not in MODES:
        raise UsageError(f"mode={cfg.mode} is unknown: use mode=sample (default) or mode=benchmark")
    if cfg.mode == "sample" and OmegaConf.is_missing(cfg, "ckpt"):
        raise UsageError("ckpt is required: ckpt=outputs/runs/<run>/checkpoints/last.ckpt (or mode=benchmark)")
    if cfg.max_new_tokens < 1:
        raise UsageError(f"max_new_tokens={cfg.max_new_tokens} must be >= 1")
    if cfg.temperature < 0:
        raise UsageError(f"temperature={cfg.temperature} must be >= 0 (0 = greedy)")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UsageError(f"top_k={cfg.top_k} must be >= 1, or null to sample from the whole vocabulary")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# ------------------------------------------------------------------------------------------------ modes
def describe(path: str, hparams: dict[str, Any], tokenizer: Tokenizer) -> str:
    model = hparams["model"]
    attention = ", ".join(f"{k}={v}" for k, v in model["attention"].items() if k != "name")
    return (
        f"[checkpoint] {path}: attention={model['attention']['name']} ({attention}), {model['n_layers']} layers, "
        f"d_model {model['d_model']}, context {model['context_length']}, {tokenizer.name} tokenizer "
        f"({model['vocab_size']} tokens)"
    )


def run_sample(cfg: DictConfig) -> None:
    device = resolve_device(cfg.device)
    model, tokenizer, hparams = load_model(cfg.ckpt, device)
    print(describe(cfg.ckpt, hparams, tokenizer))
    idx = encode_prompt(tokenizer, cfg.prompt, device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    run = timed_generate(
        model,
        idx,
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        eot_token=tokenizer.eot_token,
        use_cache=cfg.use_cache,
        generator=generator,
    )
    print(tokenizer.decode(run.tokens[0].tolist()))
    sampling = "greedy" if cfg.temperature == 0 else f"temperature {cfg.temperature}, top_k {cfg.top_k}"
    print(
        f"[generate] {run.new_tokens} new tokens in {run.seconds:.3f} s: {run.tokens_per_s:.1f} tokens/s "
        f"(KV cache {'on' if cfg.use_cache else 'off'}, {sampling}, seed {cfg.seed}, {device})"
    )
    if cfg.compare_cache:
        cached, uncached = compare_cache(model, idx, cfg.max_new_tokens, tokenizer.eot_token)
        print(f"[compare_cache] greedy, {cached.new_tokens} new tokens: identical tokens with and without the cache")
        print(f"[compare_cache] with cache:    {cached.tokens_per_s:.1f} tokens/s")
        print(
            f"[compare_cache] without cache: {uncached.tokens_per_s:.1f} tokens/s "
            f"(speed-up with the cache: {uncached.seconds / cached.seconds:.2f}x)"
        )


def run_benchmark(cfg: DictConfig, args: list[str]) -> None:
    device = resolve_device(cfg.device)
    spec: GenerationBenchmark = OmegaConf.to_object(cfg.benchmark)
    command = shlex.join(["python", "scripts/generate.py", *args])
    result = benchmark_generation(spec, device, command=command)
    out = Path(cfg.out) if cfg.out else default_benchmark_path(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_benchmark(result))
    print(f"[benchmark] wrote {out}")


# ------------------------------------------------------------------------------------------------ entry
def _fail(err: BaseException, status: int) -> int:
    message = " ".join(str(err).split()) or type(err).__name__  # one line, whatever the exception held
    print(f"generate.py: error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-h", "--help") for arg in args):
        print(__doc__)
        print(OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.structured(GenerateConfig), OmegaConf.load(CONFIG))))
        return 0
    try:
        cfg = load_config(args)
    except UsageError as err:
        return _fail(err, 2)
    try:
        if cfg.mode == "benchmark":
            run_benchmark(cfg, args)
        else:
            run_sample(cfg)
    except (CheckpointError, GenerationError, AttentionConfigError, DataConfigError, OSError) as err:
        return _fail(err, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
