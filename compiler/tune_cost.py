"""What the tune itself cost: the device's energy over the whole run, and when it pays back.

The meter is the device's cumulative energy counter, read at the start and the end of the run
(idle time, builds and searches included): NVML's total-energy counter on a GPU, the RAPL package
counters on the CPU (read after every candidate too, so that a counter wrap is not missed).
Payback: the number of calls after which the chosen kernel's energy saving per call against the
latency-best kernel equals the tune's energy. None where either energy was not measured or the
chosen kernel saves nothing (e.g. it is the latency-best one).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

from .database import Record, TuningDatabase
from ..measure.meters import RaplCounters, nvml_handle


@dataclass
class TuneCost:
    meter: str | None             # nvml | rapl; None: not measured
    seconds: float
    energy_j: float | None        # device energy over the run
    why_not: str | None = None    # why there is no reading
    saving_j_per_call: float | None = None  # chosen vs latency-best kernel
    payback_calls: float | None = None

    def line(self) -> str:
        if self.energy_j is None:
            return (f"tune cost: {self.seconds:.0f} s; device energy not measured"
                    + (f" ({self.why_not})" if self.why_not else ""))
        text = (f"tune cost: {self.energy_j / 1e3:.3g} kJ of device energy over "
                f"{self.seconds:.0f} s ({self.meter}, idle included)")
        if self.payback_calls is not None:
            return text + (f"; the chosen kernel saves {self.saving_j_per_call * 1e3:.3g} mJ per "
                           f"call against the latency-best and pays the tune back after "
                           f"{self.payback_calls:.3g} calls")
        return text + "; no payback against the latency-best kernel (no saving measured)"


def _nvml_counter(index: int) -> Callable[[], float]:
    import pynvml

    pynvml.nvmlInit()
    handle = nvml_handle(index)
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3  # mJ -> J


class _RaplTotal:
    """Joules of the package counters since construction, unwrapped across reads."""

    def __init__(self, root: str) -> None:
        self.counters = RaplCounters(root)
        self.last, self.total_j = self.counters.read(), 0.0

    def __call__(self) -> float:
        now = self.counters.read()
        self.total_j += self.counters.joules(self.last, now)
        self.last = now
        return self.total_j


class TuneEnergy:
    """start() before the tune, sample() now and then (cheap), stop() after it."""

    def __init__(self, kind: str, index: int, powercap: str) -> None:
        self.meter, self.why_not, self.read = None, None, None
        try:
            self.read = _nvml_counter(index) if kind == "cuda" else _RaplTotal(powercap)
            self.meter = "nvml" if kind == "cuda" else "rapl"
        except Exception as err:  # no counter: the cost is "not measured", never guessed
            self.why_not = str(err).splitlines()[0] if str(err) else type(err).__name__
        self.t0 = time.monotonic()
        self.e0 = self.read() if self.read else None

    def sample(self, *_) -> None:
        if isinstance(self.read, _RaplTotal):
            self.read()

    def stop(self, chosen: Record | None, fastest: Record | None) -> TuneCost:
        seconds = time.monotonic() - self.t0
        if self.read is None:
            return TuneCost(None, seconds, None, self.why_not)
        cost = TuneCost(self.meter, seconds, self.read() - self.e0)
        if chosen and fastest and chosen.energy_j is not None and fastest.energy_j is not None:
            cost.saving_j_per_call = fastest.energy_j - chosen.energy_j
            if cost.saving_j_per_call > 0:
                cost.payback_calls = cost.energy_j / cost.saving_j_per_call
        return cost


def store(db: TuningDatabase, record: Record, cost: TuneCost) -> None:
    """Keep the run's cost in the meta of the last record it measured (no schema change)."""
    record.meta = {**(record.meta or {}), "tune_cost": asdict(cost)}
    with db.conn:
        db.conn.execute("UPDATE candidates SET meta = ? WHERE id = ?",
                        (json.dumps(record.meta), record.id))
