"""`attention-lab generate`: sample text from a trained checkpoint, and check the KV cache against recomputing.

    attention-lab generate --ckpt outputs/runs/<run>/checkpoints/last.ckpt --prompt "The "
    attention-lab generate --ckpt ... --temperature 0 --compare-cache    # cached == uncached? tokens/s of both
    attention-lab generate --ckpt ... --device auto --top-k 0 --temperature 1.0 --seed 3
    python scripts/generate.py --ckpt ...                                 # the same command

Flags, not Hydra overrides: generating text should not create a run folder or reconfigure logging, and a
prompt is free text that Hydra's override grammar (commas, quotes, brackets) and YAML (`#`, `: `) would
misparse. argparse hands --prompt over verbatim (only a prompt that starts with "-" must be written
--prompt=-...). Every number is checked while parsing, so a bad value fails before the slow checkpoint load.

Output: one line describing the checkpoint's model, the prompt and its continuation, then the tokens/s of that
generation; with --compare-cache also the greedy tokens/s with and without the cache and the speed-up.
A user's mistake (a missing or corrupt checkpoint, a bad number, a prompt the tokenizer cannot encode, a
device that is not here) prints one `error:` line on stderr and returns 2, without a traceback.
Generation speed over random models of every variant is `attention-lab bench generation`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..bench.generation import GenerationError, compare_cache, timed_generate
from ..checkpoint import load_model
from ..data import Tokenizer
from ..devices import resolve_device
from ..errors import UserError
from .common import OneLineParser, run_command

PROG = "attention-lab generate"


class UsageError(UserError):
    """The command line itself is malformed: an unknown or missing flag, or a value of the wrong kind."""


# ------------------------------------------------------------------------------------------------ parsing
def _integer(flag: str, minimum: int, what: str) -> Callable[[str], int]:
    """An argparse `type=` that accepts integers >= minimum; the message names the flag and the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be {what}, got {text}")
        return value

    return parse


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"--temperature must be a number >= 0 (0 = greedy), got {text}")
    return value


def _checkpoint_file(text: str) -> Path:
    """--ckpt must name an existing file; a folder (e.g. the run folder) gets a pointer to the file inside."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"--ckpt {path} is a folder: pass a .ckpt file, e.g. {path / 'checkpoints' / 'last.ckpt'}"
        )
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"--ckpt {path} does not exist: pass the path of a .ckpt file, "
            "e.g. outputs/runs/<run>/checkpoints/last.ckpt"
        )
    return path


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --temp is not --temperature: flags are spelled out
    )
    p.add_argument("--ckpt", required=True, type=_checkpoint_file, metavar="PATH", help="checkpoint (.ckpt) to load")
    p.add_argument("--prompt", default="The ", metavar="TEXT", help="text to continue, verbatim (default: %(default)r)")
    p.add_argument(
        "--max-new-tokens",
        type=_integer("--max-new-tokens", 1, "a positive integer"),
        default=100,
        metavar="N",
        help="tokens to generate; fewer if the model ends the text (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=_temperature,
        default=0.8,
        metavar="T",
        help="softmax temperature; 0 = greedy (default: %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=_integer("--top-k", 0, "an integer >= 0 (0 = off)"),
        default=40,
        metavar="K",
        help="sample only from the K most likely tokens; 0 = the whole vocabulary (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=_integer("--seed", 0, "an integer >= 0"),
        default=0,
        help="seed of the sampler (default: %(default)s)",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute every step instead of using the KV cache")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (CUDA if there is one) (default: cpu)")
    p.add_argument(
        "--compare-cache",
        action="store_true",
        help="also decode greedily with and without the KV cache: check the tokens are identical, print both tokens/s",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as a namespace; UsageError (one line) for anything malformed."""
    return build_parser().parse_args(argv)


# ------------------------------------------------------------------------------------------------ generating
def encode_prompt(tokenizer: Tokenizer, prompt: str, device: torch.device | str = "cpu") -> Tensor:
    """Prompt text -> ids (1, T). An empty prompt starts from end-of-text where the tokenizer has one."""
    if prompt:
        try:
            ids = tokenizer.encode(prompt)
        except ValueError as err:  # e.g. characters a char tokenizer never saw
            raise GenerationError(f"--prompt {prompt!r} cannot be encoded: {err}") from err
    elif tokenizer.eot_token is not None:
        ids = [tokenizer.eot_token]
    else:
        ids = []
    if not ids:
        raise GenerationError(
            f"--prompt {prompt!r} gives no tokens and the {tokenizer.name} tokenizer has no end-of-text token to "
            'start from: give at least one character, e.g. --prompt "The "'
        )
    return torch.tensor([ids], dtype=torch.long, device=device)


def describe(path: str | Path, hparams: dict[str, Any], tokenizer: Tokenizer) -> str:
    """One line: which checkpoint, which attention (with its knobs), how big, which tokenizer."""
    model = hparams["model"]
    knobs = ", ".join(f"{k}={v}" for k, v in model["attention"].items() if k != "name")
    return (
        f"[checkpoint] {path}: attention={model['attention']['name']} ({knobs}), {model['n_layers']} layers, "
        f"d_model {model['d_model']}, context {model['context_length']}, {model.get('position', 'learned')} "
        f"positions, {tokenizer.name} tokenizer "
        f"({model['vocab_size']} tokens)"
    )


def generate(argv: Sequence[str] | None = None) -> int:
    """Parse, load, sample, print; a user's mistake raises a UserError."""
    try:
        args = parse_args(argv)
    except SystemExit as stop:  # --help printed the help text
        return int(stop.code or 0)
    device = resolve_device(args.device, setting="--device")
    model, tokenizer, hparams = load_model(args.ckpt, device)
    print(describe(args.ckpt, hparams, tokenizer))
    idx = encode_prompt(tokenizer, args.prompt, device)  # (1, T)
    top_k = args.top_k or None  # 0 = off
    use_cache = not args.no_cache
    run = timed_generate(
        model,
        idx,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=top_k,
        eot_token=tokenizer.eot_token,
        use_cache=use_cache,
        generator=torch.Generator(device=device).manual_seed(args.seed),
    )  # run.tokens: (1, T + new)
    print(tokenizer.decode(run.tokens[0].tolist()))
    sampling = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, top-k {top_k or 'off'}"
    print(
        f"[generate] {run.new_tokens} new tokens in {run.seconds:.3f} s: {run.tokens_per_s:.1f} tokens/s "
        f"(KV cache {'on' if use_cache else 'off'}, {sampling}, seed {args.seed}, {device})"
    )
    if args.compare_cache:
        cached, uncached = compare_cache(model, idx, args.max_new_tokens, tokenizer.eot_token)  # raises if differ
        speedup = uncached.seconds / cached.seconds if cached.seconds > 0 else math.inf
        print(f"[compare-cache] greedy, {cached.new_tokens} new tokens: identical tokens with and without the cache")
        print(f"[compare-cache] with cache:    {cached.tokens_per_s:.1f} tokens/s")
        print(
            f"[compare-cache] without cache: {uncached.tokens_per_s:.1f} tokens/s "
            f"(speed-up with the cache: {speedup:.2f}x)"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `generate` command: exit status 0, or 2 for a user's mistake (one `error:` line on stderr)."""
    return run_command(generate, argv)
