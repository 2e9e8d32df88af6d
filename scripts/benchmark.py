"""Attention micro-benchmark: time and memory of every variant's module across sequence lengths.

    python scripts/benchmark.py                                   # all variants, T = 128 .. 4096, CPU
    python scripts/benchmark.py --device cuda --dtype bfloat16 --lengths 512 1024 2048 4096 8192 16384
    python scripts/benchmark.py --variants multihead sdpa linear --repeats 9

Writes benchmark.json (machine, config, every measurement), benchmark.csv and benchmark.png (log-log time
and memory against T) to --out, by default benchmarks/results/<cpu|gpu>/. The logic lives in
`attention_lab.benchmark`; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from attention_lab.attention import available
    from attention_lab.benchmark import DEFAULT_LENGTHS, DTYPES, GPU_LENGTHS, BenchConfig, run_benchmark, write_results
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(ROOT / "src"))
    from attention_lab.attention import available
    from attention_lab.benchmark import DEFAULT_LENGTHS, DTYPES, GPU_LENGTHS, BenchConfig, run_benchmark, write_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=available(), choices=available(), metavar="NAME")
    p.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=None,
        help=f"default: {' '.join(map(str, DEFAULT_LENGTHS))} on CPU, up to {GPU_LENGTHS[-1]} on CUDA",
    )
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (all variants interleaved in each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones, per length")
    p.add_argument("--window", type=int, default=128, help="sliding_window: keys each query sees")
    p.add_argument(
        "--max-seconds-per-point",
        type=float,
        default=120.0,
        help="skip a variant at the next lengths once one length is predicted to take longer than this",
    )
    p.add_argument("--skip-verify", action="store_true", help="time without checking fast path == explicit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<cpu|gpu>")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    on_gpu = args.device.startswith("cuda")
    cfg = BenchConfig(
        variants=args.variants,
        lengths=args.lengths or list(GPU_LENGTHS if on_gpu else DEFAULT_LENGTHS),
        d_model=args.d_model,
        heads=args.heads,
        batch=args.batch,
        dtype=args.dtype,
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        window=args.window,
        max_seconds_per_point=args.max_seconds_per_point,
        verify=not args.skip_verify,
        seed=args.seed,
        threads=args.threads,
    )
    out = args.out or ROOT / "benchmarks" / "results" / ("gpu" if on_gpu else "cpu")
    paths = write_results(run_benchmark(cfg), out)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
