"""Tokenization throughput and training memory on a generated corpus (see `attention_lab.bench.corpus`).

    python scripts/benchmark_corpus.py                                   # 100 and 300 MB, 1 and 2 workers
    python scripts/benchmark_corpus.py --out benchmarks/results/cpu      # replace the committed results

Same as `attention-lab bench corpus`. Writes corpus_tokenize.json and corpus_memory.json to a new folder
outputs/bench/corpus/<date_time>-<suffix>/ ($ATTENTION_LAB_OUTPUTS replaces `outputs`), or to --out.
"""

import sys

from attention_lab.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(["corpus", *sys.argv[1:]]))
