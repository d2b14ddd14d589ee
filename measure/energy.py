"""Energy per call from several back-to-back busy windows on one meter.

Each window launches the kernel `n` times with no host sync in between (so the device never idles),
where `n` makes the window last about `window_s`. Energy per call = average power of the windows x
the per-call time of those same sustained batches (GUIDE §3).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

from measure.meters import EnergyMeter


@dataclass
class EnergyResult:
    energy_j: float                # per call
    power_w: float                 # mean over windows
    power_cv: float                # coefficient of variation of power across windows
    sustained_latency_s: float     # per-call time while running back to back
    windows: list[dict] = field(default_factory=list)


def measure_energy(meter: EnergyMeter, run_batch: Callable[[int], float], latency_s: float,
                   window_s: float, windows: int) -> EnergyResult:
    """`run_batch(n)` runs n calls back to back, synchronizes, and returns seconds per call."""
    calls = max(1, math.ceil(window_s / latency_s))
    readings = [meter.power_during(lambda: run_batch(calls)) for _ in range(windows)]
    powers = [r.watts for r in readings]
    per_call = statistics.fmean(r.result for r in readings)
    power = statistics.fmean(powers)
    cv = statistics.pstdev(powers) / power if len(powers) > 1 and power > 0 else 0.0
    return EnergyResult(
        energy_j=power * per_call,
        power_w=power,
        power_cv=cv,
        sustained_latency_s=per_call,
        windows=[{"calls": calls, "watts": r.watts, "span_s": r.seconds, "per_call_s": r.result,
                  "ticks": len(r.ticks)} for r in readings],
    )
