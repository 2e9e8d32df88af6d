"""Peak memory per job: a sweep runs its jobs in one process, so a process-wide peak would hand every job the
largest peak of the jobs before it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attention_lab.training.memory import PeakMemory
from tests.training.helpers import (
    LEAN_CALLBACKS,
    AllocateAt,
    callback_override,
    read_metrics,
    run_cli,
    run_folders,
    tiny,
)

PER_JOB = "peak RSS (VmHWM) since job start"


def _kernel_resets_vm_hwm() -> bool:
    """Whether this kernel lets a process reset its VmHWM, asked directly (not through PeakMemory, whose reset is
    what is under test: a broken reset must fail these tests, not skip them)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM:" in Path("/proc/self/status").read_text()
    except OSError:
        return False


needs_clear_refs = pytest.mark.skipif(
    not _kernel_resets_vm_hwm(), reason="no resettable VmHWM (/proc/self/clear_refs): Linux only"
)


@needs_clear_refs
def test_reset_forgets_the_peak_of_memory_already_freed() -> None:
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    baseline = memory.read()
    block = torch.ones(256 * 2**20 // 4)  # 256 MiB, touched
    del block
    before_reset = memory.read()
    assert before_reset > baseline + 200, "the freed block still counts until the reset"
    memory.reset()
    assert memory.read() < before_reset - 200, "after the reset the peak is what is resident now"
    assert memory.source == PER_JOB


@pytest.mark.slow  # several trainings in one test
@needs_clear_refs
def test_each_sweep_job_reports_its_own_peak(tmp_path: Path, corpus: Path) -> None:
    """Job 0 touches 300 MiB and frees them; job 1 does not. Old: `peak_memory_mb` was the process' ru_maxrss, so
    job 1 reported at least job 0's peak (and nothing said the number covered earlier jobs)."""
    log_dir = tmp_path / "outputs"
    code = run_cli(
        [
            "-m",
            *tiny(corpus=corpus),
            *LEAN_CALLBACKS,
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            callback_override("hog", AllocateAt),
            "+callbacks.hog.megabytes=300,0",
        ],
        log_dir,
    )
    assert code == 0
    (sweep,) = run_folders(log_dir, "sweeps")
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    first, second = (read_metrics(job) for job in jobs)
    assert "megabytes=300" in jobs[0].name and "megabytes=0" in jobs[1].name
    assert first["peak_memory_source"] == second["peak_memory_source"] == PER_JOB
    assert first["peak_memory_mb"] > second["peak_memory_mb"] + 150, (first["peak_memory_mb"], second["peak_memory_mb"])
