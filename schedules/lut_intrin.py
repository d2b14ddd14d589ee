"""The LUT-mpGEMM instruction: a registered TVM tensor intrinsic for the lookup-accumulate step.

One instruction sums, for `cols` output columns sharing one activation table, one weight group of
`pairs` packed bytes (2 pairs x 4 = 8 activations each) of one bit plane:
    S[c] += sum_{r, h} sign(idx) * T[r, h, mirror(idx)],   idx = nibble h of P[c, r].
The description is the one-hot form of that gather (tensorize matches affine indices only; see
`lut_mpgemm.lookup_term`); the implementations do the real gather: a TIR loop nest for llvm, and a
CUDA `__device__` function (`tvm_lut_acc`, spliced into the generated source by TVM's
`tvm_callback_cuda_postproc` hook) for CUDA.
"""
from __future__ import annotations

import re

import tvm_ffi
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .lut_mpgemm import ENTRIES, RUNS_PER_BYTE, lookup_term

CUDA_SOURCE = r"""
// LUT-mpGEMM instruction (energy-tuner): S[c] += sum over one weight group of signed table lookups.
template <int C, int PAIRS, int WORD, typename TT>
__device__ __forceinline__ void tvm_lut_acc(float* __restrict__ s, const TT* __restrict__ t,
                                            const unsigned char* __restrict__ p, int p_stride,
                                            int t_stride) {
#pragma unroll
  for (int c = 0; c < C; ++c) {
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < PAIRS / WORD; ++w) {
      unsigned int word = WORD == 4
          ? *reinterpret_cast<const unsigned int*>(p + c * p_stride + 4 * w)
          : (unsigned int)p[c * p_stride + w];
#pragma unroll
      for (int n = 0; n < 2 * WORD; ++n) {       // nibble n of the word: run pair w*WORD + n/2
        int idx = (word >> (4 * n)) & 15;
        int top = idx >> 3;
        float v = (float)t[(w * WORD + n / 2) * t_stride + (n % 2) * 8 + (idx ^ (top * 15))];
        acc += top ? -v : v;
      }
    }
    s[c] += acc;
  }
}
"""


def intrin_name(kind: str, cols: int, pairs: int, table_dtype: str, table_scope: str,
                sums_scope: str, word: int) -> str:
    scopes = f"{table_scope}_{sums_scope}".replace(".", "")
    return f"lut_acc_{kind}_c{cols}_p{pairs}_w{word}_{table_dtype}_{scopes}"


def _desc(cols: int, pairs: int, tdt: str, tscope: str, sscope: str):
    if cols == 1:  # a single column has no loop (and no iteration variable) of its own
        return _desc_one(pairs, tdt, tscope, sscope)

    @T.prim_func(s_tir=True)
    def desc(t: T.handle, p: T.handle, s: T.handle) -> None:
        tab = T.match_buffer(t, (pairs, RUNS_PER_BYTE, ENTRIES), tdt, offset_factor=1, scope=tscope)
        wts = T.match_buffer(p, (cols, pairs), "uint8", offset_factor=1)
        acc = T.match_buffer(s, (cols,), "float32", offset_factor=1, scope=sscope)
        with T.sblock("root"):
            T.reads(acc[0:cols], wts[0:cols, 0:pairs], tab[0:pairs, 0:RUNS_PER_BYTE, 0:ENTRIES])
            T.writes(acc[0:cols])
            for c, r, h, e in T.grid(cols, pairs, RUNS_PER_BYTE, ENTRIES):
                with T.sblock("lut"):
                    vc, vr, vh, ve = T.axis.remap("SRRR", [c, r, h, e])
                    acc[vc] = acc[vc] + lookup_term(tab, (vr, vh), wts[vc, vr], vh, ve)

    return desc


