"""Sweep jobs that run side by side on this machine: in the joblib launcher's worker processes
(`hydra/launcher=parallel`, our settings for it, or the plugin's `joblib`) or in submitit's local processes
(`hydra/launcher=submitit_local`).

Each job still runs the task exactly as a job of a one-process sweep does, in its own folder
(`<sweep>/<num>_<overrides>`, which Hydra names from the job number, so two jobs never share one). What changes
is what one process can no longer see of the others:

- **Signals.** SIGINT/SIGTERM to the `attention-lab train` process (the parent) must not kill the workers
  mid-step: the parent only writes a stop request, `<sweep>/.stop`. Each running job watches for it (a thread
  that turns it into a SIGTERM to its own process, which the run's SignalFlag handles: the run stops at the
  next step boundary with a checkpoint and an `interrupted` record); a job that starts after it trains nothing
  and leaves no folder. A job in a worker does not raise on a signal (the worker must return to its pool):
  its record says how it ended, and the parent reports the stopped sweep once every job has returned.
- **GPUs: one job per device.** A job that trains on `trainer.devices=N` GPUs takes N devices no other job of
  any sweep on this machine holds, with an exclusive lock per device (`flock`, released when the job ends or
  its process dies), and trains on exactly those (`trainer.devices=[i, ...]`). The lock is named by the
  device's entry in CUDA_VISIBLE_DEVICES (its index when that is unset), so two sweeps that see different
  subsets of the GPUs still agree on what "device 3" is. With more parallel jobs than devices the extra jobs
  wait for a free one; set `hydra.launcher.n_jobs` to the number of GPUs (the default does).
  SLURM jobs get their GPUs from SLURM and take no locks.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

STOP_FILE = ".stop"  # in the sweep folder: the parent's stop request (its content: the signal number)
LOCAL_LAUNCHERS = {"joblib", "submitit_local"}  # jobs in processes of their own, on this machine
launching_pid: int | None = None  # set in the parent (SweepControl): a job in another process is in a worker


def launcher_kind(target: str | None) -> str:
    """`joblib`, `submitit_local`, `slurm` or `in_process` (Hydra's basic launcher, or one we do not know)."""
    name = str(target or "")
    if name.endswith("JoblibLauncher"):
        return "joblib"
    if name.endswith("submitit_launcher.LocalLauncher"):
        return "submitit_local"
    if name.endswith("submitit_launcher.SlurmLauncher"):
        return "slurm"
    return "in_process"


def in_worker(kind: str) -> bool:
    """This job runs in a local worker process, not in the process that launched the sweep (joblib with
    n_jobs=1 runs its jobs in the launching process, as Hydra's basic launcher does)."""
    return kind in LOCAL_LAUNCHERS and launching_pid != os.getpid()


# ------------------------------------------------------------------------------------------ stop requests
def request_stop(sweep_dir: Path, signum: int) -> None:
    (sweep_dir / STOP_FILE).write_text(f"{int(signum)}\n")


def stop_requested(sweep_dir: Path) -> int | None:
    """The signal that stopped the sweep, or None."""
    try:
        return int((sweep_dir / STOP_FILE).read_text().strip() or signal.SIGTERM)
    except (OSError, ValueError):
        return None


def clear_stop(sweep_dir: Path) -> None:
    (sweep_dir / STOP_FILE).unlink(missing_ok=True)


@contextmanager
def stop_watch(sweep_dir: Path, every_s: float = 0.5) -> Iterator[None]:
    """While the job runs: a stop request becomes a SIGTERM to this process (the run's own handler then stops it
    at a step boundary), repeated every few seconds in case the first came before that handler was installed.
    A thread, because only the main thread may handle signals and it is busy training."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            if stop_requested(sweep_dir) is not None:
                os.kill(os.getpid(), signal.SIGTERM)  # a second one changes nothing: the run keeps the first
                done.wait(4 * every_s)

    def late(signum: int, frame: Any) -> None:
        log.info("stop request after the run had ended: nothing to stop")

    # outside the run's own handler (before it is installed, after it is restored) a SIGTERM of ours must not
    # kill the worker process, which still has to return this job to its pool
    previous = signal.signal(signal.SIGTERM, late)
    thread = threading.Thread(target=watch, name="sweep-stop-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGTERM, previous)


class ParentSignals:
    """In the launching process while local workers run the jobs: SIGINT/SIGTERM write the stop request instead
    of killing the process (joblib would kill its workers mid-step). A second SIGINT stops at once."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir, self.signum = sweep_dir, None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the user wants out now: joblib then terminates its workers
        if self.signum is None:
            self.signum = signum
            request_stop(self.sweep_dir, signum)
            print(
                f"\n{signal.Signals(signum).name}: stopping the sweep: running jobs stop at their next step with a "
                "checkpoint, jobs not started yet will not start (Ctrl+C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


# ---------------------------------------------------------------------------------------------- devices
def lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"attention-lab-gpus-{os.getuid()}"


def _device_names(count: int) -> list[str]:
    """What each visible device is called machine-wide: its CUDA_VISIBLE_DEVICES entry, else its index."""
    visible = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return visible[:count] if len(visible) >= count else [str(i) for i in range(count)]


def claim_devices(wanted: int, count: int, folder: Path, poll_s: float = 2.0) -> tuple[list[int], list[IO]]:
    """`wanted` device indices out of `count` that no other job holds, and their held lock files (close them to
    release). Waits while fewer are free."""
    folder.mkdir(parents=True, exist_ok=True)
    names, said = _device_names(count), False
    while True:
        held: list[tuple[int, IO]] = []
        for index, name in enumerate(names):
            handle = open(folder / f"{name.replace('/', '_')}.lock", "a")  # noqa: SIM115 (held until released)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            held.append((index, handle))
            if len(held) == wanted:
                return [i for i, _ in held], [h for _, h in held]
        for _, handle in held:
            handle.close()  # not enough free: give back what we took, so two waiting jobs cannot deadlock
        if not said:
            log.warning("waiting for %d free GPU(s) of %d (each is held by another job)", wanted, count)
            said = True
        time.sleep(poll_s)


def gpus_wanted(trainer: DictConfig) -> int:
    """How many GPUs one job trains on, or 0 when it trains on the CPU or names its devices itself."""
    import torch

    accelerator, devices = str(trainer.get("accelerator", "auto")), trainer.get("devices", 1)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu or isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        return 0  # a list of ids, "auto" or -1: the user's choice stands
    return devices


@contextmanager
def job_devices(cfg: DictConfig, kind: str) -> Iterator[None]:
    """One job per device in sweeps whose jobs run side by side here (see the module docstring)."""
    import torch

    wanted = gpus_wanted(cfg.trainer) if kind in LOCAL_LAUNCHERS else 0
    count = torch.cuda.device_count() if wanted else 0
    if not wanted or wanted > count:  # too many asked for: validation says so, with the fix
        yield
        return
    indices, locks = claim_devices(wanted, count, lock_dir())
    with open_dict(cfg):
        cfg.trainer.devices = indices
    log.info("this job trains on GPU(s) %s", indices)
    try:
        yield
    finally:
        for handle in locks:
            handle.close()


def parallel_jobs() -> int:
    """The default number of jobs side by side: one per visible GPU, else 2 (each trains with torch's threads)."""
    import torch

    return torch.cuda.device_count() or 2


def worker_init() -> None:
    """In each joblib worker: ignore Ctrl+C. The terminal sends it to every process of the sweep, and an idle
    worker that died of it would make joblib kill the busy ones mid-step. The launching process turns it into a
    stop request instead, and a running job's own handler (installed while it trains) still sees the signal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
