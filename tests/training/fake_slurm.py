"""A stand-in for SLURM's commands on one machine, enough for submitit's SLURM executor and Lightning's requeue:
`sbatch` runs each task of the job array in the background with SLURM's environment, `srun` runs its command
with the log files it is given, `sacct` reports the states, and `scontrol requeue` stops a task (SIGTERM to
all its processes, as SLURM does) and, once they have all ended, runs it again with SLURM_RESTART_COUNT + 1.

Used as `python fake_slurm.py <sbatch|srun|sacct|scontrol|task> ...`; `install(bin_dir, state_dir)` writes the
four commands. One array per state folder; its id is 7000, task i has the job id 7001 + i.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ARRAY_ID = 7000
STATE = Path(os.environ.get("FAKE_SLURM_STATE", "."))


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for command in ("sbatch", "srun", "sacct", "scontrol"):
        tool = bin_dir / command
        tool.write_text(
            f'#!/bin/sh\nFAKE_SLURM_STATE="{state_dir}" exec "{sys.executable}" "{__file__}" {command} "$@"\n'
        )
        tool.chmod(0o755)


def _state(task: str, value: str | None = None) -> str:
    path = STATE / f"{task}.state"
    if value is not None:
        path.write_text(value)
    return path.read_text() if path.is_file() else "PENDING"


def sbatch(script: str) -> None:
    text = Path(script).read_text()
    array = re.search(r"#SBATCH --array=0-(\d+)", text)
    name = re.search(r"#SBATCH --job-name=(\S+)", text)
    for index in range(int(array.group(1)) + 1 if array else 1):
        _state(f"{ARRAY_ID}_{index}", "PENDING")
        subprocess.Popen(
            [sys.executable, __file__, "task", script, str(index), name.group(1) if name else "sbatch"],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(STATE / f"{ARRAY_ID}_{index}.runner.log").open("a"),
        )
    print(f"Submitted batch job {ARRAY_ID}", flush=True)


def task(script: str, index: str, name: str) -> None:
    """One task of the array, run (again and again while it is requeued) until it ends for good."""
    job, restarts = f"{ARRAY_ID}_{index}", 0
    while True:
        env = {
            **os.environ,
            "SLURM_JOB_ID": str(ARRAY_ID + 1 + int(index)),
            "SLURM_ARRAY_JOB_ID": str(ARRAY_ID),
            "SLURM_ARRAY_TASK_ID": index,
            "SLURM_JOB_NAME": name,
            "SLURM_NTASKS": "1",
            "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_NNODES": "1",
            "SLURM_NODEID": "0",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_RESTART_COUNT": str(restarts),
        }
        _state(job, "RUNNING")
        process = subprocess.Popen(["bash", script], env=env, start_new_session=True)
        (STATE / f"{job}.pgid").write_text(str(process.pid))
        code = process.wait()
        while _alive(process.pid):  # SLURM ends a job when all of its processes have ended
            time.sleep(0.1)
        requeue = STATE / f"{job}.requeue"
        if not requeue.exists():
            _state(job, "COMPLETED" if code == 0 else "FAILED")
            return
        requeue.unlink()
        restarts += 1


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def srun(args: list[str]) -> None:
    """srun [--unbuffered] [--output F] [--error F] command...: the command, its output appended to F."""
    files = {}
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option in ("--output", "--error"):
            files[option] = args.pop(0)
    names = {"%A": os.environ["SLURM_ARRAY_JOB_ID"], "%a": os.environ["SLURM_ARRAY_TASK_ID"], "%t": "0"}
    for option, fd in (("--output", 1), ("--error", 2)):
        if option in files:
            path = files[option]
            for key, value in names.items():
                path = path.replace(key, value)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), fd)
    os.execvp(args[0], args)


def sacct() -> None:
    print("JobID|State|NodeList")
    for path in sorted(STATE.glob("*.state")):
        print(f"{path.stem}|{path.read_text()}|localhost")


def scontrol(args: list[str]) -> None:
    assert args[0] == "requeue", args
    job = args[1] if "_" in args[1] else f"{ARRAY_ID}_{int(args[1]) - ARRAY_ID - 1}"
    (STATE / f"{job}.requeue").write_text("")
    (STATE / "requeued").open("a").write(f"{job}\n")
    _state(job, "REQUEUED")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # started by the job itself (Lightning): it is in the group
    os.killpg(int((STATE / f"{job}.pgid").read_text()), signal.SIGTERM)  # then SLURM waits for the processes


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "sbatch":
        sbatch(rest[-1])
    elif command == "task":
        task(*rest)
    elif command == "srun":
        srun(rest)
    elif command == "sacct":
        sacct()
    elif command == "scontrol":
        scontrol(rest)
