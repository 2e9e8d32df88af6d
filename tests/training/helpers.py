"""Helpers shared by the training tests (imported as `from tests.training.helpers import ...`).

Everything trains a 2-layer, 32-wide GPT with a char tokenizer on a few kilobytes of text (TINY), so a run of a
handful of steps takes about a second on a 2-core CPU. Three ways to start a run are used, cheapest first:
- `make_cfg` + `train(cfg)`: the task without Hydra's runtime (no run folder, no exit status);
- `run_cli`: `attention_lab.cli.train.main(argv)` in this process: Hydra, run folders and exit status, no
  interpreter start (what `scripts/train.py` calls);
- `run_script` / `start_script`: `python scripts/train.py` in a subprocess, for signals, DDP and the printed
  commands (what a shell and a fresh interpreter see).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import attention_lab
from tests.helpers import compose_train

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train.py"
CONF = Path(attention_lab.__file__).parent / "conf"

CORPUS = "The quick brown fox jumps over the lazy dog. Attention is all you need, they said.\n" * 60

TINY = [
    "data.tokenizer=char",
    "model.d_model=32",
    "model.n_layers=2",
    "model.context_length=32",
    "data.batch_size=4",
    "optim.warmup_steps=2",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
    "attention.num_heads=2",
]
NO_HEADS = {"simplified", "self_attention_v1", "self_attention", "causal"}
# The default callbacks without the two that render figures and sample text at every validation: the model
# checkpoint (best.ckpt, last.ckpt) and the throughput meter stay, and a validation costs milliseconds.
LEAN_CALLBACKS = ["~callbacks.attention_maps", "~callbacks.text_sample"]


def tiny(name: str = "multihead", corpus: Path | None = None) -> list[str]:
    """TINY for `name` (no num_heads for single-head variants), on `corpus` (data=text) when given."""
    overrides = [o for o in TINY if name not in NO_HEADS or not o.startswith("attention.num_heads")]
    return overrides + (["data=text", f"data.path={corpus}"] if corpus is not None else [])


FINISHED_STEPS = 4


def finished_overrides(corpus: Path) -> list[str]:
    """The settings of the session's `finished_run` (conftest): a resume must repeat them."""
    return [*tiny(corpus=corpus), f"trainer.max_steps={FINISHED_STEPS}", "trainer.val_check_interval=2"]


def make_cfg(tmp_path: Path, overrides: Sequence[str]) -> DictConfig:
    """The composed config as the task sees it, writing into tmp_path/run (no Hydra runtime, no run folder)."""
    return compose_train(
        [
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.log_dir={tmp_path}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ]
    )


def compose_with_hydra(overrides: Sequence[str]) -> DictConfig:
    """The config including its `hydra` node (run/sweep folder templates, override_dirname), unresolved."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def read_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text())


def run_folders(log_dir: Path, kind: str = "runs") -> list[Path]:
    """The run (or sweep) folders under `log_dir`, oldest name first."""
    parent = log_dir / kind
    return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []


# ------------------------------------------------------------------------------------------ in-process CLI
@contextmanager
def _hydra_process_state() -> Iterator[None]:
    """Hydra's run rewires the root logger (to the captured stdout and to the run's train.log) and leaves its
    global state behind; restore both so that one in-process run does not leak into the next test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    argv = list(sys.argv)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.argv[:] = argv
        GlobalHydra.instance().clear()


def run_cli(args: Sequence[str], log_dir: Path) -> int:
    """`attention-lab train <args>` in this process, with every run or sweep folder under `log_dir`."""
    from attention_lab.cli.train import main

    with _hydra_process_state():
        return main([*args, f"paths.log_dir={log_dir}", f"paths.cache_dir={log_dir / 'cache'}"])


# ------------------------------------------------------------------------------------------- subprocesses
def script_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `scripts/train.py` subprocess: outputs and caches under tmp_path, no display."""
    return {
        **os.environ,
        "ATTENTION_LAB_OUTPUTS": str(tmp_path / "outputs"),
        "ATTENTION_LAB_CACHE": str(tmp_path / "cache"),
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",  # see the conftest's one-thread fixture: two threads are ~10x slower here
    }


def run_script(args: Sequence[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=tmp_path,
        env=script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_script(args: Sequence[str], tmp_path: Path) -> subprocess.Popen:
    """`python scripts/train.py <args>` in the background; stdout and stderr go to files in tmp_path (a pipe
    nobody reads would fill up and block the child)."""
    out = (tmp_path / "stdout.txt").open("w")
    err = (tmp_path / "stderr.txt").open("w")
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=script_env(tmp_path), stdout=out, stderr=err, text=True
    )


def wait_for(condition: Callable[[], Any], what: str, process: subprocess.Popen | None = None, timeout: float = 180):
    """Poll until `condition()` is truthy and return its value; fail (killing `process`) after `timeout` s or
    when `process` ends first. Generous: the subprocess imports torch and Lightning on a busy 2-core machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended (status {process.returncode}) before {what}")
        time.sleep(0.2)
    if process is not None:
        process.kill()
        process.wait()
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def signal_when(
    args: Sequence[str], tmp_path: Path, condition: Callable[[], Any], what: str, signum: int, timeout: float = 180
) -> tuple[int, str]:
    """Start scripts/train.py with `args`, wait until `condition()` holds (a checkpoint exists: mid-training),
    send `signum`; returns (exit status, stderr). The process never outlives the test."""
    process = start_script(args, tmp_path)
    try:
        wait_for(condition, what, process)
        process.send_signal(signum)
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, (tmp_path / "stderr.txt").read_text()


