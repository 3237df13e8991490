"""The hardware probe: GPUs from nvidia-smi (a stand-in script on the PATH here), CPU and
RAM from the OS, and torch never imported for it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tessera.protocol.wire import GpuInfo
from tessera.provider.hardware import parse_nvidia_smi, probe

TWO_H200 = (
    "0, GPU-1d2f8a94-0000-1111-2222-333344445555, NVIDIA H200, 143771\n"
    "1, GPU-7c01b3e2-6666-7777-8888-999900001111, NVIDIA H200, 143771\n"
)
H200 = GpuInfo(name="NVIDIA H200", memory_bytes=143771 * 1024 * 1024)


def fake_nvidia_smi(bin_dir: Path, output: str, code: int = 0) -> str:
    """A PATH whose nvidia-smi prints ``output`` and records its arguments."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        f"#!/bin/sh\necho \"$@\" > {bin_dir / 'args'}\ncat <<'END'\n{output}END\nexit {code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_gpus_come_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", fake_nvidia_smi(bin_dir, TWO_H200))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hardware = probe()
    assert hardware.gpus == [H200, H200]
    asked = (bin_dir / "args").read_text().split()
    assert "--format=csv,noheader,nounits" in asked
    assert any(a.startswith("--query-gpu=") and "name,memory.total" in a for a in asked)
    assert hardware.cpu_cores >= 1 and hardware.ram_bytes > 0 and hardware.cpu


def test_cuda_visible_devices_narrows_the_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", TWO_H200))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert probe().gpus == [H200]


def test_no_gpus_without_nvidia_smi_or_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert probe().gpus == []
    failing = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", failing, code=9))
    assert probe().gpus == []


def test_parse_nvidia_smi() -> None:
    odd = "2, GPU-aa, Tesla V100-SXM2-16GB, [N/A]\n3, GPU-bb, Some, GPU, 8192\nnot csv\n"
    assert parse_nvidia_smi(TWO_H200 + odd) == [
        H200,
        H200,
        GpuInfo(name="Some, GPU", memory_bytes=8192 * 1024 * 1024),
    ]
    # CUDA_VISIBLE_DEVICES: indices or UUID prefixes, in its order, up to the first miss.
    assert len(parse_nvidia_smi(TWO_H200, "1,0")) == 2
    assert parse_nvidia_smi(TWO_H200, "GPU-7c01b3e2") == [H200]
    assert len(parse_nvidia_smi(TWO_H200, "0,7,1")) == 1
    assert parse_nvidia_smi(TWO_H200, "") == []
    assert parse_nvidia_smi(TWO_H200, "-1") == []
