"""Device helpers shared by training, sampling and the benchmarks: pick a device, wait for it, read its memory."""

from __future__ import annotations

import re

import torch

from .errors import UserError


class DeviceError(UserError):
    """A device that does not exist here or is not supported."""


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """`cpu`, `cuda[:N]` or `auto` (CUDA when there is one) -> a device; fail early rather than at the first op."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"{setting}={name!r} is not a device: use cpu, cuda or auto.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting}={name} but CUDA is not available here: use cpu or auto.")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{setting}={name!r} is not supported: use cpu, cuda or auto.")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it; a no-op on the CPU (which runs eagerly)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ peak FLOP/s
# Dense peak FLOP/s (no 2:4 sparsity) from NVIDIA's datasheets, in TFLOP/s: fp32 on CUDA cores, tf32/bf16/fp16
# on tensor cores (fp16 with fp32 accumulate, what PyTorch uses). Datasheets print the sparse figure for
# Ampere and later; the dense one is half of it. A name matches when all of its tokens are in the device name
# (`torch.cuda.get_device_name()`, upper-cased and split on non-alphanumerics); the first match wins, so
# specific form factors come before the generic one. None: the chip has no such tensor-core format.
PEAK_TFLOPS: tuple[tuple[tuple[str, ...], dict[str, float | None]], ...] = (
    # H100 / H200 datasheets: SXM 67 fp32, 494.7 tf32, 989.4 bf16/fp16; PCIe 51 / 378 / 756; NVL 60 / 417.5 / 835.5
    (("H100", "PCIE"), {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    (("H100", "NVL"), {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (("H100",), {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (("H200", "NVL"), {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (("H200",), {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    # A100 datasheet (40 and 80 GB, PCIe and SXM): 19.5 fp32, 156 tf32, 312 bf16/fp16
    (("A100",), {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    # A10 datasheet: 31.2 fp32, 62.5 tf32, 125 bf16/fp16. The A10G (AWS g5) has no NVIDIA datasheet: the A10's
    # figures are used for it, an approximation (same GA102 chip, other clocks)
    (("A10G",), {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    (("A10",), {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    # L40S datasheet: 91.6 fp32, 183 tf32, 362.05 bf16/fp16; L4 datasheet: 30.3 fp32, 60 tf32, 121 bf16/fp16
    (("L40S",), {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}),
    (("L4",), {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    # Ada Lovelace whitepaper, RTX 4090: 82.6 fp32, 82.6 tf32, 165.2 bf16/fp16 with fp32 accumulate
    (("RTX", "4090"), {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    # V100 datasheet (Volta: no tf32, no bf16): SXM2 15.7 fp32, 125 fp16; PCIe 14 / 112; V100S 16.4 / 130
    (("V100S",), {"fp32": 16.4, "tf32": None, "bf16": None, "fp16": 130.0}),
    (("V100", "PCIE"), {"fp32": 14.0, "tf32": None, "bf16": None, "fp16": 112.0}),
    (("V100",), {"fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0}),
    # T4 datasheet (Turing: no tf32, no bf16): 8.1 fp32, 65 fp16 mixed precision
    (("T4",), {"fp32": 8.1, "tf32": None, "bf16": None, "fp16": 65.0}),
)


def matmul_format(precision: str) -> str | None:
    """The format matrix products run in under Lightning's `trainer.precision` (bf16-mixed -> bf16, 16-mixed ->
    fp16; 32-true -> tf32 where torch.set_float32_matmul_precision allows it, else fp32); None for others (64)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision.startswith("32"):
        return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return None


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one device named `device_name` for matrix products at `precision` (a Lightning
    precision such as bf16-mixed), or None: a CPU, an unknown device or a format the device lacks."""
    tokens = set(re.split(r"[^0-9A-Z]+", device_name.upper()))
    fmt = matmul_format(precision)
    for names, peaks in PEAK_TFLOPS:
        if fmt is not None and tokens.issuperset(names):
            value = peaks.get(fmt)
            return None if value is None else value * 1e12
    return None


def device_name(device: torch.device) -> str:
    """What the peak table is looked up by: the GPU's marketing name, or the device type ("cpu")."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """`peak_flops` of the device a run trains on; None on the CPU (no meaningful single figure)."""
    return None if device.type != "cuda" else peak_flops(device_name(device), precision)
