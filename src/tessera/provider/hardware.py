"""Hardware probe: CPU, RAM and GPUs (torch.cuda, which uses NVML/the driver when present)."""

from __future__ import annotations

import os
import platform

from tessera.protocol.wire import GpuInfo, Hardware


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _gpus() -> list[GpuInfo]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(GpuInfo(name=props.name[:200], memory_bytes=int(props.total_memory)))
    return gpus


def probe() -> Hardware:
    """What this machine has, as announced to the gateway."""
    return Hardware(
        cpu=_cpu_name()[:2000],
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=_ram_bytes(),
        gpus=_gpus(),
    )
