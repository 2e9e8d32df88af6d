"""The one description of the machine a benchmark ran on, stored in every result file.

Benchmark numbers mean little without the CPU, the thread count, the library versions and the load of the
(shared, noisy) machine during the run, so every benchmark records the same facts under the same keys: a
reader can compare `generation.json` with `benchmark.json` or `loop_overhead.json` without a key map.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

import torch


def describe_machine(device: str | torch.device = "cpu", dtype: str | None = None) -> dict[str, Any]:
    """CPU model and cores, torch threads, memory, versions, the device's name and the load average at start."""
    device = torch.device(device)
    desc: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
    }
    if dtype is not None:
        desc["dtype"] = dtype
    if hasattr(os, "getloadavg"):
        desc["load_average_start"] = list(os.getloadavg())
    return desc


def finish_machine(desc: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end of the run (in place; returned for chaining): a load that rose during
    the run flags numbers to distrust."""
    if hasattr(os, "getloadavg"):
        desc["load_average_end"] = list(os.getloadavg())
    return desc


def load1() -> float | None:
    """The 1-minute load average, rounded; None where the OS has none (Windows)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or what `platform` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total RAM in GiB from /proc/meminfo; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None
