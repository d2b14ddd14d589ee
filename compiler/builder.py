"""Parallel builds of scheduled IRModules into loadable shared libraries.

A long-lived pool of TVM's Popen workers (one fresh Python process each, so a compiler crash or hang
only costs that worker) compiles with `tvm.compile` and exports each kernel as a `.so`. Failures are
returned as errors; the caller counts them as invalid candidates.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import tvm
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind
from tvm.target import Target

# WMMA fp16->fp32 candidates hit this TVM 0.27 check unless storage rewrite is off (GUIDE §1).
_STORAGE_REWRITE_ERROR = "tvm_access_ptr element type must match"


@dataclass
class BuildResult:
    artifact: str | None
    error: str | None


def compile_module(mod: tvm.IRModule, target: Target, options: dict | None = None
                   ) -> tvm.runtime.Executable:
    """tvm.compile (cp.async copies where the schedule pipelines them) with a space's extra
    `options` (e.g. tir_pipeline), retried without storage rewrite for the known WMMA failure."""
    options = options or {}
    if target.kind.name == "cuda" and options.get("tir_pipeline") == "tirx":
        # the TIRx (sm_90a) families were validated on the H200 compiled by nvcc; NVRTC is untried
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    if target.kind.name == "cuda":
        from tvm.s_tir import tensor_intrin  # noqa: F401  MMA lowering looks up its index maps here
        from ..schedules import lut_intrin  # noqa: F401  splices the LUT instruction's device code
    config = {"tirx.use_async_copy": True}
    try:
        with tvm.transform.PassContext(config=config):
            return tvm.compile(mod, target=target, **options)
    except Exception as err:
        if _STORAGE_REWRITE_ERROR not in str(err):
            raise
    with tvm.transform.PassContext(config={**config, "tirx.disable_storage_rewrite": True}):
        return tvm.compile(mod, target=target, **options)


def build_to_file(mod: tvm.IRModule, target: Target, path: str, options: dict | None = None) -> str:
    compile_module(mod, target, options).export_library(path)
    return path


def _worker_build(mod: tvm.IRModule, target: Target, out_dir: str, options: dict) -> str:
    return build_to_file(mod, target, os.path.join(out_dir, f"{uuid.uuid4().hex}.so"), options)


def _first_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return ((errors or lines or ["unknown build error"])[-1])[:500]


class Builder:
    def __init__(self, target: Target, out_dir: str, workers: int, timeout_s: float = 120.0,
                 compile_options: dict | None = None) -> None:
        self.target, self.out_dir, self.options = target, out_dir, compile_options or {}
        self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s)

    def build(self, mods: list[tvm.IRModule]) -> list[BuildResult]:
        results = []
        jobs = [(mod, self.target, self.out_dir, self.options) for mod in mods]
        for res in self.pool.map_with_error_catching(lambda job: _worker_build(*job), jobs):
            if res.status == StatusKind.COMPLETE:
                results.append(BuildResult(res.value, None))
            elif res.status == StatusKind.TIMEOUT:
                results.append(BuildResult(None, "build timed out"))
            else:
                results.append(BuildResult(None, _first_error_line(str(res.value))))
        return results

    def close(self) -> None:
        self.pool.shutdown()
