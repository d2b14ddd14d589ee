"""Write a CUDA thread block's program once and get it twice: for the GPU, and emulated on a CPU.

Hand-written kernels (schedules/gemv_knobs.py) are built with TVM's IR builder through `Simt`.
On CUDA, blocks and threads are `launch_thread` environments, registers are `local` buffers,
`sync()` is `__syncthreads()` and `xor_sum` a warp-shuffle butterfly. With `emulate=True` the same
calls build a serial CPU program with identical indexing: blocks become loops, every
`threads()` region ("phase") becomes a loop over the block's threads, a register becomes an
array with one row per thread, shared memory an ordinary buffer, and a shuffle an exchange
through a buffer between two phases. A phase ends where the GPU program would synchronize or
exchange registers, so running the phases one after another is exactly the GPU semantics. This
lets the CPU check a kernel's index arithmetic (rows, columns, split-k, grid-stride loops, the
cross-thread reduction) for real on llvm; what it cannot check are the CUDA-only instructions
(cache-qualified PTX loads, atomics), which it replaces by plain loads and serial adds. A warp's
tensor-core product (`mma_m16n8k16`) is emulated from the fragments of all its 32 threads as
PTX lays them out, so a kernel's mapping of data to fragments is checked too.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import tvm
from tvm import tirx
from tvm.script import tirx as TS
from tvm.script.ir_builder import tirx as T

FULL_MASK = 0xFFFFFFFF
WARP = 32


class Reg:
    """A per-thread register array: `shape` values per thread (one row per thread when emulated)."""

    def __init__(self, simt: "Simt", shape: tuple[int, ...], dtype: str) -> None:
        self.emulate = simt.emulate
        rows = (simt.threads_per_block,) if simt.emulate else ()
        self.buffer = T.alloc_buffer((*rows, *shape), dtype, scope="global" if simt.emulate else "local")

    def _index(self, t, idx) -> list:
        return [t, *idx] if self.emulate else list(idx)

    def load(self, t, *idx) -> tirx.PrimExpr:
        return tirx.BufferLoad(self.buffer, self._index(t, idx))

    def store(self, t, value, *idx) -> None:
        T.buffer_store(self.buffer, value, self._index(t, idx))

    def view(self, dtype: str) -> "Reg":
        """The same registers seen as `dtype` values (e.g. bytes as 32-bit words)."""
        view = object.__new__(Reg)
        view.emulate = self.emulate
        *rows, size = self.buffer.shape
        scale = tvm.DataType(dtype).bits / tvm.DataType(self.buffer.dtype).bits
        view.buffer = T.decl_buffer((*rows, int(int(size) / scale)), dtype,
                                    data=self.buffer.data, scope=self.buffer.scope())
        return view


class Simt:
    """Builder context for one kernel launch of `threads_per_block` threads."""

    def __init__(self, threads_per_block: int, emulate: bool) -> None:
        self.threads_per_block, self.emulate = threads_per_block, emulate
        self._tx = None

    @contextmanager
    def launch(self, grid: list[tuple[str, int]]) -> Iterator[list[tirx.Var]]:
        """Blocks over `grid` ([("blockIdx.x", extent), ...]); yields the block indices."""
        frames, ids = [], []
        for tag, extent in grid:
            if self.emulate:
                frame = T.serial(0, extent)
                ids.append(frame.__enter__())
            else:
                var = T.env_thread(tag)
                frame = T.launch_thread(var, extent)
                frame.__enter__()
                ids.append(var)
            frames.append(frame)
        if not self.emulate:
            self._tx = T.env_thread("threadIdx.x")
            frame = T.launch_thread(self._tx, self.threads_per_block)
            frame.__enter__()
            frames.append(frame)
        try:
            yield ids
        finally:
            for frame in reversed(frames):
                frame.__exit__(None, None, None)
            self._tx = None

    @contextmanager
    def threads(self) -> Iterator[tirx.PrimExpr]:
        """One phase: code every thread of the block runs; yields the thread index."""
        if not self.emulate:
            yield self._tx
            return
        with T.serial(0, self.threads_per_block) as t:
            yield t

    def reg(self, shape: tuple[int, ...], dtype: str) -> Reg:
        return Reg(self, shape, dtype)

    def shared(self, shape: tuple[int, ...], dtype: str) -> tirx.Buffer:
        return T.alloc_buffer(shape, dtype, scope="global" if self.emulate else "shared")

    def sync(self) -> None:
        """__syncthreads() between phases (phases already run one after another when emulated)."""
        if not self.emulate:
            T.evaluate(tirx.call_intrin("int32", "tirx.tvm_storage_sync", "shared"))

    def xor_sum(self, reg: Reg, width: int, at: int = 0) -> None:
        """reg[at] of every thread becomes the sum over its aligned group of `width` lanes
        (a power of two up to 32), by a butterfly of xor shuffles."""
        assert width & (width - 1) == 0 and width <= WARP, width
        offsets = [width >> (i + 1) for i in range(width.bit_length() - 1)]
        if not self.emulate:
            with self.threads() as t:
                for off in offsets:
                    other = tirx.call_intrin(reg.buffer.dtype, "tirx.tvm_warp_shuffle",
                                             tirx.const(FULL_MASK, "uint32"), reg.load(t, at),
                                             (t % WARP) ^ off, width, WARP)
                    reg.store(t, reg.load(t, at) + other, at)
            return
        swap = T.alloc_buffer((self.threads_per_block,), reg.buffer.dtype)
        for off in offsets:
            with self.threads() as t:
                T.buffer_store(swap, reg.load(t ^ off, at), [t])
            with self.threads() as t:
                reg.store(t, reg.load(t, at) + swap[t], at)


MMA_F16_F32 = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"


def half(word, high: int) -> tirx.PrimExpr:
    """The fp16 in the low (high=0) or high half of a 32-bit word, as float32."""
    bits = ((word >> tirx.const(16 * high, "uint32")) & tirx.const(0xFFFF, "uint32")).astype("uint16")
    return tirx.reinterpret("float16", bits).astype("float32")


def half2_word(low, high) -> tirx.PrimExpr:
    """The 32-bit word of two float32 values rounded to fp16 (low half first)."""
    bits = [tirx.reinterpret("uint16", v.astype("float16")).astype("uint32") for v in (low, high)]
    return bits[0] | (bits[1] << tirx.const(16, "uint32"))


def mma_m16n8k16(simt: Simt, t, a: Reg, a_at: tuple[int, ...], b: Reg, b_at: tuple[int, ...],
                 c: Reg, c_at: tuple[int, ...]) -> None:
    """D = A B + C for the warp of thread t (fp16 A 16x16 row-major, B 16x8, fp32 C, D in C),
    with the fragments of PTX's mma.m16n8k16: thread 4g + q holds A words (row g, k 2q..2q+1),
    (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..) at a_at, B words (k 2q..2q+1, column g),
    (2q+8.., g) at b_at (uint32 registers of two fp16 each, low half first), C (g, 2q),
    (g, 2q+1), (g+8, 2q), (g+8, 2q+1) at c_at. Emulated, each thread reads the other threads'
    A and B registers, so they must have been written in an earlier phase."""
    if not simt.emulate:
        T.evaluate(TS.ptx[MMA_F16_F32](*[c.load(t, i) for i in c_at], *[a.load(t, i) for i in a_at],
                                       *[b.load(t, i) for i in b_at], *[c.load(t, i) for i in c_at]))
        return
    lane = t % WARP
    warp, g, q = t - lane, lane // 4, lane % 4
    for i, at in enumerate(c_at):
        upper, col = i // 2, 2 * q + i % 2         # row g + 8 * upper, column col
        total = c.load(t, at)
        for k_thread in range(4):
            ta, tb = warp + 4 * g + k_thread, warp + 4 * col + k_thread
            for a_word, b_word in ((a_at[upper], b_at[0]), (a_at[2 + upper], b_at[1])):
                for h in range(2):
                    total = total + half(a.load(ta, a_word), h) * half(b.load(tb, b_word), h)
        c.store(t, total, at)


def ramp(base, lanes: int) -> tirx.PrimExpr:
    """Indices base .. base + lanes - 1, as one vector index (a vector load or store)."""
    return tirx.Ramp(base, 1, lanes) if lanes > 1 else base


def prim_func(name: str, body) -> tirx.PrimFunc:
    """Build a PrimFunc: `body()` declares its arguments with T.arg and writes the program."""
    from tvm.script.ir_builder import IRBuilder

    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tir.noalias": True})
            body()
    func = builder.get()
    assert isinstance(func, tvm.tirx.PrimFunc)
    return func
