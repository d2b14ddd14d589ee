"""Measure one built candidate: correctness against the op's numpy reference, latency, energy.

Inputs are drawn once per tuning run (seeded, uniform in [-1, 1]) and reused for every candidate,
so candidates are compared on identical data. The output is poisoned with NaN before the
correctness call so that elements a kernel never writes are caught; a wrong kernel is never timed.
Correctness (measure/correctness.py: finite, relative norm, element-wise bound) is checked before
timing and again after the timing and energy runs: the output those runs left behind, and one call
on a second, fresh set of inputs (a kernel that races under load, or that only looks right on one
input, is caught there).

A failure of the harness itself (the energy meter or its sampler: `MeterError`) is raised, not
recorded: it is not the kernel's fault, and the tune must stop rather than blame candidates.

L2 policy (it changes joules per call; measure/l2_policy.py resolves the CLI's `auto`):
- `resident`: every call reads the same input buffers, which stay in L2 where they fit;
  timed with TVM's `time_evaluator` (device-side timer). This is how cuBLAS is usually benchmarked.
- `rotate`: calls cycle through copies of the inputs totalling at least ROTATE_BYTES (several
  times any current GPU's L2), so inputs come from DRAM as in a model where weights stream by.
  On a GPU the calls run back to back from compiled code (measure/l2.py's `rotated_timer`: no
  launch gaps); on the CPU from a Python loop (the compiled wrapper crashed the worker on llvm
  for a knob-space kernel), timed from the host after a sync.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import numpy as np
import tvm

from . import l2 as l2_timing
from .correctness import Expected, Verdict, judge
from .l2_policy import L2_POLICIES
from .meters import EnergyMeter, MeterError
from .protocol import (PROTOCOL_VERSION, Precision, energy_seconds, idle_power, learned_scale,
                       measure_energy)
from ..schedules import Op

SCREEN_REPEATS = 3  # latency samples that decide whether a candidate is screened out
ROTATE_BYTES = 256 << 20
MAX_ROTATE_SETS = 1024
ROTATE_VERSION = 2      # of rotated timing: 2 = gap-free compiled launches on GPUs (1: Python loop)


def rotation_sets(set_bytes: int) -> int:
    """Copies of the inputs a rotated measurement cycles through: ROTATE_BYTES in all, at least 2."""
    return min(MAX_ROTATE_SETS, max(2, math.ceil(ROTATE_BYTES / set_bytes)))


@dataclass
class MeasureConfig:
    """latency_repeats samples of at least latency_min_repeat_ms each, or only
    latency_stable_repeats where those agree within latency_stable_cv (`enough_samples`)."""

    latency_repeats: int = 10
    latency_min_repeat_ms: int = 20
    latency_stable_repeats: int = 5
    latency_stable_cv: float = 0.003
    l2: str = "resident"
    precision: Precision = field(default_factory=Precision)


@dataclass
class Measurement:
    status: str                               # ok | wrong | run_error
    error: str | None = None
    rel_error: float | None = None
    latency_s: float | None = None            # median of the timed repeats
    latency_samples: list[float] = field(default_factory=list)
    energy_j: float | None = None             # per call
    power_w: float | None = None
    meta: dict = field(default_factory=dict)


class CandidateRunner(Protocol):
    """Anything that measures a built kernel: `Runner` in-process, `IsolatedRunner` in a worker."""

    measurement: dict   # how it measures (`measurement_identity`): part of a record's identity
    slots: int          # measurements it runs at once; `run` is called from that many threads

    def run(self, artifact: str, decide: "Callable[[Measurement], bool]" = ...,
            latency_bound_s: float | None = None,
            energy_bound_j: float | None = None) -> Measurement:
        """Check and time the kernel; measure its energy if there is a meter and
        `decide(measurement so far)` says so. With `latency_bound_s`, a kernel whose first
        few latency samples exceed it is screened out: neither fully timed nor measured. With
        `energy_bound_j`, its energy windows stop once it is clearly above that (protocol step 5)."""


def enough_samples(samples: list[float], config: MeasureConfig) -> bool:
    """Whether a kernel's latency samples suffice: all `latency_repeats` of them, or the first
    `latency_stable_repeats` where their coefficient of variation is within `latency_stable_cv`.
    On the H200's 4096^3 tunes, 0.3% after 5 samples kept every median within 0.7% of the
    10-sample one and stopped early for over half the candidates (tests/test_screening.py)."""
    n = len(samples)
    if n >= config.latency_repeats:
        return True
    if n < max(config.latency_stable_repeats, 2):
        return False
    return statistics.stdev(samples) <= config.latency_stable_cv * statistics.fmean(samples)


def measurement_identity(config: MeasureConfig, meter: str | None) -> dict:
    """What makes two measurements comparable: the L2 policy, the meter and, with a meter, the
    energy protocol's version and precision (latency repeat counts only change the noise)."""
    ident: dict = {"l2": config.l2, "meter": meter}
    if config.l2 == "rotate":
        ident["rotate"] = ROTATE_VERSION
    if meter is not None:
        ident.update(protocol=PROTOCOL_VERSION, precision=asdict(config.precision))
    return ident


