"""Hardware probe: CPU, RAM and GPUs, without importing torch.

GPUs come from ``nvidia-smi`` (the NVIDIA driver's own tool) when it is on the PATH;
without it, or when it fails, none are announced. Torch is never imported here: an agent
that only forwards to an upstream server must not pay for it (it was 190 MiB of such an
agent's 255 MiB). As torch would, only the GPUs that ``CUDA_VISIBLE_DEVICES`` leaves
visible (by index or UUID) are announced.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

from tessera.protocol.wire import GpuInfo, Hardware

NVIDIA_SMI_TIMEOUT_S = 10.0
_QUERY = "--query-gpu=index,uuid,name,memory.total"
_MIB = 1024 * 1024
MAX_GPUS = 64  # what the wire's Hardware allows


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


def parse_nvidia_smi(output: str, visible: str | None = None) -> list[GpuInfo]:
    """The GPUs in the output of ``nvidia-smi --query-gpu=index,uuid,name,memory.total
    --format=csv,noheader,nounits`` (memory in MiB), narrowed to those ``visible`` names.

    ``visible`` is ``CUDA_VISIBLE_DEVICES`` (None: unset, every GPU). As CUDA reads it,
    its entries are indices or ``GPU-`` UUIDs (or their prefixes), separated by commas,
    and the list ends at the first entry that names no GPU (MIG instances are not
    resolved: they end it too); an empty value hides every GPU. Lines that do not parse
    (a ``[N/A]`` memory, say) are skipped.
    """
    found: list[tuple[str, str, GpuInfo]] = []  # (index, uuid, gpu)
    for line in output.splitlines():
        parts = line.split(",", 2)
        if len(parts) < 3 or "," not in parts[2]:
            continue
        name, memory = parts[2].rsplit(",", 1)  # a name with a comma in it stays whole
        name = name.strip()[:200]
        try:
            memory_mib = int(memory)  # whole MiB, as nounits prints it
        except ValueError:
            continue
        if name and memory_mib >= 0:
            gpu = GpuInfo(name=name, memory_bytes=memory_mib * _MIB)
            found.append((parts[0].strip(), parts[1].strip(), gpu))
    if visible is None:
        return [gpu for _, _, gpu in found][:MAX_GPUS]
    chosen: list[int] = []
    for entry in (part.strip() for part in visible.split(",")):
        at = next(
            (
                i
                for i, (index, uuid, _) in enumerate(found)
                if entry
                and (entry == index or (entry.startswith("GPU-") and uuid.startswith(entry)))
            ),
            None,
        )
        if at is None or at in chosen:
            break
        chosen.append(at)
    return [found[i][2] for i in chosen][:MAX_GPUS]


def _gpus() -> list[GpuInfo]:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        result = subprocess.run(
            [tool, _QUERY, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if result.returncode != 0:
        return []  # no driver loaded, or no GPU: nvidia-smi says so and exits non-zero
    return parse_nvidia_smi(result.stdout, os.environ.get("CUDA_VISIBLE_DEVICES"))


def probe() -> Hardware:
    """What this machine has, as announced to the gateway (runs nvidia-smi: blocking)."""
    return Hardware(
        cpu=_cpu_name()[:2000],
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=_ram_bytes(),
        gpus=_gpus(),
    )
