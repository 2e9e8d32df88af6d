"""`attention-lab train` (and `python scripts/train.py`): train one GPT, or sweep many with `-m`.

Settings are Hydra overrides (`attention=gqa attention.num_kv_heads=1`, `-m attention=multihead,gqa`).
Exit status: 0 trained (a sweep: every job ok, else its worst job's status); 2 a user's mistake (one message
naming the setting; no run folder left behind); 3 diverged; 130/143 stopped by SIGINT/SIGTERM (a checkpoint
and the resume command are recorded); 1 a programming error (with its traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from ..errors import USAGE_EXIT
from ..training import sweep
from ..training.run_dir import release_unused
from ..training.task import main as run_task

_task_started = False  # Hydra exits 1 both for its own config errors and for a crash inside the task


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    global _task_started
    _task_started = True
    return run_task(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run Hydra on `argv` (default: the command line) and return the exit status."""
    global _task_started
    _task_started = False
    sweep.last_sweep_dir = None
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        _hydra_main()
    except SystemExit as exc:
        code = exc.code
        if code == 1 and not _task_started:
            return USAGE_EXIT  # Hydra already printed which override or config key is wrong
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    finally:
        release_unused()  # folders Hydra's config composition reserved but never used
    if sweep.last_sweep_dir is not None:  # a sweep: its exit status is its worst job's (0: every job ok)
        summary, code = sweep.sweep_outcome(sweep.last_sweep_dir)
        print(summary, file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
