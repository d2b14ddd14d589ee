"""Measure one built candidate: correctness against the op's numpy reference, latency, energy.

Inputs are drawn once per tuning run (seeded) and reused for every candidate, so candidates are
compared on identical data. The output buffer is poisoned with NaN before each correctness run so
that elements a kernel never writes are caught.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np
import tvm

from measure.energy import measure_energy
from measure.meters import EnergyMeter, MeterError
from schedules import Op


@dataclass
class MeasureConfig:
    latency_repeats: int = 10
    latency_min_repeat_ms: int = 20
    energy_window_s: float = 0.5
    energy_windows: int = 3


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


def _last_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:500]


class Runner:
    def __init__(self, op: Op, device: tvm.runtime.Device, meter: EnergyMeter | None,
                 config: MeasureConfig, seed: int = 0) -> None:
        self.op, self.device, self.meter, self.config = op, device, meter, config
        host_inputs = op.inputs(np.random.default_rng(seed))
        self.expected = op.reference(host_inputs)
        self.args = [tvm.runtime.tensor(x, device) for x in host_inputs]
        self.poison = np.full(op.output_shape, np.nan, dtype=op.output_dtype)
        self.out = tvm.runtime.tensor(self.poison, device)

    def check(self, func) -> float:
        """Relative Frobenius error of one call's output (inf if any element is not finite)."""
        self.out.copyfrom(self.poison)
        func(*self.args, self.out)
        self.device.sync()
        got = self.out.numpy()
        if not np.all(np.isfinite(got)):
            return float("inf")
        return float(np.linalg.norm(got - self.expected) / max(np.linalg.norm(self.expected), 1e-30))

    def run(self, artifact: str) -> Measurement:
        try:
            module = tvm.runtime.load_module(artifact)
            rel_error = self.check(module["main"])
        except Exception as err:  # a candidate that cannot load or run is a result, not a crash
            return Measurement("run_error", error=_last_line(err))
        if not rel_error <= self.op.tolerance:
            return Measurement("wrong", error=f"relative error {rel_error:.3g} > {self.op.tolerance:g}",
                               rel_error=rel_error)
        cfg = self.config
        timer = module.time_evaluator("main", self.device, number=1, repeat=cfg.latency_repeats,
                                      min_repeat_ms=cfg.latency_min_repeat_ms)
        samples = [float(s) for s in timer(*self.args, self.out).results]
        result = Measurement("ok", rel_error=rel_error, latency_s=statistics.median(samples),
                             latency_samples=samples)
        if self.meter is not None:
            def run_batch(calls: int) -> float:
                batch = module.time_evaluator("main", self.device, number=calls, repeat=1)
                return float(batch(*self.args, self.out).mean)

            try:
                energy = measure_energy(self.meter, run_batch, result.latency_s,
                                        cfg.energy_window_s, cfg.energy_windows)
            except MeterError as err:
                result.meta["energy_error"] = str(err)
            else:
                result.energy_j, result.power_w = energy.energy_j, energy.power_w
                result.meta.update(power_cv=energy.power_cv,
                                   sustained_latency_s=energy.sustained_latency_s,
                                   windows=energy.windows, meter=self.meter.name,
                                   **self.meter.device_state())
        return result
