"""Peak memory of one job, not of the process: sweeps run many jobs in one process.

On CUDA the allocator's peak is reset at job start. On Linux CPUs the kernel's resident-set high-water mark
(VmHWM) is reset by writing "5" to /proc/self/clear_refs, so VmHWM afterwards is this job's own peak RSS (it
still includes what earlier jobs left resident, such as imported libraries). Where neither works, the
process-wide `ru_maxrss` is reported and labelled as such, never passed off as a per-job number.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def _vm_hwm_kib() -> int | None:
    try:
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


class PeakMemory:
    """`reset()` at job start, `read()` for (peak MiB since then, how it was measured)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.source = "process ru_maxrss (includes earlier jobs of a sweep)"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "torch.cuda.max_memory_allocated since job start"
            return
        try:
            CLEAR_REFS.write_text("5")
        except OSError:
            return
        if _vm_hwm_kib() is not None:
            self.source = "peak RSS (VmHWM) since job start"

    def read(self) -> float:
        return peak_mb(self.device)


def peak_mb(device: torch.device) -> float:
    """Peak MiB since the last reset: the CUDA allocator's, else VmHWM, else the process' ru_maxrss."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _vm_hwm_kib()
    if hwm is not None:
        return hwm / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)
