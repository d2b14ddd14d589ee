"""What the GEMV knob-space tests share (fp16 gemv and lut_mpgemm's dequant twin, SIMT and tensor
core): the sm_90a target, kernels run against numpy (emulated on llvm or on a GPU), valid sampled
configs, mutations, feature rows, CUDA source and nvcc."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.gemv_knobs import GemvKnobs
from energy_tuner.schedules.knobs import Config, knob_spaces

SM90 = Target({"kind": "cuda", "arch": "sm_90a", "max_threads_per_block": 1024,
               "max_shared_memory_per_block": 232448, "thread_warp_size": 32})


# the knobs of gemv-mma (and of linear-mma, which shares them) for a plain, one-CTA-per-block kernel
MMA_BASE = {"warps": 4, "warps_k": 1, "unroll": 2, "ctas_per_sm": 0, "load": "plain",
            "prefetch": "none", "x_stage": "global", "split_k": 1, "split_reduce": "atomic"}


def has_gpu() -> bool:
    """Whether TVM sees a CUDA GPU here."""
    try:
        return tvm.cuda(0).exist
    except Exception:
        return False


def check_on_gpu(s: GemvKnobs, cfg: Config, inputs: list[np.ndarray]) -> None:
    """Assert that s's kernel for cfg, compiled for s.target, is within the op's tolerance on
    GPU 0."""
    ex = tvm.compile(s.module(cfg), target=s.target, **s.compile_options)
    assert run_error(ex, s, inputs, tvm.cuda(0)) <= s.op.tolerance


def check_fp16_gemv_only(cls: type[GemvKnobs]) -> None:
    """Assert that knob_spaces lists cls for an fp16 gemv on sm_90a, and that cls applies neither
    on llvm nor to a float32 gemv."""
    gemv16 = make_op("gemv", "4096,4096", "float16")
    assert cls in [type(s) for s in knob_spaces(gemv16, SM90)]
    assert not cls.applies(gemv16, Target("llvm"))
    assert not cls.applies(make_op("gemv", "4096,4096", "float32"), SM90)


def op_inputs(s: GemvKnobs, seed: int = 0) -> list[np.ndarray]:
    """The op's own random inputs, seeded."""
    return s.op.inputs(np.random.default_rng(seed))


def gemv_inputs(s: GemvKnobs, seed: int = 0) -> list[np.ndarray]:
    """Standard-normal fp16 W (n x k) and x (k) of a gemv space, seeded."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((s.n, s.k)).astype("float16")
    return [w, rng.standard_normal(s.k).astype("float16")]


def run_error(ex: tvm.runtime.Executable, s: GemvKnobs, inputs: list[np.ndarray],
              dev: tvm.runtime.Device | None = None) -> float:
    """Relative error of ex["main"](*inputs, out) on dev (the CPU by default) against the op's
    numpy reference; out starts as NaN, and any NaN left in it gives inf."""
    dev = dev or tvm.cpu()
    out = tvm.runtime.tensor(np.full(s.op.output_shape, np.nan, s.op.output_dtype), dev)
    ex["main"](*[tvm.runtime.tensor(a, dev) for a in inputs], out)
    ref, got = s.op.reference(inputs), out.numpy().astype("float32")
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) if np.isfinite(got).all() else np.inf


def run_emulated(s: GemvKnobs, cfg: Config, inputs: list[np.ndarray]) -> float:
    """Relative error of the CPU emulation (llvm) of s's kernel for cfg on inputs."""
    ex = tvm.compile(s.module(cfg, emulate=True), target="llvm", **s.compile_options)
    return run_error(ex, s, inputs)


def check_emulation(s: GemvKnobs, cfg: Config, inputs: list[np.ndarray]) -> None:
    """Assert that s accepts cfg and that its emulated kernel is within the op's tolerance."""
    reason = s.reject(cfg)
    assert reason is None, reason
    error = run_emulated(s, cfg, inputs)
    assert error <= s.op.tolerance, f"relative error {error} > {s.op.tolerance} for {cfg}"


def check_feature_rows(s: GemvKnobs) -> None:
    """Assert that the valid configs among 200 seeded samples (of more than one load kind) give
    one finite cost-model row each: the model reads every config's features by the first row's
    names."""
    from energy_tuner.costmodel.features import knob_features

    rng = np.random.default_rng(0)
    configs = [c for c in (s.sample(rng) for _ in range(200)) if s.reject(c) is None]
    assert len({c["load"] for c in configs}) > 1
    rows = knob_features(s.op, [s.features(c) for c in configs])
    assert rows.shape[0] == len(configs) and np.isfinite(rows).all()


def valid_samples(s: GemvKnobs, rng: np.random.Generator) -> Iterator[Config]:
    """The configs sampled from s that it accepts, in sampling order; endless and lazy (nothing
    is drawn beyond the config last asked for)."""
    while True:
        cfg = s.sample(rng)
        if s.reject(cfg) is None:
            yield cfg


def mutated_knobs(s: GemvKnobs, base: Config, rng: np.random.Generator, draws: int) -> list[set[str]]:
    """For each of `draws` mutations of base, the names of the knobs it changed."""
    children = (s.mutate(base, rng) for _ in range(draws))
    return [{name for name in base if child[name] != base[name]} for child in children]


def cuda_source(s: GemvKnobs, cfg: Config) -> str:
    """The CUDA source of s's kernel for cfg built for SM90; skips the test where TVM compiled it
    to a binary instead (a driver is present)."""
    ex = tvm.compile(s.module(cfg), target=SM90, **s.compile_options)
    sources = [m.inspect_source() for m in ex.mod.imports if m.kind == "cuda"]
    if not sources or "__global__" not in sources[0]:
        pytest.skip("TVM compiled the CUDA module to a binary here (a driver is present)")
    return sources[0]


def nvcc(source: str, tmp_path: Path, kind: str, *flags: str) -> str:
    """Compile CUDA source for sm_90a to tmp_path/k.<kind> (kind: cubin or ptx) and return nvcc's
    stderr (where `-Xptxas -v` reports); skips the test where nvcc is not installed."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    cu = tmp_path / "k.cu"
    cu.write_text(source)
    return subprocess.run(["nvcc", "-gencode=arch=compute_90a,code=sm_90a", f"-{kind}", *flags, "-o",
                           str(tmp_path / f"k.{kind}"), str(cu)],
                          check=True, capture_output=True, text=True).stderr


def ptx(source: str, tmp_path: Path) -> str:
    """The PTX nvcc generates for sm_90a from CUDA source (skips where nvcc is not installed)."""
    nvcc(source, tmp_path, "ptx")
    return (tmp_path / "k.ptx").read_text()
