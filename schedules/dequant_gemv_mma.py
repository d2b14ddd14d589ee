"""Low-bit GEMV on tensor cores: lut_mpgemm `impl=dequant` at m = 1 (fp16, CUDA sm_80+), the
multiply done by `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` (float32 accumulation).

Why: the SIMT dequant kernels (schedules/dequant_gemv_knobs.py) spend ~7 thread-instructions per
weight (decode, int-to-float, x convert, FFMA, scales) and are close to issue bound at ~3x the
bandwidth floor. Here the FMA and the x convert go to the tensor core and the decode produces
fp16 pairs directly: ~2.3 instructions per weight at W4, ~1.9 at W2 (`weight_instructions`;
0.5 less with `offset=fold`).

The kernel. A warp owns 16 weight rows (the mma's M); the GEMV's single column is the mma's N.
In the A fragment thread 4g + q holds rows g and g + 8 and four k slots; since a dot product
does not care about the order of k, thread q of a row simply owns `thread_cols` (32 or 128)
consecutive columns per step, the same for every row, and A and B agree on which column each
slot is. Per step the thread loads its 32-bit plane words (cols/32 words of each of the `bits`
planes of its two rows: one ld.global(.nc) per plane and row, 16-byte at 128 columns), and
decodes each word of 32 weights with no int-to-float convert: N_i = OR_b ((P_b >> i) &
0x11111111) << b holds q_(4p+i) in 4-bit field p (planes absent for bits < 4: W1-W4 all work),
and ((N_i >> 4p) & 0x000F000F) | 0x64006400 is the fp16 pair (1024 + q_j, 1024 + q_(j+16)),
j = 4p + i: 16 A words per row and word, which 8 mmas consume. B holds the matching x pairs
(x_j, x_(j+16)), read as 16-byte words from a copy of the CTA's x slice in shared memory that
is stored already permuted (`pair_columns`).
- `decode=scaled` (an improvement on that): fields 1 and 3 are not shifted down but masked in
  place, (N_i & 0x00F000F0) | 0x64006400 = 1024 + 16 q, and their x are staged divided by 16
  (exact but for |x| < 2^-10, which become fp16 subnormals): one shift per two pairs saved.
- `offset`: `hsub2` subtracts 1024 by one HSUB2 per pair (exact: C is the dot product itself);
  `fold` leaves it in and subtracts 1024 sum(staged x) in float32 with the zero point, saving
  0.5 instruction per weight. Its products are exact, but C is then ~1024/7.5 ~ 140x larger
  than the dot product: with round-to-nearest float32 sums (the CPU emulation) that costs
  ~5e-5 relative on the tests' data, but tensor cores truncate when they align and add (Fasi
  et al., 2021), ~1 ulp of C per addition, and a chain of 32 mmas could then reach ~1e-3 of the
  op's 2e-3. Hence `hsub2` is the bench's base and `fold` a variant the GPU tests check.
Scales in float32: every step starts its chains from zero C, so C is the dot product of one
span of columns, and acc += s (C - z sum_x(span) [- 1024 sum_staged_x(span)]) with the x sums
per span computed once per CTA into shared memory. `fragment` says what a span is:
- `quad`: all 8 B columns hold x, so an mma sums its quad's 4 threads (4 x thread_cols columns,
  which must lie in one group); every thread of the quad then holds the row's sum.
- `thread`: B column n holds x only in the registers of quad thread n // 2 (zeros elsewhere: the
  other threads read a zero line of shared memory), so thread q's C columns 2q, 2q+1 hold its own
  columns' sum (a span of thread_cols within one group, so 128 columns work with group 128),
  and the quad adds by two shuffles at the end.
`unroll` steps' loads are issued before any decode (the bytes in flight); `mma_chains`
independent accumulators per step shorten the dependent mma chains. `row_warps` x `k_warps`
warps per CTA (k_warps > 1 adds through shared memory); `ctas_per_sm`, `load`, `prefetch`,
`split_k` and `split_reduce` are the fp16 GEMV space's (schedules/gemv_knobs.py).

The CPU emulation (`emulate=True`, schedules/simt.py) runs the same decode on the same words and
emulates each mma from the fragments of all 32 threads of the warp (`mma_m16n8k16`), so the
mapping of fragments to columns is checked for real against the op's numpy reference.

`layout=fields` (the op's option, schedules/weight_layout.py: the weights packed offline so that
word e of a 32-column chunk holds pair h = F e + f as field f of both halves) skips the field
assembly: each pair is one lop3.b32 ((w >> shift) & mask) | 0x64006400 (`decode_fields`), the
fields in the fp16 mantissa masked in place (`scaled`, x staged divided by 2^bit: up to 16 at W4,
256 at W2, 512 at W1) and the rest after one shift per word. The loads, TMA boxes and rings are
the planes' (the words sit in the planes' place); W3 is refused (its fields would straddle the
halves). Static SASS counts of the main loop (nvcc 13, sm_90a; not timings), per weight and
thread, planes -> fields:
    W2 TMA bench best (k_warps 2, hsub2): all 2.52 -> 1.53, integer 1.70 -> 0.71 (LOP3 1.28 -> 0.53,
        SHF 0.31 -> 0.09), HADD2 0.50 both; with offset=fold all 2.03 -> 1.04
    W2 TMA BASE_TMA: all 2.42 -> 1.44, integer 1.63 -> 0.62
    W4 TMA bench best (k_step 512): all 2.95 -> 1.57, integer 2.08 -> 0.70 (LOP3 1.50 -> 0.50,
        SHF 0.32 -> 0.13, IMAD 0.23 -> 0.04); decode=shift all 3.20 -> 1.82
    W4 mma BASE_MMA: all 2.89 -> 1.53, integer 2.10 -> 0.76
(integer: LOP3, SHF, IMAD, IADD3, LEA, MOV, SEL, ISETP, PRMT; HMMA 1/8 per weight in all.)
Left out: ldmatrix or shared staging of the planes, cp.async/bulk copies, m > 1 (B's 8 columns could
hold 8 activation rows at no extra cost; here 7 of them are unused or zero), and the x staging
per CTA is not overlapped with the first weight loads.
"""
from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as TS
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

