"""A matmul template on the CPU (llvm): a knob space with tile, vectorize, parallel, unroll knobs.

C[i, j] = sum_k A[i, k] B[k, j] in float32, scheduled with tvm.s_tir.Schedule: i, j and k split by
the tile knobs into io, jo, ko, ki, ii, ji (the ii x ji accumulator tile innermost), the initial
zeroing decomposed out of the reduction, ji vectorized, io parallel over cores, and an unroll
budget on the outer loop. It serves as the CPU test bed of the genetic strategy (a real kernel
family, built and run on llvm); on a GPU machine the Hopper GEMM family takes the same seam.
"""
from __future__ import annotations

import math

import tvm
from tvm.target import Target

from .knobs import Config, Knob, KnobSpace, register
from .op import Op

L1_BYTES = 32 << 10  # the working set a tile may have (a common L1 data cache size)


def _divisors(n: int, candidates: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(c for c in candidates if n % c == 0) or (1,)


@register
class CpuMatmul(KnobSpace):
    name = "cpu_matmul"

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return (op.name == "matmul" and target.kind.name == "llvm" and op.dtype == "float32"
                and op.output_dtype == "float32")

    @property
    def knobs(self) -> tuple[Knob, ...]:
        m, n, k = (self.op.shape[key] for key in ("m", "n", "k"))
        return (Knob("tile_i", _divisors(m, (1, 2, 4, 8, 16, 32, 64))),
                Knob("tile_j", _divisors(n, (4, 8, 16, 32, 64, 128))),
                Knob("tile_k", _divisors(k, (1, 4, 8, 16, 32, 64, 128))),
                Knob("vectorize", (False, True)),
                Knob("parallel", (False, True)),
                Knob("unroll", (0, 16, 64)))

    @staticmethod
    def working_set_bytes(config: Config) -> int:
        """float32 bytes of one tile step: the ii x ji accumulators and the A and B slices."""
        i, j, k = config["tile_i"], config["tile_j"], config["tile_k"]
        return 4 * (i * j + i * k + k * j)

    def reject(self, config: Config) -> str | None:
        size = self.working_set_bytes(config)
        if size > L1_BYTES:
            return f"tile working set {size >> 10} KiB exceeds a {L1_BYTES >> 10} KiB L1 cache"
        return None

    def module(self, config: Config) -> tvm.IRModule:
        sch = tvm.s_tir.Schedule(tvm.IRModule({"main": self.op.prim_func()}))
        block = sch.get_sblock("C")
        i, j, k = sch.get_loops(block)
        io, ii = sch.split(i, [None, config["tile_i"]])
        jo, ji = sch.split(j, [None, config["tile_j"]])
        ko, ki = sch.split(k, [None, config["tile_k"]])
        sch.reorder(io, jo, ko, ki, ii, ji)
        if config["vectorize"]:
            sch.vectorize(ji)
        if config["parallel"]:
            sch.parallel(io)
        sch.decompose_reduction(block, ko)
        if config["unroll"]:
            sch.annotate(io, "pragma_auto_unroll_max_step", config["unroll"])
            sch.annotate(io, "pragma_unroll_explicit", 1)
        return sch.mod

    def features(self, config: Config) -> dict[str, float]:
        m, n, k = (self.op.shape[key] for key in ("m", "n", "k"))
        i, j, kk = config["tile_i"], config["tile_j"], config["tile_k"]
        return {"log_tile_i": math.log2(i), "log_tile_j": math.log2(j), "log_tile_k": math.log2(kk),
                "vectorize": float(config["vectorize"]), "parallel": float(config["parallel"]),
                "log_unroll": math.log2(1 + config["unroll"]),
                "log_working_set": math.log2(self.working_set_bytes(config)),
                "log_outer_tiles": math.log2((m // i) * (n // j)),
                "log_bytes_per_flop": math.log2((i * kk + kk * j) / (2 * i * j * kk))}
