"""GPU readiness in one command: the GPU tests, a bf16 + compile GPT-2 124M run (tokens/s, MFU) and the attention
benchmark up to T=16384, within 8 minutes (the same as `attention-lab gpu-check`; `make gpu-check` runs it).

    python scripts/gpu_check.py                       # results in a new benchmarks/results/gpu/<date>_<gpu>/
    python scripts/gpu_check.py --only tests train --budget 300
    python scripts/gpu_check.py --out benchmarks/results/gpu/h200   # a folder of your choice

Without CUDA it exits with status 2 and one `error:` line. The logic lives in `attention_lab.cli.gpu_check`.
"""

import sys

from attention_lab.cli.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
