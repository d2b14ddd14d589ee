"""Parallel builds of scheduled IRModules into loadable shared libraries.

A pool of long-lived TVM Popen workers (one fresh Python process each, so a compiler crash or hang
only costs that worker) compiles with `tvm.compile` and exports each kernel as a `.so`. `submit`
queues builds and returns their futures at once, so the caller can measure one kernel while others
compile; `close` cancels the queued builds and kills the running ones (with their compiler
processes), so an interrupted tune never waits for a build. Failures are returned as errors; the
caller counts them as invalid candidates.
"""
from __future__ import annotations

import os
import queue
import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import tvm
from tvm.support.popen_pool import PopenWorker, kill_child_processes
from tvm.target import Target

# WMMA fp16->fp32 candidates hit this TVM 0.27 check unless storage rewrite is off (GUIDE §1).
_STORAGE_REWRITE_ERROR = "tvm_access_ptr element type must match"


Module = tvm.IRModule | Callable[[], tvm.IRModule]   # a module, or what makes it


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
    elif target.kind.name == "cuda":
        # MetaSchedule's MMA lowering looks up its index maps in tensor_intrin, the LUT instruction
        # splices its device code; TIRx kernels write their own PTX and need neither (importing
        # tensor_intrin takes 20-100 s, in every fresh build process)
        from tvm.s_tir import tensor_intrin  # noqa: F401
        from ..schedules import lut_intrin  # noqa: F401
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


def _ready() -> int:
    """A worker's first job: unpickling it imports this module (and TVM) in the worker."""
    return os.getpid()


def _first_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return ((errors or lines or ["unknown build error"])[-1])[:500]


def _kill(worker: PopenWorker) -> None:
    """Kill a worker's process and its children (e.g. nvcc) and reap it, leaving its pipes to the
    thread that may be reading them (closing a pipe another thread reads would wait for it)."""
    proc = worker._proc  # noqa: SLF001  TVM's PopenWorker.kill closes the pipes first
    if proc is not None:
        kill_child_processes(proc.pid)
        proc.kill()
        proc.wait()


class Builder:
    """`workers` build processes, each served by a daemon thread that takes the next queued build
    (builds start in the order they were submitted)."""

    def __init__(self, target: Target, out_dir: str, workers: int, timeout_s: float = 120.0,
                 compile_options: dict | None = None) -> None:
        self.target, self.out_dir, self.options = target, out_dir, compile_options or {}
        self.timeout_s = timeout_s
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()   # held while a build is handed to a worker, and by close
        self.closed = False
        self.workers = [PopenWorker() for _ in range(workers)]
        for worker in self.workers:
            threading.Thread(target=self._serve, args=(worker,), daemon=True, name="build").start()

    def job(self, mod: Module, target: Target | None = None, options: dict | None = None
            ) -> Callable[[], tuple[Callable[..., str], tuple]]:
        """What a worker process runs to build `mod` (for `target` with `options`, else the
        pool's), made when a worker takes it: a function returning the library's path, and its
        arguments."""
        def made() -> tuple[Callable[..., str], tuple]:
            module = mod() if callable(mod) else mod
            return _worker_build, (module, target or self.target, self.out_dir,
                                   self.options if options is None else options)
        return made

    def submit(self, mods: list[Module], target: Target | None = None,
               options: dict | None = None) -> list[Future]:
        """Queue the builds; their BuildResults as futures, in the order of `mods`. A callable
        is made into its module by the thread that hands it to a worker, off the caller's thread
        (a TIRx kernel takes ~0.1 s of Python to write). `target` and `options` override the
        pool's, so that one pool serves spaces of several tasks."""
        futures = []
        for mod in mods:
            futures.append(Future())
            self.queue.put((self.job(mod, target, options), futures[-1]))
        return futures

    def build(self, mods: list[tvm.IRModule]) -> list[BuildResult]:
        return [future.result() for future in self.submit(mods)]

    def _serve(self, worker: PopenWorker) -> None:
        # Start the worker now, all at once: a fresh worker reads its first job only after its
        # imports (~8 s on the H200 host), and a send that fills the pipe waits for that read, so
        # starting workers by their first build under the lock started them one after another
        # (16 cold builds done 7.5 s apart, against 1.9 s in all once started; H200, 2026-12-02).
        try:
            worker.send(_ready, (), timeout=self.timeout_s)
            worker.recv()
        except Exception:  # closed meanwhile, or cannot start: its first build will say why
            pass
        while True:
            item = self.queue.get()
            if item is None or self.closed:
                break
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                fn, args = job()
            except Exception as err:  # the space could not write this kernel
                error = f"module not made: {_first_error_line(str(err))}"
                future.set_result(BuildResult(None, error))
                continue
            with self.lock:
                if self.closed:
                    future.set_result(BuildResult(None, "build pool closed"))
                    break
                worker.send(fn, args, timeout=self.timeout_s)  # close() kills what was sent
            try:
                future.set_result(BuildResult(worker.recv(), None))
            except TimeoutError:
                future.set_result(BuildResult(None, "build timed out"))
            except Exception as err:  # the compiler's error, or the worker died (killed)
                future.set_result(BuildResult(None, _first_error_line(str(err))))
        worker.kill()

    def close(self) -> None:
        """Cancel the queued builds, kill the running ones; returns without waiting for a build."""
        with self.lock:
            self.closed = True
            for worker in self.workers:
                _kill(worker)
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        for _ in self.workers:
            self.queue.put(None)
