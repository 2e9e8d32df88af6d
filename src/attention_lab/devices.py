"""Device helpers shared by training, sampling and the benchmarks: pick a device, wait for it, read its memory."""

from __future__ import annotations

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
