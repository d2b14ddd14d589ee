"""Energy meters: NVML for NVIDIA GPUs, Intel RAPL for the CPU package.

Both answer `power_during(run)`: the device's average power while `run` keeps it busy, as a
`PowerReading` that also says what the meter could not see (no second estimate, too few ticks).

NVML gives two independent estimates, each read by its own sampler *process* (a thread would be
stalled by the GIL and by blocking CUDA syncs, GUIDE §3) that timestamps every value it sees:
- the cumulative energy counter (mJ), which on Hopper advances in steps every ~100 ms: power is
  the energy between the first and last step strictly inside the busy interval over their time;
- the instant power field (NVML_FI_DEV_POWER_INSTANT), integrated over the same interval.
The power sampler also records the SM clock, so a window run at throttled clocks can be flagged.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Mapping, Protocol

Tick = tuple[float, float]          # (time.monotonic() seconds, value)


class MeterError(RuntimeError):
    """The meter cannot give a reading at all (no counters, unreadable, frozen, sampler gone):
    a failure of the harness, never blamed on the kernel being measured."""


@dataclass
class Timeline:
    """What a meter saw during one interval: counter ticks (mJ), power samples (W), SM clocks (MHz)."""

    ticks: list[Tick] = field(default_factory=list)
    power: list[Tick] = field(default_factory=list)
    sm_clock: list[Tick] = field(default_factory=list)


@dataclass
class PowerReading:
    watts: float | None             # counter estimate; None when fewer than 2 ticks were inside
    watts_sampled: float | None     # instant-power integration; None where the meter has none
    span_s: float                   # time the counter estimate spans (0 if none)
    busy_s: float                   # length of the busy interval
    ticks: int                      # counter ticks inside the busy interval
    min_sm_clock_mhz: float | None
    result: float                   # what `run` returned (per-call seconds of the batch)


class EnergyMeter(Protocol):
    name: str
    tick_period_s: float            # how often the energy counter advances

    def power_during(self, run: Callable[[], float]) -> PowerReading: ...

    def device_state(self) -> dict: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- pure helpers (tested on traces)
def inside(samples: list[Tick], t0: float, t1: float) -> list[Tick]:
    return [s for s in samples if t0 < s[0] < t1]


def power_from_ticks(ticks: list[Tick]) -> tuple[float | None, float]:
    """Average watts and span between the first and last tick of a mJ counter (None if < 2)."""
    if len(ticks) < 2:
        return None, 0.0
    (t_first, e_first), (t_last, e_last) = ticks[0], ticks[-1]
    return (e_last - e_first) / 1000.0 / (t_last - t_first), t_last - t_first


def integrate_power(samples: list[Tick]) -> float | None:
    """Time-weighted mean of power samples (trapezoid rule); None if fewer than 2."""
    if len(samples) < 2:
        return None
    area = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))
    return area / (samples[-1][0] - samples[0][0])


def reading_from_timeline(line: Timeline, t0: float, t1: float, settle_s: float,
                          result: float) -> PowerReading:
    """A PowerReading from what the sampler saw, using only samples inside (t0 + settle, t1)."""
    start = t0 + settle_s
    ticks = inside(line.ticks, start, t1)
    watts, span = power_from_ticks(ticks)
    clocks = [c for _, c in inside(line.sm_clock, start, t1)]
    return PowerReading(watts=watts, watts_sampled=integrate_power(inside(line.power, start, t1)),
                        span_s=span, busy_s=t1 - start, ticks=len(ticks),
                        min_sm_clock_mhz=min(clocks) if clocks else None, result=result)


def median_tick_period(ticks: list[Tick]) -> float | None:
    gaps = [b[0] - a[0] for a, b in zip(ticks, ticks[1:])]
    return statistics.median(gaps) if gaps else None


# ---------------------------------------------------------------- NVML
def nvml_device(cuda_index: int, env: Mapping[str, str] = os.environ) -> int | str:
    """NVML's name for CUDA device `cuda_index`: an NVML index (int) or a UUID (str).

    NVML ignores CUDA_VISIBLE_DEVICES and numbers every GPU in PCI bus order, whereas CUDA numbers
    only the listed devices, from 0. An integer entry is taken as an NVML index, which is right
    when CUDA_DEVICE_ORDER=PCI_BUS_ID (our experiment scripts set it); any other entry (GPU-...,
    MIG-...) is a UUID. Without CUDA_VISIBLE_DEVICES the index is the same in both.
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return cuda_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if not 0 <= cuda_index < len(entries):
        raise MeterError(f"CUDA device {cuda_index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    entry = entries[cuda_index]
    return int(entry) if entry.isdigit() else entry


def nvml_handle(cuda_index: int):
    """The NVML handle of CUDA device `cuda_index` (NVML must be initialized)."""
    import pynvml

    device = nvml_device(cuda_index)
    if isinstance(device, str):
        return pynvml.nvmlDeviceGetHandleByUUID(device)
    return pynvml.nvmlDeviceGetHandleByIndex(device)


def _nvml_sampler(index: int, conn, what: str, poll_s: float, keep_s: float) -> None:
    """Child process: timestamp every energy-counter change (what="energy"), or every instant
    power and SM clock sample (what="power"); answer (t0, t1) queries with a Timeline.

    The two run in separate processes because an instant-power query takes milliseconds, which
    would blur the timestamps of the counter's ticks."""
    import pynvml

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the tune, which closes us
    pynvml.nvmlInit()
    handle = nvml_handle(index)
    line, last, loops = Timeline(), -1, 0
    conn.send("ready")
    while True:
        if what == "energy":
            energy = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            now = time.monotonic()
            if energy != last:
                line.ticks.append((now, energy))
                last = energy
        else:
            value = pynvml.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0]
            now = time.monotonic()
            if value.nvmlReturn == pynvml.NVML_SUCCESS:
                line.power.append((now, value.value.uiVal / 1000.0))
            if loops % 5 == 0:
                line.sm_clock.append((now, pynvml.nvmlDeviceGetClockInfo(handle,
                                                                          pynvml.NVML_CLOCK_SM)))
            loops += 1
        try:
            if conn.poll():
                request = conn.recv()
                if request is None:
                    return
                t0, t1 = request
                conn.send(Timeline(*[[x for x in samples if t0 <= x[0] <= t1] for samples in
                                     (line.ticks, line.power, line.sm_clock)]))
                horizon = now - keep_s
                line = Timeline(*[[x for x in samples if x[0] >= horizon] for samples in
                                  (line.ticks, line.power, line.sm_clock)])
        except (EOFError, OSError):  # the owning process is gone: so are we
            return
        time.sleep(poll_s)


