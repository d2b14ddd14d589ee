"""Measuring memory-bound kernels as they are used: weights from DRAM, no launch gaps.

A decoding step reads each layer's weights once, from DRAM; a benchmark that calls a GEMV on
the same buffers again and again reads them from L2 where they fit (60 MB on an H200), and one
that launches each call from Python leaves the GPU idle between calls shorter than the launch
overhead (~10-20 µs): both change joules per call. Two policies, with their bookkeeping:

- rotate: the calls cycle through R copies of the inputs whose total exceeds `factor` x L2
  (`rotation_count`), so no call finds its inputs in L2. The launcher (`rotated_timer`) is a
  host-side PrimFunc compiled for the kernel's target that calls the kernel's `main` R x reps
  times over the R sets from compiled code (TVM's packed calls; no Python between launches);
  one call of that wrapper is timed and the per-call time is its time / (R x reps).
- flush: between calls, a device copy of 2 x L2 bytes evicts the inputs (`flush_timer`); its
  own time and energy are measured alone with the same launcher and subtracted (`net`).
  It needs no extra copies of large inputs, but what it subtracts is itself a measurement.

`run_batch(calls) -> seconds per call` is what measure/protocol.py's `measure_energy` takes, so
either timer drops into the energy protocol unchanged (the runner's `_timers`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

DEFAULT_FACTOR = 3.0            # rotated sets total at least this many L2 sizes
MIN_SETS = 2                    # consecutive calls never read the same buffers
FLUSH_FACTOR = 2                # the flush copy writes this many L2 sizes
WRAPPER = "rotate"
COPY = "runtime.TVMTensorCopyFromTo"


def l2_bytes(dev: tvm.runtime.Device | None = None, default: int | None = None) -> int:
    """The device's L2 size (CUDA reports it), else `default`; raises if neither is known."""
    size = dev.l2_cache_size_bytes if dev is not None and dev.exist else None
    if size:
        return int(size)
    if default is None:
        raise ValueError("the device does not report its L2 size; pass default=")
    return int(default)


def rotation_count(set_bytes: int, l2: int, factor: float = DEFAULT_FACTOR,
                   max_bytes: int | None = None) -> int:
    """Input sets needed so that together they exceed factor x l2 (at least MIN_SETS).
    Raises if that needs more than max_bytes of device memory."""
    if set_bytes <= 0 or l2 <= 0:
        raise ValueError(f"set_bytes and l2 must be positive, got {set_bytes}, {l2}")
    sets = max(MIN_SETS, math.floor(factor * l2 / set_bytes) + 1)
    if max_bytes is not None and sets * set_bytes > max_bytes:
        raise ValueError(f"{sets} sets of {set_bytes} B exceed the {max_bytes} B allowed")
    return sets


def _wrapper(arg_sets: Sequence[Sequence[tvm.runtime.Tensor]], kernel: str,
             flush: tuple[tvm.runtime.Tensor, tvm.runtime.Tensor] | None,
             with_kernel: bool = True) -> tirx.PrimFunc:
    """rotate(set 0 args..., set R-1 args..., [flush src, dst], reps): reps rounds, each calling
    `kernel` on every set in turn (and the flush copy after each call)."""
    def buffer(name: str, t: tvm.runtime.Tensor):
        return T.arg(name, T.buffer(tuple(int(d) for d in t.shape), str(t.dtype)))

    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(WRAPPER)
            sets = [[buffer(f"s{s}_{i}", t) for i, t in enumerate(args)]
                    for s, args in enumerate(arg_sets)]
            copy = [buffer("flush_src", flush[0]), buffer("flush_dst", flush[1])] if flush else []
            reps = T.arg("reps", T.int32())
            with T.serial(0, reps):
                for bufs in sets:
                    if with_kernel:
                        T.evaluate(tirx.call_packed(kernel, *bufs))
                    if copy:
                        T.evaluate(tirx.call_packed(COPY, *copy))
    return builder.get()


def _host_target(dev: tvm.runtime.Device) -> Target:
    """A target whose host code runs on the CPU and whose tensors live on dev."""
    if dev.dlpack_device_type() == tvm.cpu().dlpack_device_type():
        return Target("llvm")
    arch = "sm_" + str(dev.compute_version).replace(".", "")
    return Target({"kind": "cuda", "arch": arch}, host="llvm")


