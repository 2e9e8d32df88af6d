"""Lightning loop vs a hand-written loop, same model and batches (see `attention_lab.bench.loop`).

    python scripts/benchmark_loop.py --repeats 5
    python scripts/benchmark_loop.py --repeats 5 --out benchmarks/results/cpu   # replace the committed result

Same as `attention-lab bench loop`. Writes loop_overhead.json to a new folder
outputs/bench/loop/<date_time>-<suffix>/ ($ATTENTION_LAB_OUTPUTS replaces `outputs`), or to --out.
"""

import sys

from attention_lab.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(["loop", *sys.argv[1:]]))