def last_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:500]


class Runner:
    slots = 1

    def __init__(self, op: Op, device: tvm.runtime.Device, meter: EnergyMeter | None,
                 config: MeasureConfig, seed: int = 0) -> None:
        if config.l2 not in L2_POLICIES:
            raise ValueError(f"unknown L2 policy {config.l2!r} (known: {', '.join(L2_POLICIES)})")
        self.op, self.device, self.meter, self.config = op, device, meter, config
        self.measurement = measurement_identity(config, meter.name if meter else None)
        self.expected = Expected.draw(op, np.random.default_rng(seed))
        self.fresh = Expected.draw(op, np.random.default_rng([seed, 1]))  # for the re-check
        copies = 1
        if config.l2 == "rotate":
            copies = rotation_sets(sum(x.nbytes for x in self.expected.inputs))
        self.arg_sets = [[tvm.runtime.tensor(x, device) for x in self.expected.inputs]
                         for _ in range(copies)]
        self.fresh_args = [tvm.runtime.tensor(x, device) for x in self.fresh.inputs]
        poison = np.full(op.output_shape, np.nan, dtype=op.output_dtype)
        self.poison = tvm.runtime.tensor(poison, device)   # copied on the device, not from the host
        self.out = tvm.runtime.tensor(poison, device)
        self.idle_w = idle_power(meter) if meter is not None else None
        state = meter.device_state() if meter is not None else {}
        self.max_clock_mhz = state.get("sm_clock_max_mhz")
        self.power_limit_w = state.get("power_limit_w")
        self.window_scale = 1.0   # where energy windows start (protocol step 4, learned_scale)

    def check(self, func, fresh: bool = False) -> Verdict:
        """Poison the output, call once (on the fresh inputs if `fresh`), judge the output."""
        self.out.copyfrom(self.poison)
        func(*(self.fresh_args if fresh else self.arg_sets[0]), self.out)
        self.device.sync()
        return judge(self.op, self.fresh if fresh else self.expected, self.out.numpy())

    def seconds_needed(self, call_s: float) -> float:
        """A generous bound on how long timing, energy and the re-check take for a kernel whose
        one call took `call_s` (what the worker's timeout scales with)."""
        cfg = self.config
        timing = cfg.latency_repeats * (2 * max(cfg.latency_min_repeat_ms / 1e3, call_s) + call_s)
        energy = energy_seconds(self.meter, call_s, cfg.precision, self.window_scale) \
            if self.meter else 0.0
        return 2 * (timing + energy + 3 * call_s)

    def _timers(self, module) -> tuple[Callable[[], list[float]], Callable[[int], float]]:
        """(latency samples, run_batch(n) -> seconds per call) under the L2 policy."""
        cfg = self.config
        if cfg.l2 == "resident":
            args = [*self.arg_sets[0], self.out]

            def samples(repeats: int = cfg.latency_repeats) -> list[float]:
                timer = module.time_evaluator("main", self.device, number=1, repeat=repeats,
                                              min_repeat_ms=cfg.latency_min_repeat_ms)
                return [float(s) for s in timer(*args).results]

            def run_batch(calls: int) -> float:
                return float(module.time_evaluator("main", self.device, number=calls,
                                                   repeat=1)(*args).mean)
            return samples, run_batch

        func, sets = module["main"], [[*s, self.out] for s in self.arg_sets]
        if self.device.dlpack_device_type() != tvm.cpu().dlpack_device_type():
            launcher = l2_timing.rotated_timer(module, sets, self.device)

            def gap_free_samples(repeats: int = cfg.latency_repeats) -> list[float]:
                return launcher.samples(repeats, cfg.latency_min_repeat_ms / 1e3)
            return gap_free_samples, launcher.run_batch

        def run_batch(calls: int) -> float:
            start = time.perf_counter()
            for i in range(calls):
                func(*sets[i % len(sets)])
            self.device.sync()
            return (time.perf_counter() - start) / calls

        def samples(repeats: int = cfg.latency_repeats) -> list[float]:
            calls = 1
            while run_batch(calls) * calls < cfg.latency_min_repeat_ms / 1e3 and calls < 1 << 20:
                calls *= 2
            return [run_batch(calls) for _ in range(repeats)]
        return samples, run_batch

    def run(self, artifact: str, decide: Callable[[Measurement], bool] = lambda m: True,
            expect: Callable[[float], None] = lambda seconds: None,
            latency_bound_s: float | None = None,
            energy_bound_j: float | None = None) -> Measurement:
        """`expect(seconds)` is told, after the first call, how long the rest may take."""
        phases: dict[str, float] = {}  # wall seconds of each step, to see where a tune's time goes
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now - clock
            clock = now

        try:
            module = tvm.runtime.load_module(artifact)
            lap("load_s")
            verdict = self.check(module["main"])
            lap("check_s")
        except Exception as err:  # a candidate that cannot load or run is a result, not a crash
            return Measurement("run_error", error=last_line(err))
        if not verdict.ok:
            return Measurement("wrong", error=verdict.problem, rel_error=verdict.rel_error,
                               meta={"bound_ratio": verdict.bound_ratio})
        expect(self.seconds_needed(phases["check_s"]))
        try:
            result = self._time_and_measure(module, verdict, decide, latency_bound_s,
                                            energy_bound_j, lap)
            after = judge(self.op, self.expected, self.out.numpy())  # what the timed runs left
            if after.ok:
                after = self.check(module["main"], fresh=True)
            lap("recheck_s")
        except MeterError:
            raise  # the harness failed, not the kernel
        except Exception as err:
            return Measurement("run_error", error=last_line(err))
        if not after.ok:
            return Measurement("wrong", error=f"after timing: {after.problem}",
                               rel_error=after.rel_error, meta={"bound_ratio": after.bound_ratio})
        result.meta["bound_ratio"] = max(verdict.bound_ratio, after.bound_ratio)
        result.meta["phase_s"] = phases
        return result

    def _time_and_measure(self, module, verdict: Verdict,
                          decide: Callable[[Measurement], bool],
                          latency_bound_s: float | None, energy_bound_j: float | None = None,
                          lap: Callable[[str], None] = lambda name: None) -> Measurement:
        samples, run_batch = self._timers(module)
        cfg = self.config
        latency = samples(min(SCREEN_REPEATS, cfg.latency_repeats))  # screening: a few first
        if latency_bound_s is not None and statistics.median(latency) > latency_bound_s:
            lap("latency_s")
            return Measurement("ok", rel_error=verdict.rel_error,
                               latency_s=statistics.median(latency), latency_samples=latency,
                               meta={"l2": cfg.l2, "measurement": self.measurement,
                                     "screened_out": True, "latency_bound_s": latency_bound_s})
        stable = min(cfg.latency_stable_repeats, cfg.latency_repeats)
        if len(latency) < stable:
            latency += samples(stable - len(latency))
        if not enough_samples(latency, cfg):
            latency += samples(cfg.latency_repeats - len(latency))
        lap("latency_s")
        result = Measurement("ok", rel_error=verdict.rel_error,
                             latency_s=statistics.median(latency), latency_samples=latency,
                             meta={"l2": cfg.l2, "measurement": self.measurement})
        if self.meter is not None and not decide(result):
            result.meta["energy_skipped"] = True
        elif self.meter is not None:
            energy = measure_energy(self.meter, run_batch, result.latency_s,
                                    self.config.precision, self.max_clock_mhz, self.power_limit_w,
                                    stop_above_j=energy_bound_j, start_scale=self.window_scale)
            self.window_scale = learned_scale(energy, self.window_scale)
            lap("energy_s")
            result.energy_j, result.power_w = energy.energy_j, energy.power_w
            result.meta.update(meter=self.meter.name, idle_w=self.idle_w,
                               **{k: v for k, v in asdict(energy).items()
                                  if k not in ("energy_j", "power_w")})
        return result