from .dequant_gemv_knobs import X_VECTOR, declare_dequant_args, is_dequant_gemv
from .gemv_knobs import LOADS, PREFETCH, GemvKnobs, _ld_chain, _SplitKWriter, _UniformIf
from .knobs import Config, Knob, register
from .lut_mpgemm import K_PER_BYTE
from .op import Op
from .simt import WARP, half, half2_word, mma_m16n8k16, ramp
from .weight_layout import fields_per_half

MMA_ROWS = 16                   # weight rows per warp (the mma's M)
WORD = 32                       # weights per 32-bit plane word
PAIRS = WORD // 2               # fp16 pairs (A words) per word and row
MAGIC = 0x64006400              # fp16 pair (1024, 1024)
MAGIC_VALUE = 1024.0
AND_OR = (0xF0 & 0xCC) | 0xAA     # lop3's look-up table of (a & b) | c
MANTISSA = 10                   # fp16 mantissa bits: where a field can sit under the magic number


def pair_columns(h: int) -> tuple[int, int]:
    """Columns (within a 32-column word) of the low and high fp16 of A word h: what the nibble
    decode puts there, and so the order in which x is staged for B."""
    return h, h + PAIRS


@register
class DequantGemvMma(GemvKnobs):
    """lut_mpgemm dequant at m = 1 with the products on tensor cores (see the module docstring)."""

    name = "lut-dequant-gemv-mma"
    # measured on an H200 (experiments/results/tensor_core_gemv_h200_2026-12-01): W4 2.0x faster
    # than cuBLAS fp16 and 1.5x faster than the SIMT twin, so `--space auto` picks it
    auto = True

    def __init__(self, op: Op, target: Target, sms: int | None = None) -> None:
        super().__init__(op, target, sms)
        self.bits, self.group, self.layout = op.bits, op.group_size, op.layout

    @classmethod
    def applies(cls, op: Op, target: Target) -> bool:
        return is_dequant_gemv(op, target)

    def seeds(self) -> list[Config]:
        """The least-energy W4 configs of the H200 table (tensor_core_gemv_h200_2026-12-01):
        the base config, and it with the 1024 offset folded into the zero-point term."""
        base = {"row_warps": 4, "k_warps": 1, "thread_cols": 128, "unroll": 1, "mma_chains": 2,
                "fragment": "thread", "offset": "hsub2", "decode": "scaled", "ctas_per_sm": 0,
                "load": "nc_no_allocate", "prefetch": "none", "split_k": 1, "split_reduce": "atomic"}
        return [dict(base, offset="fold"), base]

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("row_warps", (1, 2, 4, 8)),
                Knob("k_warps", (1, 2, 4)),
                Knob("thread_cols", (32, 128)),
                Knob("unroll", (1, 2)),
                Knob("mma_chains", (1, 2, 4)),
                Knob("fragment", ("quad", "thread")),
                Knob("offset", ("fold", "hsub2")),
                Knob("decode", ("shift", "scaled")),
                Knob("ctas_per_sm", (0, 1, 2, 4, 8)),
                Knob("load", tuple(v for v in LOADS if not v.startswith("bulk"))),
                Knob("prefetch", PREFETCH),
                Knob("split_k", (1, 2, 4, 8)),
                Knob("split_reduce", ("atomic", "two_pass")))

    # -- derived sizes -----------------------------------------------------------------------
    def threads(self, config: Config) -> int:
        return WARP * int(config["row_warps"]) * int(config["k_warps"])

    def rows_per_block(self, config: Config) -> int:
        return MMA_ROWS * int(config["row_warps"])

    def substep(self, config: Config) -> int:
        """Columns the CTA covers per unrolled sub-step (k_warps quads of 4 threads)."""
        return int(config["k_warps"]) * 4 * int(config["thread_cols"])

    def k_per_step(self, config: Config) -> int:
        return int(config["unroll"]) * self.substep(config)

    @staticmethod
    def span(config: Config) -> int:
        """Columns one mma chain sums (and so one x sum covers)."""
        return int(config["thread_cols"]) * (4 if config["fragment"] == "quad" else 1)

    @staticmethod
    def sums(fold: bool, scaled: bool) -> int:
        """x sums kept per word and span: of x, and of the staged x where they differ (`scaled`)
        and the magic offset multiplies them (`fold`)."""
        return 2 if fold and scaled else 1

    def shared_bytes(self, config: Config) -> int:
        """x permuted (fp16, plus a zero word), sums of x per word and per span, and the
        cross-warp partial sums."""
        k_slice, kw = self.k_slice(config), int(config["k_warps"])
        red = kw * self.rows_per_block(config) * 4 if kw > 1 else 0
        sums = self.sums(config["offset"] == "fold", config["decode"] == "scaled")
        return ((k_slice + WORD) * 2 + sums * (k_slice // WORD + k_slice // self.span(config)) * 4
                + red)

    def reject(self, config: Config) -> str | None:
        span = self.span(config)
        if self.group % span:
            return (f"a chain's span of {span} columns ({config['fragment']} x thread_cols) must "
                    f"lie inside a group of {self.group}")
        if self.k % int(config["split_k"]) == 0 and self.k_slice(config) % self.k_per_step(config):
            return (f"a step of {self.k_per_step(config)} columns (k_warps x 4 x thread_cols x "
                    f"unroll) does not divide k/split_k={self.k_slice(config)}")
        return super().reject(config)

    # -- cost-model features -----------------------------------------------------------------
    def bytes_per_thread_step(self, config: Config) -> int:
        return 2 * int(config["unroll"]) * self.bits * int(config["thread_cols"]) // K_PER_BYTE

    def weight_instructions(self, config: Config) -> float:
        """Estimated thread-instructions per weight: assembling the 4-bit fields (a lop3 per
        plane and field word and a shift where the bit moves: ~7 per plane and 32 weights), the
        pairs (`shift`: a shift and a lop3 each but the first of 4, 28 per 32 weights; `scaled`:
        a lop3 each and one shift per 2, 20), the HSUB2 (0.5, `hsub2`), the mma (1 per 8
        weights and thread), B's shared loads (4 per 2 x 32 weights); per step and row the plane
        loads and the scale (~8). `layout=fields` has no assembly: per 32 weights a lop3 per
        pair (16) and a shift per word (`scaled`: bits; `shift`: each field's but the first,
        16 - bits)."""
        cols, scaled = int(config["thread_cols"]), config["decode"] == "scaled"
        if self.layout == "fields":
            decode = PAIRS + (self.bits if scaled else PAIRS - self.bits)
        else:
            decode = 7 * self.bits + (20 if scaled else 28)
        per = decode / WORD + 1 / 8 + 4 / (2 * WORD)
        per += 0.5 if config["offset"] == "hsub2" else 0.0
        per_step_row = self.bits + 8 + 4 * int(config["mma_chains"]) / 2
        return per + per_step_row / cols

    def features(self, config: Config) -> dict[str, float]:
        weights_per_byte = K_PER_BYTE / self.bits
        return {**self.launch_features(config), "rows_per_thread": 2,
                "instructions_per_byte": self.weight_instructions(config) * weights_per_byte,
                "bulk_stages": 0, "x_shared": 1.0,
                "k_warps": int(config["k_warps"]), "mma_chains": int(config["mma_chains"]),
                "fragment_thread": float(config["fragment"] == "thread"),
                "offset_fold": float(config["offset"] == "fold"),
                "decode_scaled": float(config["decode"] == "scaled")}

    def writer(self, config: Config, emulate: bool) -> _MmaWriter:
        return _MmaWriter(self, config, emulate)


class _MmaWriter(_SplitKWriter):
    """Writes one config's kernel (see the module docstring)."""

    def __init__(self, space: DequantGemvMma, config: Config, emulate: bool) -> None:
        super().__init__(space, config, emulate)
        self.bits, self.group = space.bits, space.group
        # symmetric weights (no zero points): the zero is the op's constant midpoint, not read
        self.zero = None if space.op.params["zero_points"] else (2 ** self.bits - 1) / 2
        self.row_warps, self.k_warps = int(config["row_warps"]), int(config["k_warps"])
        self.cols, self.unroll = int(config["thread_cols"]), int(config["unroll"])
        self.words = self.cols // WORD                         # plane words per row and sub-step
        self.chains, self.span = int(config["mma_chains"]), space.span(config)
        self.per_thread = config["fragment"] == "thread"
        self.fold = config["offset"] == "fold"
        self.scaled = config["decode"] == "scaled"
        self.fields = space.layout == "fields"
        self.rows, self.substep = space.rows_per_block(config), space.substep(config)
        self.k_step = space.k_per_step(config)
        self.steps = self.k_slice // self.k_step

    def declare(self) -> None:
        declare_dequant_args(self)
        self.planes = T.decl_buffer((self.bits, self.n, self.k // WORD), "uint32",
                                    data=self.packed.data)

    # -- where a thread is -----------------------------------------------------------------------
    def lane(self, t):
        """(g, q): thread t's rows g, g + 8 of its warp's 16 and its place in the quad."""
        return (t % WARP) // 4, t % 4

    def row(self, t, r: int):
        """The r-th (0: g, 1: g + 8) row of thread t in row block self.rb."""
        g, _ = self.lane(t)
        return self.rb * self.rows + (t // WARP) % self.row_warps * MMA_ROWS + g + 8 * r

    def column(self, t, s, u: int):
        """First column (within the CTA's k slice) of thread t's columns in sub-step u of step s."""
        _, q = self.lane(t)
        return s * self.k_step + u * self.substep + (t // WARP) // self.row_warps * 4 * self.cols \
            + q * self.cols

    # -- the CTA ---------------------------------------------------------------------------------
    def block(self) -> None:
        simt = self.simt
        self.stage_x()
        self.acc = simt.reg((2,), "float32")
        self.w_reg = simt.reg((self.unroll * 2 * self.bits * self.words,), "uint32")
        self.nib = simt.reg((2 * 4,), "uint32")
        self.a_reg = simt.reg((2 * PAIRS,), "uint32")
        self.b_reg = simt.reg((PAIRS,), "uint32")
        self.c_reg = simt.reg((self.unroll * self.chains * 4,), "float32")
        self.x_col = simt.reg((1,), "int32")
        self.red = simt.shared((self.k_warps, self.rows), "float32") if self.k_warps > 1 else None
        policy = self.evict_first_policy()
        with T.serial(0, self.visits) as visit:
            self.rb = self.bx + visit * self.grid_x
            guard = _UniformIf(self.rb < self.blocks) if self.blocks % self.grid_x else None
            with simt.threads() as t:
                for r in range(2):
                    self.acc.store(t, tirx.const(0.0, "float32"), r)
            with T.serial(0, self.steps) as s:
                with simt.threads() as t:          # every load of the step before any decode
                    for i in range(self.unroll * self.chains * 4):
                        self.c_reg.store(t, tirx.const(0.0, "float32"), i)
                    for u in range(self.unroll):
                        for r in range(2):
                            self.load_planes(t, u, r, s, policy)
                for u in range(self.unroll):
                    for word in range(self.words):
                        self.multiply_word(s, u, word)
                with simt.threads() as t:
                    self.apply_scales(t, s)
            self.reduce_and_write()
            if guard is not None:
                guard.close()

    def stage_x(self) -> None:
        """The CTA's x slice into shared memory, each word's columns in A's pair order, with a
        zero word after it; the float32 sum of x per word, then per span."""
        simt, k_slice, threads = self.simt, self.k_slice, self.threads
        words, spans = k_slice // WORD, k_slice // self.span
        self.xp = simt.shared((k_slice + WORD,), "float16")
        self.xp_words = T.decl_buffer(((k_slice + WORD) // 2,), "uint32", data=self.xp.data,
                                      scope=self.xp.scope())
        self.sums = sums = DequantGemvMma.sums(self.fold, self.scaled)
        word_sum = simt.shared((sums, words), "float32")
        self.x_sum = simt.shared((sums, spans), "float32")
        base = self.ks * k_slice
        x_word = simt.reg((WORD,), "float16")
        with simt.threads() as t:
            with T.serial(0, math.ceil(words / threads)) as i:
                w = i * threads + t
                with T.If(w < words):
                    with T.Then():
                        for v in range(WORD // X_VECTOR):            # 16-byte loads
                            x_word.store(t, self.x[ramp(base + w * WORD + v * X_VECTOR, X_VECTOR)],
                                         ramp(v * X_VECTOR, X_VECTOR))
                        totals = [tirx.const(0.0, "float32")] * sums
                        for h in range(PAIRS):
                            for e, col in enumerate(pair_columns(h)):
                                value = x_word.load(t, col)
                                staged = value
                                if self.scaled and self.field_scale(h) != 1:
                                    staged = (value.astype("float32")
                                              * tirx.const(1 / self.field_scale(h), "float32")
                                              ).astype("float16")
                                T.buffer_store(self.xp, staged, [w * WORD + 2 * h + e])
                                totals[0] = totals[0] + value.astype("float32")
                                if sums == 2:
                                    totals[1] = totals[1] + staged.astype("float32")
                        for i, total in enumerate(totals):
                            T.buffer_store(word_sum, total, [i, w])
            with T.If(t < WORD):
                with T.Then():
                    T.buffer_store(self.xp, tirx.const(0.0, "float16"), [k_slice + t])
        simt.sync()
        per_span = self.span // WORD
        with simt.threads() as t:
            with T.serial(0, math.ceil(spans / threads)) as i:
                sp = i * threads + t
                with T.If(sp < spans):
                    with T.Then():
                        for i in range(sums):
                            total = word_sum[i, sp * per_span]
                            for j in range(1, per_span):
                                total = total + word_sum[i, sp * per_span + j]
                            T.buffer_store(self.x_sum, total, [i, sp])
        simt.sync()

    def load_planes(self, t, u: int, r: int, s, policy) -> None:
        """The thread's words of every plane of its row r in sub-step u: one load per plane."""
        row, n_words = self.row(t, r), self.words
        word = (self.ks * self.k_slice + self.column(t, s, u)) // WORD
        for b in range(self.bits):
            at = ((u * 2 + r) * self.bits + b) * n_words
            if self.load == "plain" or self.emulate:
                self.w_reg.store(t, self.planes[b, row, ramp(word, n_words)], ramp(at, n_words))
                continue
            dst = [self.w_reg.load(t, at + i) for i in range(n_words)]
            extra = [policy.load(t, 0)] if self.load == "nc_evict_first" else []
            chain = _ld_chain(self.load, self.prefetch, n_words)
            T.evaluate(TS.ptx[chain](*dst, self.planes.ptr_to([b, row, word]), *extra))

    def decode(self, t, u: int, word: int) -> None:
        """A words of chunk `word` of sub-step u, both rows: a_reg[r * 16 + h] is the fp16 pair
        (1024 + q_h, 1024 + q_(h+16)) (times field_scale(h)), or that less 1024 with `hsub2`."""
        if self.fields:
            self.decode_fields(t, u, word)
        else:
            self.decode_planes(t, u, word)

    def decode_planes(self, t, u: int, word: int) -> None:
        """From the bit planes: the 4-bit fields N_i assembled, then pair h = 4p + i is field p
        of N_i (low half) and p + 4 (high half)."""
        u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
        for r in range(2):
            planes = [self.w_reg.load(t, ((u * 2 + r) * self.bits + b) * self.words + word)
                      for b in range(self.bits)]
            for i in range(4):       # ((P_b >> i) & 0x11111111) << b, as one shift and a lop3
                fields = u32(0)
                for b, plane in enumerate(planes):
                    moved = plane >> u32(i - b) if i >= b else plane << u32(b - i)
                    fields = fields | (moved & u32(0x11111111 << b))
                self.nib.store(t, fields, r * 4 + i)
            for i in range(4):
                for p in range(4):
                    at = r * PAIRS + 4 * p + i
                    fields = self.nib.load(t, r * 4 + i)
                    if self.scaled:     # fields 1, 3 (5, 7) stay in bits 4-7: 1024 + 16 q
                        fields, mask = fields >> u32(8 * (p // 2)), 0x000F000F << (4 * (p % 2))
                    else:
                        fields, mask = fields >> u32(4 * p), 0x000F000F
                    pair = (fields & u32(mask)) | u32(MAGIC)
                    self.a_reg.store(t, pair, at)
                    if not self.fold:
                        self.subtract_magic(t, at)

    def decode_fields(self, t, u: int, word: int) -> None:
        """From the `fields` layout (schedules/weight_layout.py): field f of word e of the chunk,
        in both halves, is pair h = F e + f; one lop3 each (mask, or in the magic number) and
        the shifts of `field_shift`."""
        u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
        per, mask = fields_per_half(self.bits), (2 ** self.bits - 1) * 0x00010001
        for r in range(2):
            for e in range(self.bits):
                value = self.w_reg.load(t, ((u * 2 + r) * self.bits + e) * self.words + word)
                for f in range(per):
                    shift, place = self.field_shift(f)
                    fields = value >> u32(shift) if shift else value
                    at = r * PAIRS + per * e + f
                    self.magic_pair(t, fields, mask << place, at)
                    if not self.fold:
                        self.subtract_magic(t, at)

    def magic_pair(self, t, fields, mask: int, at: int) -> None:
        """a_reg[at] = (fields & mask) | MAGIC; on the GPU as one lop3.b32 (nvcc splits the C
        expression into an AND and an OR: a LOP3 takes one immediate)."""
        u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
        if self.emulate:
            self.a_reg.store(t, (fields & u32(mask)) | u32(MAGIC), at)
            return
        T.evaluate(TS.ptx["lop3.b32"](self.a_reg.load(t, at), fields, u32(mask), u32(MAGIC),
                                      tirx.const(AND_OR, "int32")))

    def field_shift(self, f: int) -> tuple[int, int]:
        """(right shift, bit left in place) of field f of a `fields` word. `scaled`: the fields
        that lie in the fp16 mantissa (bits 0-9) stay in place and the others share one shift
        (W4 fields 2-3 by 8, W2 5-7 by 10, W1 10-15 by 10); `shift`: each field moved to bit 0."""
        if not self.scaled:
            return self.bits * f, 0
        inside = MANTISSA // self.bits
        return (0, self.bits * f) if f < inside else (self.bits * inside, self.bits * (f - inside))

    def field_scale(self, h: int) -> int:
        """What A word h's values are multiplied by (their x is staged divided by it): under
        `scaled` 16 for the planes' odd fields, 2^place for the fields layout's; else 1."""
        if self.fields:
            return 2 ** self.field_shift(h % fields_per_half(self.bits))[1]
        return 16 if self.scaled and (h // 4) % 2 else 1

    def subtract_magic(self, t, at: int) -> None:
        """a_reg[at] -= (1024, 1024) as fp16 pairs (HSUB2; exact for 1024 + q)."""
        if not self.emulate:
            word = self.a_reg.load(t, at)
            T.evaluate(TS.ptx["sub.f16x2"](word, word, tirx.const(MAGIC, "uint32")))
            return
        word = self.a_reg.load(t, at)
        self.a_reg.store(t, half2_word(half(word, 0) - MAGIC_VALUE, half(word, 1) - MAGIC_VALUE), at)

    def load_x_pairs(self, t, s, u: int, word: int) -> None:
        """B words of `word`: the x pairs of the thread's columns (16-byte shared loads); with
        `fragment=thread` only quad thread g // 2 of B column g reads them, the others zeros."""
        col = self.column(t, s, u) + word * WORD
        if self.per_thread:     # the column into a register first: the loads stay 16-byte loads
            g, q = self.lane(t)
            self.x_col.store(t, tirx.if_then_else(g // 2 == q, col, self.k_slice) // 2, 0)
            col = self.x_col.load(t, 0) * 2
        for v in range(PAIRS // 4):
            self.b_reg.store(t, self.xp_words[ramp(col // 2 + 4 * v, 4)], ramp(4 * v, 4))

    early_scales = False    # scales (and zeros) loaded by `load_scales` before the decode

    def group_of(self, t, s, u: int):
        """The weight group of thread t's columns in sub-step u of step s."""
        return (self.ks * self.k_slice + self.column(t, s, u)) // self.group

    def load_scales(self, t, s) -> None:
        """The scale (and zero) of each row and sub-step of step s into registers: issued
        before the step's decode and products, so their latency hides behind them."""
        for u in range(self.unroll):
            group = self.group_of(t, s, u)
            for r in range(2):
                row = self.row(t, r)
                self.sz_reg.store(t, self.scales[row, group], 2 * (2 * u + r))
                if self.zero is None:
                    self.sz_reg.store(t, self.zeros[row, group], 2 * (2 * u + r) + 1)

    def scale_and_zero(self, t, s, u: int, r: int):
        """(scale, zero) of row r of thread t in sub-step u of step s: from the registers of
        `load_scales`, else read here; the zero is a constant for symmetric weights."""
        at, group, row = 2 * (2 * u + r), self.group_of(t, s, u), self.row(t, r)
        scale = self.sz_reg.load(t, at) if self.early_scales else self.scales[row, group]
        if self.zero is not None:
            return scale, tirx.const(self.zero, "float32")
        return scale, self.sz_reg.load(t, at + 1) if self.early_scales else self.zeros[row, group]

    def apply_scales(self, t, s) -> None:
        """acc[r] += scale (C - zero' sum_x) per sub-step, C the sum of its mma chains."""
        for u in range(self.unroll):
            col = self.column(t, s, u)
            span_col = col if self.per_thread else col - self.lane(t)[1] * self.cols
            x_sum = self.x_sum[0, span_col // self.span]
            offset = tirx.const(MAGIC_VALUE, "float32") * self.x_sum[self.sums - 1, span_col // self.span] \
                if self.fold else tirx.const(0.0, "float32")
            for r in range(2):
                c = self.c_reg.load(t, u * self.chains * 4 + 2 * r)
                for ch in range(1, self.chains):
                    c = c + self.c_reg.load(t, (u * self.chains + ch) * 4 + 2 * r)
                scale, zero = self.scale_and_zero(t, s, u, r)
                self.acc.store(t, self.acc.load(t, r) + scale * (c - (zero * x_sum + offset)), r)

    def multiply_word(self, s, u: int, word: int) -> None:
        """One plane word of sub-step u: decoded into A, its x pairs loaded into B, and its mmas
        run on their chains of C."""
        simt = self.simt
        with simt.threads() as t:
            self.decode(t, u, word)
            self.load_x_pairs(t, s, u, word)
        with simt.threads() as t:
            for m in range(PAIRS // 2):
                chain = (u * self.chains + (word * PAIRS // 2 + m) % self.chains) * 4
                mma_m16n8k16(simt, t, self.a_reg,
                             (2 * m, PAIRS + 2 * m, 2 * m + 1, PAIRS + 2 * m + 1),
                             self.b_reg, (2 * m, 2 * m + 1),
                             self.c_reg, tuple(range(chain, chain + 4)))

    def reduce_and_write(self) -> None:
        """Sum each row over its quad (`thread`) and its k warps; quad thread 0 writes."""
        simt = self.simt
        if self.per_thread:
            for r in range(2):
                simt.xor_sum(self.acc, 4, r)
        if self.red is None:
            with simt.threads() as t:
                with T.If(t % 4 == 0):
                    with T.Then():
                        for r in range(2):
                            self.write(self.row(t, r), self.acc.load(t, r))
            return
        with simt.threads() as t:
            with T.If(t % 4 == 0):
                with T.Then():
                    for r in range(2):
                        local = self.row(t, r) - self.rb * self.rows
                        T.buffer_store(self.red, self.acc.load(t, r),
                                       [(t // WARP) // self.row_warps, local])
        simt.sync()
        with simt.threads() as t:
            with T.If(t < self.rows):
                with T.Then():
                    total = self.red[0, t]
                    for kw in range(1, self.k_warps):
                        total = total + self.red[kw, t]
                    self.write(self.rb * self.rows + t, total)
        simt.sync()      # red is written again by the next row block
