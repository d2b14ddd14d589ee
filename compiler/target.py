"""Choosing the compilation target and the device that runs it."""
from __future__ import annotations

import platform
from dataclasses import dataclass

import psutil
import tvm
from tvm.target import Target



class TargetError(RuntimeError):
    """The requested target or meter is not available on this machine."""


@dataclass
class Platform:
    kind: str                       # "cuda" | "llvm"
    target: Target
    device: tvm.runtime.Device
    device_name: str


def nvidia_gpu_name(index: int = 0) -> str | None:
    """Name of GPU `index` if both NVML and TVM's CUDA runtime see it, else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() <= index:
            return None
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
    except Exception:  # no driver, no library, no device: all mean "no GPU"
        return None
    return name if tvm.cuda(index).exist else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def resolve(choice: str) -> Platform:
    """`auto` takes the first NVIDIA GPU that NVML and TVM see, else the CPU."""
    gpu = nvidia_gpu_name() if choice in ("auto", "cuda") else None
    if choice == "cuda" and gpu is None:
        raise TargetError("--target cuda: no NVIDIA GPU visible to both NVML and TVM on this machine")
    if gpu is not None:
        return Platform("cuda", Target.from_device(tvm.cuda(0)), tvm.cuda(0), gpu)
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    return Platform("llvm", Target({"kind": "llvm", "num-cores": cores}), tvm.cpu(0), _cpu_name())
