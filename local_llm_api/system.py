"""What the host offers: GPUs seen by llama.cpp and by nvidia-smi, read once."""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

from pydantic import BaseModel


class GpuDevice(BaseModel):
    name: str
    memory_total_mib: int | None = None


class GpuInfo(BaseModel):
    llama_cpp_gpu_offload: bool
    devices: list[GpuDevice]


@lru_cache(maxsize=1)
def gpu_info() -> GpuInfo:
    try:
        import llama_cpp

        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except ImportError:
        offload = False
    return GpuInfo(llama_cpp_gpu_offload=offload, devices=_nvidia_devices())


def _nvidia_devices() -> list[GpuDevice]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    devices = []
    for line in out.strip().splitlines():
        name, _, memory = line.partition(",")
        devices.append(GpuDevice(name=name.strip(), memory_total_mib=int(memory) if memory.strip().isdigit() else None))
    return devices
