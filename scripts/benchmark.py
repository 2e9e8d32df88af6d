"""Attention micro-benchmark: time and memory of every variant's module across sequence lengths.

    python scripts/benchmark.py                                   # all variants, T = 128 .. 4096, CPU
    python scripts/benchmark.py --device cuda --dtype bfloat16 --lengths 512 1024 2048 4096 8192 16384
    python scripts/benchmark.py --variants multihead sdpa linear --repeats 9
    python scripts/benchmark.py --out benchmarks/results/cpu      # replace the committed CPU results

Same as `attention-lab bench attention`. Writes benchmark.json, benchmark.csv and benchmark.png to a new folder
outputs/bench/attention/<date_time>-<suffix>/ ($ATTENTION_LAB_OUTPUTS replaces `outputs`), or to --out.
The logic lives in `attention_lab.bench`; the options in `attention_lab.cli.bench`.
"""

import sys

from attention_lab.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(["attention", *sys.argv[1:]]))