# --------------------------------------------------------------------------------------------- the clock
class FrozenClock(datetime.datetime):
    """`datetime` whose now() never moves: Hydra's `${now:...}` folder names then collide as they do for two
    runs started in the same second, deterministically (installed with `freeze_hydra_clock`)."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> FrozenClock:
        return cls(2026, 1, 2, 3, 4, 5)


def freeze_hydra_clock(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make every Hydra run in this test start at the same second; returns that second as folders spell it.
    Hydra re-registers its `now` resolver at each run, looking `datetime` up in hydra.core.utils, so that
    module attribute is what gets replaced."""
    import hydra.core.utils

    monkeypatch.setattr(hydra.core.utils, "datetime", FrozenClock)
    return FrozenClock.now().strftime("%Y-%m-%d_%H-%M-%S")


# ---------------------------------------------------------------------- callbacks added through the config
def add_callback(cfg: DictConfig, name: str, target: type, **kwargs: Any) -> None:
    """Add `target(**kwargs)` to cfg.callbacks, which the task instantiates like its own callbacks."""
    from omegaconf import open_dict

    with open_dict(cfg):
        if cfg.callbacks is None:
            cfg.callbacks = {}
        cfg.callbacks[name] = {"_target_": f"{target.__module__}.{target.__qualname__}", **kwargs}


def callback_override(name: str, target: type) -> str:
    """The Hydra override that adds `target` as callback `name` (for runs started from a command line)."""
    return f"+callbacks.{name}._target_={target.__module__}.{target.__qualname__}"


class SignalAt(L.Callback):
    """Sends `signum` to this process at the end of the step that reaches `step`.

    Refuses (AssertionError, failing the run) when no Python handler is installed for the signal: the default
    action of SIGUSR1/SIGUSR2 is to terminate, which would kill the whole pytest process instead."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        handler = signal.getsignal(self.signum)
        if handler in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise AssertionError(f"no handler for signal {self.signum} during fit (it is {handler!r})")
        os.kill(os.getpid(), self.signum)  # the handler runs before os.kill returns to the next bytecode


class SignalAtTrainEnd(L.Callback):
    """Sends `signum` to this process when training ends: after the last step, before `eval.lengths` runs
    (configured callbacks come before LengthEval)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.kill(os.getpid(), self.signum)


class CtrlCTwiceAt(L.Callback):
    """Presses Ctrl+C twice at the end of step `step` (two SIGINTs to this process). Refuses unless SIGINT is
    handled by the run's SignalFlag: otherwise the SIGINT would interrupt pytest itself."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        from attention_lab.training.guards import SignalFlag

        handler = signal.getsignal(signal.SIGINT)
        if not isinstance(getattr(handler, "__self__", None), SignalFlag):
            raise AssertionError(f"SIGINT is not handled by the run's SignalFlag during fit (it is {handler!r})")
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


class PoisonWeightsAt(L.Callback):
    """Sets one weight to NaN at global step `step`, as a diverging update would: before that step's batch
    (when="start": the step's own loss is NaN) or after it (when="end": the step's loss was finite, so only the
    weights, and whatever runs next, such as a validation, see the NaN)."""

    def __init__(self, step: int, when: str = "start") -> None:
        self.step, self.when = step, when

    def _poison(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        if trainer.global_step == self.step and self.when == when:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._poison(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._poison(trainer, pl_module, "end")


class ZeroWeightsAt(L.Callback):
    """Zeroes every weight at the end of step `step`: a finite model that predicts a uniform distribution, so the
    validation that follows is worse than the earlier ones (the run is not diverged, just no longer the best)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.zero_()


class AllocateAt(L.Callback):
    """Touches `megabytes` MiB at fit start and frees them again: a job whose peak is that much above the
    baseline while it runs, and whose memory is gone when the next job of the sweep starts."""

    def __init__(self, megabytes: int) -> None:
        self.megabytes = megabytes

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.megabytes:
            block = torch.ones(self.megabytes * 2**20 // 4)  # ones, not empty: the pages must become resident
            del block


class StartStepFile(L.Callback):
    """Writes the global step training starts at to <default_root_dir>/start_step.txt: a resumed run starts at
    its checkpoint's step, a fresh one at 0 (both end at max_steps, so the end alone proves nothing)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(trainer.default_root_dir, "start_step.txt").write_text(str(trainer.global_step))


# ------------------------------------------------------------------------------------------- TensorBoard
def read_events(run_dir: Path) -> dict[str, set[str]]:
    """Tags of every kind in the run's TensorBoard files, and the HParams tab's hparams and metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    files = list(run_dir.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {run_dir}"
    tags: dict[str, set[str]] = {
        "scalars": set(),
        "images": set(),
        "tensors": set(),
        "hparams": set(),
        "metrics": set(),
    }
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        for kind in ("scalars", "images", "tensors"):
            tags[kind] |= set(acc.Tags()[kind])
        for tag, content in acc.PluginTagToContent("hparams").items():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if tag == "_hparams_/experiment":
                tags["metrics"] |= {m.name.tag for m in data.experiment.metric_infos}
            if tag == "_hparams_/session_start_info":
                tags["hparams"] |= set(data.session_start_info.hparams)
    return tags