def _desc_one(pairs: int, tdt: str, tscope: str, sscope: str):
    @T.prim_func(s_tir=True)
    def desc(t: T.handle, p: T.handle, s: T.handle) -> None:
        tab = T.match_buffer(t, (pairs, RUNS_PER_BYTE, ENTRIES), tdt, offset_factor=1, scope=tscope)
        wts = T.match_buffer(p, (1, pairs), "uint8", offset_factor=1)
        acc = T.match_buffer(s, (1,), "float32", offset_factor=1, scope=sscope)
        with T.sblock("root"):
            T.reads(acc[0:1], wts[0:1, 0:pairs], tab[0:pairs, 0:RUNS_PER_BYTE, 0:ENTRIES])
            T.writes(acc[0:1])
            for r, h, e in T.grid(pairs, RUNS_PER_BYTE, ENTRIES):
                with T.sblock("lut"):
                    vr, vh, ve = T.axis.remap("RRR", [r, h, e])
                    acc[0] = acc[0] + lookup_term(tab, (vr, vh), wts[0, vr], vh, ve)

    return desc


def _gather(tab, r, h, byte):
    idx = (byte.astype("int32") >> (h * 4)) & 15
    top = idx >> 3
    return tab[r, h, idx ^ (top * 15)].astype("float32") * (1 - top * 2).astype("float32")


def _impl(kind: str, cols: int, pairs: int, tdt: str, tscope: str, sscope: str, word: int):
    """CUDA: a call of the `__device__` function; llvm: the gather as a TIR loop nest."""
    cuda = kind == "cuda"
    func = f"tvm_lut_acc<{cols}, {pairs}, {word}, {'half' if tdt == 'float16' else 'float'}>"

    @T.prim_func(s_tir=True)
    def impl(t: T.handle, p: T.handle, s: T.handle) -> None:
        t0 = T.int32()
        p0 = T.int32()
        tab = T.match_buffer(t, (pairs, RUNS_PER_BYTE, ENTRIES), tdt, offset_factor=1,
                             scope=tscope, strides=[t0, ENTRIES, 1])
        wts = T.match_buffer(p, (cols, pairs), "uint8", offset_factor=1, strides=[p0, 1])
        acc = T.match_buffer(s, (cols,), "float32", offset_factor=1, scope=sscope)
        with T.sblock("root"):
            T.reads(acc[0:cols], wts[0:cols, 0:pairs], tab[0:pairs, 0:RUNS_PER_BYTE, 0:ENTRIES])
            T.writes(acc[0:cols])
            if cuda:  # a Python constant: resolved when the script is parsed
                T.evaluate(T.call_extern("int32", func, acc.access_ptr("rw"), tab.access_ptr("r"),
                                         wts.access_ptr("r"), p0, t0))
            else:
                for c, r, h in T.grid(cols, pairs, RUNS_PER_BYTE):
                    acc[c] = acc[c] + _gather(tab, r, h, wts[c, r])

    return impl


def register(kind: str, cols: int, pairs: int, table_dtype: str, table_scope: str,
             sums_scope: str, word: int = 1) -> str:
    """Register (once) the instruction for these parameters; returns its name for sch.tensorize."""
    name = intrin_name(kind, cols, pairs, table_dtype, table_scope, sums_scope, word)
    if TensorIntrin.get(name, allow_missing=True) is None:
        args = (cols, pairs, table_dtype, table_scope, sums_scope)
        TensorIntrin.register(name, _desc(*args), _impl(kind, *args, word))
    return name


_GLOBAL_KERNEL = re.compile(r'^extern "C" __global__', re.MULTILINE)


def splice_cuda_source(code: str) -> str:
    """Insert the instruction's device code before the first kernel of a source that calls it."""
    if "tvm_lut_acc<" not in code or "void tvm_lut_acc" in code:
        return code
    first = _GLOBAL_KERNEL.search(code)
    at = first.start() if first else len(code)
    return code[:at] + CUDA_SOURCE + "\n" + code[at:]


@tvm_ffi.register_global_func("tvm_callback_cuda_postproc", override=True)
def _cuda_postproc(code: str, target=None) -> str:
    return splice_cuda_source(code)
