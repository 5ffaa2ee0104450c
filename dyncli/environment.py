"""Where a measurement was taken: CPU/GPU, threads, versions."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: Any) -> dict[str, Any]:
    import torch

    dev = str(device)
    if dev.startswith("cuda"):
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = "cpu"
    return {
        "torch": str(torch.__version__),
        "threads": int(torch.get_num_threads()),
        "cpu": cpu_name(),
        "device": dev,
        "device_name": dev_name,
        "python": platform.python_version(),
        "onnxruntime": _version_of("onnxruntime"),
    }


def _version_of(package: str) -> str | None:
    """An installed package's version (None when it is not installed), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
