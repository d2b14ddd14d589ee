"""Choosing the compilation target and the device that runs it."""
from __future__ import annotations

import platform
from dataclasses import dataclass

import psutil
import tvm
from tvm.target import Target

from ..measure.meters import nvml_handle


class TargetError(RuntimeError):
    """The requested target or meter is not available on this machine."""


@dataclass
class Platform:
    kind: str                       # "cuda" | "llvm"
    target: Target
    device: tvm.runtime.Device
    device_name: str


def nvidia_gpu_name(index: int = 0) -> str | None:
    """Name of CUDA device `index` if both NVML and TVM's CUDA runtime see it, else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(nvml_handle(index))
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


# Shared memory a thread block may opt in to, by architecture (CUDA C Programming Guide, technical
# specifications). Target.from_device reports the 48 KB default; MetaSchedule's VerifyGPUCode checks
# against the target's value, and TVM's runtime opts in for kernels with more dynamic shared memory.
SHARED_MEMORY_OPT_IN = {"sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448}


def opt_in_shared_memory(target: Target) -> Target:
    """The CUDA target with its architecture's opt-in shared-memory limit, where that is known."""
    limit = SHARED_MEMORY_OPT_IN.get(str(target.attrs["arch"]).rstrip("af"))  # sm_90a -> sm_90
    return target if limit is None else Target({**target.export(), "max_shared_memory_per_block": limit})


def resolve(choice: str) -> Platform:
    """`auto` takes the first NVIDIA GPU that NVML and TVM see, else the CPU."""
    gpu = nvidia_gpu_name() if choice in ("auto", "cuda") else None
    if choice == "cuda" and gpu is None:
        raise TargetError("--target cuda: no NVIDIA GPU visible to both NVML and TVM on this machine")
    if gpu is not None:
        return Platform("cuda", opt_in_shared_memory(Target.from_device(tvm.cuda(0))), tvm.cuda(0), gpu)
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    return Platform("llvm", Target({"kind": "llvm", "num-cores": cores}), tvm.cpu(0), _cpu_name())
