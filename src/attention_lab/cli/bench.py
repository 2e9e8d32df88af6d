"""`attention-lab bench {attention,generation,loop,positions,corpus}`: the benchmarks' one command line.

    attention-lab bench attention                          # every variant, T = 128 .. 4096, CPU
    attention-lab bench attention --device cuda --dtype bfloat16 --lengths 512 1024 2048 4096 8192 16384
    attention-lab bench generation --variants multihead linear --repeats 5
    attention-lab bench loop --repeats 5                   # our step vs a minimal reference GPT, and vs plain loops
    attention-lab bench loop --contenders hand lightning   # only what the Lightning loop costs
    attention-lab bench positions --variants sdpa linear --schemes rope alibi none --lengths 256 1024
    attention-lab bench attention --out benchmarks/results/cpu   # only this way are committed results replaced
    attention-lab bench attention --variants sliding_window --sliding-dense   # blocked kernel vs the dense band
    attention-lab bench corpus --sizes 100 300             # tokenization MB/s, training memory as the corpus grows

Without --out, each run writes to a new folder outputs/bench/<kind>/<date_time>-<suffix>/ under the current
directory ($ATTENTION_LAB_OUTPUTS replaces `outputs`), so a benchmark never overwrites committed results by
accident. Settings are checked before anything runs; a bad one exits with status 2 and one `error:` line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..attention import available
from ..attention.positions import POSITIONS
from ..bench.attention import DEFAULT_LENGTHS, DTYPES, GPU_LENGTHS, BenchConfig, run_benchmark
from ..bench.generation import GenerationBenchmark, benchmark_generation, format_benchmark
from ..bench.positions import AUTOCAST, PositionsBenchmark, format_positions, run_positions, write_positions
from ..bench.results import check_out, output_dir, write_json, write_results
from ..devices import resolve_device
from ..errors import UserError
from .common import OneLineParser, run_command

SUMMARY = {
    "attention": "time and memory of every attention module against T",
    "generation": "greedy tokens/s with and without the KV cache, per variant",
    "loop": "tokens/s of our training step against a plain loop and a minimal reference GPT (CPU)",
    "positions": "training-step time of each position scheme as a ratio to none, per variant and T",
    "corpus": "tokenization MB/s by worker count, and peak memory of training as a generated corpus grows",
}
KINDS = tuple(SUMMARY)
# bench.loop's CONTENDERS and DEFAULT_CONTENDERS, repeated here so that the parser does not import Lightning
# (a test checks that they agree)
LOOP_CHOICES = ("hand", "lightning", "reference", "ours", "ours_compiled")
LOOP_CONTENDERS = ("hand", "lightning", "reference", "ours")
GENERATION_FILE = "generation.json"
LOOP_FILE = "loop_overhead.json"  # hand and lightning only: the file this benchmark has always written
LOOP_REFERENCE_FILE = "loop_reference.json"  # any other contender: the reference GPT, compile
CORPUS_TOKENIZE_FILE, CORPUS_MEMORY_FILE = "corpus_tokenize.json", "corpus_memory.json"


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


POSITIVE, NON_NEGATIVE = _int_at_least(1), _int_at_least(0)


def _common(p: argparse.ArgumentParser, repeats: int, warmup: int, out_default: str) -> None:
    """Options every benchmark has, with the same names and checks."""
    p.add_argument("--repeats", type=POSITIVE, default=repeats, help="timed rounds, contenders interleaved in each")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=warmup, help="untimed rounds before the timed ones")
    p.add_argument("--out", type=Path, default=None, help=f"folder for the results (default: {out_default})")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="attention-lab bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{" + ",".join(KINDS) + "}")
    default_out = "a new outputs/bench/{}/<date_time>-<suffix>/"

    p = sub.add_parser("attention", help=SUMMARY["attention"], description=SUMMARY["attention"])
    p.add_argument("--variants", nargs="+", default=available(), choices=available(), metavar="NAME")
    p.add_argument(
        "--lengths",
        nargs="+",
        type=POSITIVE,
        default=None,
        help=f"default: {' '.join(map(str, DEFAULT_LENGTHS))} on CPU, up to {GPU_LENGTHS[-1]} on CUDA",
    )
    p.add_argument("--d-model", type=POSITIVE, default=256)
    p.add_argument("--heads", type=POSITIVE, default=8)
    p.add_argument("--batch", type=POSITIVE, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--window", type=POSITIVE, default=128, help="sliding_window: keys each query sees")
    p.add_argument(
        "--sliding-dense",
        action="store_true",
        help="also time sliding_window's dense (T, T) band (row sliding_window_dense) beside its blocked kernel",
    )
    p.add_argument(
        "--max-seconds-per-point",
        type=_positive_float,
        default=120.0,
        help="skip a variant at the next lengths once one length is predicted to take longer than this",
    )
    p.add_argument("--skip-verify", action="store_true", help="time without checking fast path == explicit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=POSITIVE, default=None, help="torch intra-op threads (default: torch's)")
    _common(p, repeats=5, warmup=1, out_default=default_out.format("attention"))

    g = GenerationBenchmark()
    p = sub.add_parser("generation", help=SUMMARY["generation"], description=SUMMARY["generation"])
    p.add_argument("--variants", nargs="+", default=list(g.variants), choices=available(), metavar="NAME")
    p.add_argument("--d-model", type=POSITIVE, default=g.d_model)
    p.add_argument("--n-layers", type=POSITIVE, default=g.n_layers)
    p.add_argument("--heads", type=POSITIVE, default=g.num_heads)
    p.add_argument("--context-length", type=POSITIVE, default=g.context_length)
    p.add_argument("--prompt-tokens", type=POSITIVE, default=g.prompt_tokens)
    p.add_argument("--new-tokens", type=POSITIVE, default=g.new_tokens)
    p.add_argument("--seed", type=int, default=g.seed)
    p.add_argument("--threads", type=POSITIVE, default=g.threads, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    _common(p, repeats=g.repeats, warmup=g.warmup, out_default=default_out.format("generation"))

    p = sub.add_parser("loop", help=SUMMARY["loop"], description=SUMMARY["loop"])
    p.add_argument("--steps", type=POSITIVE, default=60, help="timed steps per run")
    p.add_argument("--batch-size", type=POSITIVE, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--contenders",
        nargs="+",
        default=list(LOOP_CONTENDERS),
        choices=list(LOOP_CHOICES),
        metavar="NAME",
        help=f"from {' '.join(LOOP_CHOICES)} (default: %(default)s); see attention_lab.bench.loop",
    )
    _common(p, repeats=5, warmup=10, out_default=default_out.format("loop"))

    s = PositionsBenchmark()
    p = sub.add_parser("positions", help=SUMMARY["positions"], description=SUMMARY["positions"])
    p.add_argument("--variants", nargs="+", default=s.variants, choices=available(), metavar="NAME")
    p.add_argument(
        "--schemes",
        nargs="+",
        default=s.schemes,
        choices=list(POSITIONS),
        metavar="SCHEME",
        help=f"from {' '.join(POSITIONS)}; none is always measured (the baseline of every ratio)",
    )
    p.add_argument(
        "--lengths", nargs="+", type=POSITIVE, default=s.lengths, help="sequence lengths T (default: %(default)s)"
    )
    p.add_argument("--n-layers", type=POSITIVE, default=s.n_layers)
    p.add_argument("--d-model", type=POSITIVE, default=s.d_model)
    p.add_argument("--heads", type=POSITIVE, default=s.num_heads)
    p.add_argument("--batch", type=POSITIVE, default=s.batch)
    p.add_argument("--dtype", choices=sorted(AUTOCAST), default=s.dtype, help="bfloat16/float16: autocast")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=s.seed)
    p.add_argument("--threads", type=POSITIVE, default=None, help="torch intra-op threads (default: torch's)")
    _common(p, repeats=s.repeats, warmup=s.warmup, out_default=default_out.format("positions"))

    p = sub.add_parser("corpus", help=SUMMARY["corpus"], description=SUMMARY["corpus"])
    p.add_argument("--sizes", nargs="+", type=POSITIVE, default=[100, 300], help="corpora (MB) of the memory runs")
    p.add_argument("--throughput-mb", type=POSITIVE, default=300, help="corpus (MB) the throughput is measured on")
    p.add_argument("--workers", nargs="+", type=POSITIVE, default=[1, 2], help="tokenize_workers to time")
    p.add_argument("--steps", type=POSITIVE, default=30, help="training steps of each memory run")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
    p.add_argument("--corpus-dir", default=None, help="where to generate it (default: a new temp folder)")
    p.add_argument("--keep-corpus", action="store_true", help="keep the generated corpus afterwards")
    p.add_argument(
        "--parts", nargs="+", choices=["throughput", "memory"], default=["throughput", "memory"], help="what to run"
    )
    p.add_argument(
        "--out", type=Path, default=None, help=f"folder for the results (default: {default_out.format('corpus')})"
    )
    return parser


def _check_heads(d_model: int, heads: int) -> None:
    if d_model % heads:
        raise UserError(f"--d-model {d_model} is not divisible by --heads {heads}: each head gets d_model / heads.")


def _attention(args: argparse.Namespace) -> None:
    _check_heads(args.d_model, args.heads)
    device = resolve_device(args.device, setting="--device")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = BenchConfig(
        variants=list(dict.fromkeys(args.variants)),  # each once, in the order given
        lengths=args.lengths or list(GPU_LENGTHS if device.type == "cuda" else DEFAULT_LENGTHS),
        d_model=args.d_model,
        heads=args.heads,
        batch=args.batch,
        dtype=args.dtype,
        device=str(device),
        repeats=args.repeats,
        warmup=args.warmup,
        window=args.window,
        sliding_dense=args.sliding_dense,
        max_seconds_per_point=args.max_seconds_per_point,
        verify=not args.skip_verify,
        seed=args.seed,
        threads=args.threads,
    )
    result = run_benchmark(cfg)
    result["command"] = args.command
    out = output_dir(args.out, "attention")
    for path in write_results(result, out).values():
        print(f"wrote {path}")


def _generation(args: argparse.Namespace) -> None:
    _check_heads(args.d_model, args.heads)
    if args.prompt_tokens + args.new_tokens > args.context_length:
        raise UserError(
            f"--prompt-tokens {args.prompt_tokens} + --new-tokens {args.new_tokens} exceeds --context-length "
            f"{args.context_length}: past the context the cache is dropped, so the benchmark would not time it."
        )
    device = resolve_device(args.device, setting="--device")
    spec = GenerationBenchmark(
        variants=list(dict.fromkeys(args.variants)),
        d_model=args.d_model,
        n_layers=args.n_layers,
        num_heads=args.heads,
        context_length=args.context_length,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        threads=args.threads,
    )
    result = benchmark_generation(spec, device, command=args.command)
    print(format_benchmark(result))
    out = output_dir(args.out, "generation")
    print(f"wrote {write_json(result, out / GENERATION_FILE)}")


def _loop(args: argparse.Namespace) -> None:
    from ..bench.loop import LoopBenchmark, format_loop_benchmark, run_loop_benchmark  # Lightning: only when needed

    spec = LoopBenchmark(
        repeats=args.repeats,
        warmup=args.warmup,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        cache_dir=os.environ.get("ATTENTION_LAB_CACHE") or ".cache/attention-lab",  # as the training configs
        contenders=list(dict.fromkeys(args.contenders)),
    )
    result = run_loop_benchmark(spec, command=args.command)
    print(format_loop_benchmark(result))
    out = output_dir(args.out, "loop")
    name = LOOP_FILE if set(spec.contenders) <= {"hand", "lightning"} else LOOP_REFERENCE_FILE
    print(f"wrote {write_json(result, out / name)}")


def _positions(args: argparse.Namespace) -> None:
    _check_heads(args.d_model, args.heads)
    head_width = args.d_model // args.heads
    if "rope" in args.schemes and head_width % 2:
        raise UserError(
            f"--d-model {args.d_model} / --heads {args.heads} = {head_width}: rope needs an even head width; "
            "choose --heads so that d_model / heads is even, or leave rope out of --schemes."
        )
    device = resolve_device(args.device, setting="--device")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    spec = PositionsBenchmark(
        variants=list(dict.fromkeys(args.variants)),
        schemes=list(dict.fromkeys(args.schemes)),
        lengths=args.lengths,
        n_layers=args.n_layers,
        d_model=args.d_model,
        num_heads=args.heads,
        batch=args.batch,
        dtype=args.dtype,
        device=str(device),
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        threads=args.threads,
    )
    result = run_positions(spec, command=args.command)
    print(format_positions(result))
    out = output_dir(args.out, "positions")
    for path in write_positions(result, out).values():
        print(f"wrote {path}")


def _corpus(args: argparse.Namespace) -> None:
    from ..bench.corpus import CorpusBenchmark, format_corpus_benchmark, run_corpus_benchmark  # Lightning: lazy

    spec = CorpusBenchmark(
        sizes_mb=list(dict.fromkeys(args.sizes)),
        throughput_mb=args.throughput_mb,
        workers=list(dict.fromkeys(args.workers)),
        steps=args.steps,
        seed=args.seed,
        corpus_dir=args.corpus_dir,
        keep_corpus=args.keep_corpus,
        parts=list(dict.fromkeys(args.parts)),
    )
    results = run_corpus_benchmark(spec, command=args.command)
    print(format_corpus_benchmark(results))
    out = output_dir(args.out, "corpus")
    for part, name in (("throughput", CORPUS_TOKENIZE_FILE), ("memory", CORPUS_MEMORY_FILE)):
        if part in results:
            print(f"wrote {write_json(results[part], out / name)}")


RUNNERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "attention": _attention,
    "generation": _generation,
    "loop": _loop,
    "positions": _positions,
    "corpus": _corpus,
}


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    check_out(args.out)  # a bad --out fails now, not after minutes of timing
    args.command = shlex.join(["attention-lab", "bench", *argv])  # stored in the results
    RUNNERS[args.kind](args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `attention-lab bench <kind> [--options]`; user mistakes -> one `error:` line and status 2."""
    return run_command(_main, argv)
