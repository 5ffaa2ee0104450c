"""``--device``: the device a command runs on."""

from __future__ import annotations

import torch


def pick_device(device: str) -> torch.device:
    """``--device`` value -> a usable device: 'auto' is CUDA when present, else the CPU.

    Only ``cpu``, ``cuda`` and ``cuda:N`` are accepted. Raises :class:`UsageError` for a string
    that names no device, another device type, CUDA on a machine without it, or a CUDA index
    this machine does not have (instead of a CUDA error at the first tensor moved there).
    """
    from dyncli.errors import UsageError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    usage = "use auto, cpu, cuda or cuda:N"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise UsageError(f"--device {device}: not a device; {usage}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise UsageError(f"--device {device}: not supported; {usage}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available; use --device cpu")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        if count == 1:
            have = "1 CUDA device (cuda:0); use --device cuda:0"
        else:
            last = f"cuda:{count - 1}"
            have = f"{count} CUDA devices (cuda:0..{last}); use --device cuda:0..{last}"
        raise UsageError(f"--device {device}: this machine has {have}")
    return dev