@dataclass
class Launcher:
    """A compiled wrapper around a kernel module; `run_batch(calls)` -> seconds per call."""
    module: tvm.runtime.Module
    args: list
    calls_per_rep: int
    dev: tvm.runtime.Device

    def reps(self, calls: int) -> int:
        return max(1, math.ceil(calls / self.calls_per_rep))

    def run_batch(self, calls: int) -> float:
        """At least `calls` calls back to back in one wrapper call; seconds per call, timed from
        the host around that call and a device sync (time_evaluator would run the whole batch
        twice: it makes one untimed call first; the host adds one launch and one sync, < 0.1% of
        an energy window)."""
        reps = self.reps(calls)
        start = time.perf_counter()
        self.module[WRAPPER](*self.args, reps)
        self.dev.sync()
        return (time.perf_counter() - start) / (reps * self.calls_per_rep)

    __call__ = run_batch

    def samples(self, repeats: int, min_repeat_s: float) -> list[float]:
        """Per-call times of `repeats` batches, each at least min_repeat_s long."""
        calls = self.calls_per_rep
        while self.run_batch(calls) * calls < min_repeat_s and calls < 1 << 22:
            calls *= 2
        return [self.run_batch(calls) for _ in range(repeats)]


def _launcher(module: tvm.runtime.Module, arg_sets, dev, flush=None, with_kernel=True,
              kernel: str = "main") -> Launcher:
    wrapper = tvm.compile(tvm.IRModule({WRAPPER: _wrapper(arg_sets, kernel, flush, with_kernel)}),
                          target=_host_target(dev))
    wrapper.mod.import_module(module)   # the wrapper's packed calls find `kernel` among imports
    args = [t for s in arg_sets for t in s] + (list(flush) if flush else [])
    return Launcher(wrapper.mod, args, len(arg_sets), dev)


def rotated_timer(module: tvm.runtime.Module, args_sets: Sequence[Sequence[tvm.runtime.Tensor]],
                  dev: tvm.runtime.Device, kernel: str = "main") -> Launcher:
    """A gap-free launcher of `module[kernel]` over rotated argument sets.

    module: the built kernel (an Executable's `.mod` or `tvm.runtime.load_module(path)`);
    args_sets: R lists of the kernel's arguments (inputs and output), all on dev, R from
    `rotation_count`; sets may share tensors (e.g. one output). The returned callable is
    `run_batch(calls) -> seconds per call`: it runs ceil(calls / R) rounds over all R sets in
    one call of compiled code and times that call (see `Launcher.run_batch`).
    """
    if not args_sets:
        raise ValueError("rotated_timer needs at least one argument set")
    return _launcher(module, args_sets, dev, kernel=kernel)


def flush_buffers(dev: tvm.runtime.Device, l2: int) -> tuple[tvm.runtime.Tensor, tvm.runtime.Tensor]:
    """Source and destination of the L2 flush copy: FLUSH_FACTOR x l2 bytes each."""
    count = FLUSH_FACTOR * l2 // 4
    return (tvm.runtime.empty((count,), "float32", dev), tvm.runtime.empty((count,), "float32", dev))


def flush_timer(module: tvm.runtime.Module, args: Sequence[tvm.runtime.Tensor],
                dev: tvm.runtime.Device, l2: int, kernel: str = "main") -> tuple[Launcher, Launcher]:
    """(kernel then flush, flush alone): two gap-free launchers over the same flush copy, whose
    difference (`net`) is the kernel's cost with its inputs evicted from L2 before each call."""
    flush = flush_buffers(dev, l2)
    return (_launcher(module, [args], dev, flush, kernel=kernel),
            _launcher(module, [args], dev, flush, with_kernel=False, kernel=kernel))


def net(pair: tuple[float, float], flush: tuple[float, float]) -> tuple[float, float]:
    """(seconds, joules) per call of the kernel from (seconds, watts) per call measured for
    kernel + flush and for the flush alone: t = t_pair - t_flush, E = P_pair t_pair - P_flush t_flush."""
    (t_pair, w_pair), (t_flush, w_flush) = pair, flush
    return t_pair - t_flush, w_pair * t_pair - w_flush * t_flush