_SAMPLER_MAIN = ("import sys; from multiprocessing.connection import Connection; "
                 "from energy_tuner.measure.meters import _nvml_sampler; "
                 "_nvml_sampler(int(sys.argv[1]), Connection(int(sys.argv[2])), sys.argv[3], "
                 "float(sys.argv[4]), float(sys.argv[5]))")


def _start_sampler(index: int, what: str, poll_s: float, keep_s: float
                   ) -> tuple[Connection, subprocess.Popen]:
    """A sampler child (`_nvml_sampler`) and our end of its pipe. A plain Python process that
    imports only this module: a multiprocessing "spawn" child would first import the parent's
    __main__ (torch, TVM: 10-30 s, twice per meter)."""
    conn, child = mp.Pipe()
    proc = subprocess.Popen([sys.executable, "-c", _SAMPLER_MAIN, str(index), str(child.fileno()),
                             what, str(poll_s), str(keep_s)], pass_fds=(child.fileno(),))
    child.close()
    return conn, proc


class NvmlMeter:
    """GPU board energy: NVML's cumulative counter and its instant power, sampled in a child process."""

    name = "nvml"

    def __init__(self, index: int = 0, poll_s: float = 0.0005, settle_s: float = 0.005) -> None:
        """Meter CUDA device `index` (see `nvml_device` for how it is found in NVML)."""
        import pynvml

        pynvml.nvmlInit()
        self._handle = nvml_handle(index)
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except pynvml.NVMLError as err:
            raise MeterError(f"NVML has no energy counter for GPU {index}: {err}") from err
        self._settle_s = settle_s
        self._samplers = []
        for what in ("energy", "power"):
            conn, proc = _start_sampler(index, what, poll_s, 30.0)
            try:
                ready = conn.poll(60) and conn.recv() == "ready"
            except (EOFError, OSError):  # it died on start
                ready = False
            if not ready:
                proc.kill()
                raise MeterError(f"NVML {what} sampler process did not start")
            self._samplers.append((conn, proc))
        self.tick_period_s = self._measure_tick_period()

    def _measure_tick_period(self) -> float:
        start = time.monotonic()
        time.sleep(0.35)
        return median_tick_period(self.timeline(start, time.monotonic()).ticks) or 0.1

    def timeline(self, t0: float, t1: float) -> Timeline:
        """Everything the samplers saw between two time.monotonic() instants."""
        try:
            for conn, _ in self._samplers:
                conn.send((t0, t1))
            energy, power = (conn.recv() for conn, _ in self._samplers)
        except (EOFError, OSError) as err:
            raise MeterError(f"an NVML sampler process is gone ({type(err).__name__})") from err
        return Timeline(energy.ticks, power.power, power.sm_clock)

    def power_during(self, run: Callable[[], float]) -> PowerReading:
        t0 = time.monotonic()
        result = run()
        t1 = time.monotonic()
        time.sleep(0.002)  # let the sampler catch up with the end of the window
        reading = reading_from_timeline(self.timeline(t0, t1), t0, t1, self._settle_s, result)
        if reading.watts is not None and reading.watts <= 0:
            raise MeterError(f"NVML energy counter gave {reading.watts:.3g} W over "
                             f"{reading.span_s:.3g} s")
        return reading

    def device_state(self) -> dict:
        """Temperature, clocks and power limit: recorded next to every energy figure."""
        import pynvml

        try:
            return self._device_state(pynvml)
        except pynvml.NVMLError as err:
            raise MeterError(f"NVML device query failed: {err}") from err

    def _device_state(self, pynvml) -> dict:
        h = self._handle
        return {
            "temperature_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        }

    def close(self) -> None:
        for conn, proc in self._samplers:
            if proc.poll() is None:
                try:
                    conn.send(None)
                    proc.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()


# ---------------------------------------------------------------- RAPL
DEFAULT_POWERCAP = "/sys/class/powercap"


def powercap_root() -> str:
    """Where RAPL counters are read (ENERGY_TUNER_POWERCAP overrides /sys/class/powercap)."""
    return os.environ.get("ENERGY_TUNER_POWERCAP", DEFAULT_POWERCAP)


def rapl_domains(root: str | os.PathLike = DEFAULT_POWERCAP) -> list[Path]:
    """Top-level package domains (intel-rapl:N), whose energy_uj counters we can read."""
    return sorted(p for p in Path(root).glob("intel-rapl:*")
                  if p.name.count(":") == 1 and (p / "energy_uj").is_file())


class RaplCounters:
    """The package energy counters (µJ) under a powercap root, and the joules between two reads
    of them (each counter unwrapped at its own range)."""

    def __init__(self, root: str | os.PathLike = DEFAULT_POWERCAP) -> None:
        self.root = root
        self.domains = rapl_domains(root)
        if not self.domains:
            raise MeterError(f"no RAPL energy counters under {root}")
        self.read()
        try:
            self.ranges = [int((d / "max_energy_range_uj").read_text()) for d in self.domains]
        except (OSError, ValueError) as err:
            raise MeterError(f"RAPL counters under {root} are not readable ({err})") from err

    def read(self) -> list[int]:
        try:
            return [int((d / "energy_uj").read_text()) for d in self.domains]
        except (OSError, ValueError) as err:
            raise MeterError(f"RAPL counters under {self.root} are not readable ({err})") from err

    def joules(self, before: list[int], after: list[int]) -> float:
        return sum((a - b) % r for a, b, r in zip(after, before, self.ranges)) / 1e6


class RaplMeter:
    """CPU package energy from the RAPL counters under /sys/class/powercap (summed over packages).

    The counters advance in steps (about every millisecond on Intel CPUs; measured at start as
    the median gap between steps). A reading starts and ends on a step: the counters are polled
    until the first package's changes, and the change is timed as the midpoint of the two polls around it (a
    change seen only after a longer gap, e.g. when the poller was preempted, is not used; the
    next one is, until `patience_s` has passed: then a late-seen change is used with its coarser
    time rather than none), so energy and time span exactly the same whole number of steps.
    Counters that do not advance within `patience_s`, or a non-positive power, raise MeterError. RAPL has no instant-power field
    and no clock readings: those parts of a reading are None.
    """

    name = "rapl"

    def __init__(self, root: str | os.PathLike = DEFAULT_POWERCAP, patience_s: float = 2.0) -> None:
        self._root = root
        self._counters = RaplCounters(root)
        self._read = self._counters.read
        self._patience_s = patience_s
        self._bracket_s = 1e-3
        self.tick_period_s = self._measure_tick_period()
        self._bracket_s = max(self.tick_period_s / 4, 50e-6)

    def _step(self) -> tuple[float, list[int]]:
        """The time of the first package counter's next change and all counters after it (other
        packages step on their own clocks: at most one step off at each end of a reading)."""
        old, before = self._read(), time.monotonic()
        deadline = before + self._patience_s
        while True:
            values, now = self._read(), time.monotonic()
            if values[0] != old[0]:
                if now - before <= self._bracket_s or now > deadline:  # a slow poller: coarser
                    return (before + now) / 2, values
                old = values  # seen late: its time is uncertain, wait for the next change
            elif now > deadline:
                raise MeterError(f"RAPL counters under {self._root} did not advance in "
                                 f"{self._patience_s:g} s")
            before = now

    def _measure_tick_period(self, steps: int = 8) -> float:
        times = [self._step()[0] for _ in range(steps)]
        return statistics.median(b - a for a, b in zip(times, times[1:]))

    def power_during(self, run: Callable[[], float]) -> PowerReading:
        t0, before = self._step()
        result = run()
        t1, after = self._step()
        joules = self._counters.joules(before, after)
        span = t1 - t0
        if not joules > 0:
            raise MeterError(f"RAPL counters under {self._root} did not move in {span:.3g} s")
        return PowerReading(watts=joules / span, watts_sampled=None, span_s=span, busy_s=span,
                            ticks=round(span / self.tick_period_s), min_sm_clock_mhz=None,
                            result=result)

    def device_state(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def meter_problem(kind: str, index: int = 0, powercap: str = DEFAULT_POWERCAP) -> str | None:
    """Why no energy meter can be opened for this device kind, or None if one can (cheap check)."""
    if kind == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            pynvml.nvmlDeviceGetTotalEnergyConsumption(nvml_handle(index))
        except Exception as err:  # any NVML failure means: no counter
            return f"NVML energy counter unavailable for GPU {index}: {err}"
        return None
    try:
        RaplMeter(powercap)
    except MeterError as err:
        return str(err)
    return None


def open_meter(kind: str, index: int = 0, powercap: str = DEFAULT_POWERCAP) -> EnergyMeter:
    return NvmlMeter(index) if kind == "cuda" else RaplMeter(powercap)


METER_NAMES = {"cuda": NvmlMeter.name, "llvm": RaplMeter.name}  # what open_meter opens, by kind
