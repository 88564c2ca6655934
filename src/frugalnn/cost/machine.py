"""What machine a measurement ran on, recorded next to every timing.

A latency is meaningless without its machine: CPU model, core count, how many
threads torch used, torch version, the accelerator, when, and how loaded the
machine was (other processes share the CPU).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["describe_machine", "machine_markdown"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe_machine(device: str | torch.device | None = None) -> dict[str, Any]:
    """CPU model, cores, torch threads, versions, device name, UTC date, load average."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": load,
        "cuda_available": torch.cuda.is_available(),
    }
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        info["device"] = torch.cuda.get_device_name(dev)
    else:
        info["device"] = f"cpu ({info['cpu']})"
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def machine_markdown(info: dict[str, Any] | None = None) -> str:
    """The machine as a Markdown bullet list, for benchmark result sections."""
    info = info or describe_machine()
    keys = ("cpu", "cores", "usable_cores", "torch_threads", "torch", "device", "date", "loadavg")
    return "\n".join(f"- {k}: {info.get(k)}" for k in keys)
