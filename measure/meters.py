"""Energy meters: NVML's cumulative GPU energy counter and Intel RAPL for the CPU package.

Both answer one question, `power_during(run)`: the average power while `run` keeps the device busy.

NVML: on Hopper the counter advances in steps every ~100 ms (GUIDE §3). A separate process polls
it and timestamps each step; power is the energy between the first and the last step strictly
inside the busy interval divided by the time between them. A thread would be stalled by the GIL
and by blocking CUDA syncs, which is why the sampler is a process.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol


class MeterError(RuntimeError):
    """The meter cannot give a trustworthy reading (too few counter ticks, unreadable counter)."""


@dataclass
class PowerReading:
    watts: float
    seconds: float          # length of the span the power was integrated over
    result: float           # what `run` returned (per-call seconds of the batch)
    ticks: list[tuple[float, int]] = field(default_factory=list)  # NVML (time, mJ) used


class EnergyMeter(Protocol):
    name: str

    def power_during(self, run: Callable[[], float]) -> PowerReading: ...

    def device_state(self) -> dict: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- NVML
def _nvml_sampler(index: int, conn, poll_s: float) -> None:
    """Child process: record (monotonic time, cumulative mJ) at every counter change; answer queries."""
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    ticks: list[tuple[float, int]] = []
    last = -1
    conn.send("ready")
    while True:
        energy = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        now = time.monotonic()
        if energy != last:
            ticks.append((now, energy))
            last = energy
        if conn.poll():
            request = conn.recv()
            if request is None:
                return
            t0, t1 = request
            conn.send([t for t in ticks if t0 <= t[0] <= t1])
            ticks = ticks[-2:]
        time.sleep(poll_s)


def busy_ticks(ticks: list[tuple[float, int]], t0: float, t1: float,
               settle_s: float) -> list[tuple[float, int]]:
    """Ticks strictly inside the busy interval: after the first launch has settled, before sync."""
    return [t for t in ticks if t0 + settle_s < t[0] < t1]


def power_from_ticks(ticks: list[tuple[float, int]]) -> tuple[float, float]:
    """Average watts and span seconds between the first and last counter tick (mJ counter)."""
    if len(ticks) < 2:
        raise MeterError(f"only {len(ticks)} energy-counter tick(s) inside the window; lengthen it")
    (t_first, e_first), (t_last, e_last) = ticks[0], ticks[-1]
    return (e_last - e_first) / 1000.0 / (t_last - t_first), t_last - t_first


class NvmlMeter:
    """GPU board energy from `nvmlDeviceGetTotalEnergyConsumption`, sampled in a child process."""

    name = "nvml"

    def __init__(self, index: int = 0, poll_s: float = 0.0005, settle_s: float = 0.005) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)  # raises if unsupported
        self._settle_s = settle_s
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_nvml_sampler, args=(index, child, poll_s), daemon=True)
        self._proc.start()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            raise MeterError("NVML sampler process did not start")

    def ticks_between(self, t0: float, t1: float) -> list[tuple[float, int]]:
        """All counter ticks the sampler saw between two time.monotonic() instants."""
        self._conn.send((t0, t1))
        return [tuple(t) for t in self._conn.recv()]

    def power_during(self, run: Callable[[], float]) -> PowerReading:
        t0 = time.monotonic()
        result = run()
        t1 = time.monotonic()
        ticks = busy_ticks(self.ticks_between(t0, t1), t0, t1, self._settle_s)
        watts, span = power_from_ticks(ticks)
        return PowerReading(watts, span, result, ticks)

    def device_state(self) -> dict:
        """Temperature, clocks and power limit: recorded next to every energy figure."""
        import pynvml

        h = self._handle
        return {
            "temperature_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        }

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(5)


# ---------------------------------------------------------------- RAPL
DEFAULT_POWERCAP = "/sys/class/powercap"


def rapl_domains(root: str | os.PathLike = DEFAULT_POWERCAP) -> list[Path]:
    """Top-level package domains (intel-rapl:N), whose energy_uj counters we can read."""
    return sorted(p for p in Path(root).glob("intel-rapl:*")
                  if p.name.count(":") == 1 and (p / "energy_uj").is_file())


class RaplMeter:
    """CPU package energy from the RAPL counters under /sys/class/powercap (summed over packages)."""

    name = "rapl"

    def __init__(self, root: str | os.PathLike = DEFAULT_POWERCAP) -> None:
        self._domains = rapl_domains(root)
        if not self._domains:
            raise MeterError(f"no RAPL energy counters under {root}")
        try:
            self._read()
        except OSError as err:
            raise MeterError(f"RAPL counters under {root} are not readable ({err.strerror})") from err

    def _read(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self._domains]

    def _ranges(self) -> list[int]:
        return [int((d / "max_energy_range_uj").read_text()) for d in self._domains]

    def power_during(self, run: Callable[[], float]) -> PowerReading:
        before, t0 = self._read(), time.monotonic()
        result = run()
        after, t1 = self._read(), time.monotonic()
        joules = sum((a - b) % r for a, b, r in zip(after, before, self._ranges())) / 1e6
        return PowerReading(joules / (t1 - t0), t1 - t0, result)

    def device_state(self) -> dict:
        return {}

    def close(self) -> None:
        pass
