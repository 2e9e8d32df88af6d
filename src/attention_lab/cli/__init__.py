"""`attention-lab <command>`: one entry point for every command.

train      Hydra overrides (key=value, -m for sweeps), exactly as `python scripts/train.py`
generate   sample from a checkpoint (--flags)
compare    tables and plots of runs and sweeps (--flags)
bench      attention, generation and loop-overhead benchmarks (--flags)
gpu-check  GPU readiness: GPU tests, a bf16 + compile GPT-2 run, the attention benchmark (--flags)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import USAGE_EXIT

COMMANDS = ("train", "generate", "compare", "bench", "gpu-check")
USAGE = f"usage: attention-lab {{{','.join(COMMANDS)}}} [args...]   (attention-lab <command> --help for its settings)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0 if args else USAGE_EXIT
    command, rest = args[0], args[1:]
    if command == "train":
        if argv is None:
            # A fresh interpreter running the train module itself: Lightning re-launches DDP ranks (and
            # multiprocessing re-imports the main module) from `python -m attention_lab.cli.train <overrides>`.
            os.execv(sys.executable, [sys.executable, "-m", "attention_lab.cli.train", *rest])
        from .train import main as run
    elif command == "generate":
        from .generate import main as run
    elif command == "compare":
        from .compare import main as run
    elif command == "bench":
        from .bench import main as run
    elif command == "gpu-check":
        from .gpu_check import main as run
    else:
        print(f"error: unknown command {command!r}: choose one of {', '.join(COMMANDS)}.\n{USAGE}", file=sys.stderr)
        return USAGE_EXIT
    return run(rest)


def entry_point() -> None:
    """The console script: exit with main's status (130 and no traceback for a Ctrl+C while starting up)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
