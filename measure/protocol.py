"""The energy measurement protocol: precision-driven windows, quality flags and re-measurement.

One measurement of a kernel:
1. Window length: long enough that the energy counter ticks at least `min_ticks` times inside
   it (NVML on Hopper ticks every ~100 ms; RAPL every ~1 ms), and at least `min_calls` calls.
   A warm-up batch of `warmup_s` first brings power and clocks to their steady state (on an
   H200 a window started from idle read ~4% low).
2. Windows: the kernel runs back to back (`run_batch(n)`: n calls, no host sync in between) for
   at least `min_windows` windows, then more until the relative standard error of the mean power
   is within `target_rse` or `max_windows` is reached.
3. Energy per call = mean counter power of the windows x per-call time of those same sustained
   batches (the kernel's time while running back to back, which is what the power belongs to).
4. Quality flags (see `quality_flags`); a measurement with a flag in REMEASURE_FLAGS is repeated
   once with windows twice as long, and the better attempt (fewer flags, then lower spread) is
   kept, with the flags of every attempt. `power_capped` (clocks held down by the power limit) is
   the kernel's steady state, not a measurement fault, so it is reported but not re-measured.
   A tuning runner starts its later measurements at the window length of a re-measurement that
   came out clean (`learned_scale`): at the H200's power limit, 0.4 s windows spread by > 3%
   and nearly every kernel of a 4096^3 tune was measured twice, the first attempt wasted.
5. Early stop (`stop_above_j`, a tune's best energy so far with a margin): once `min_windows`
   windows put the energy per call more than EARLY_STOP_SE standard errors of the mean above it,
   the kernel cannot be the pick, so no more windows and no re-measurement are spent on it; the
   figure is the mean of the windows taken, flagged `stopped_early`. A flagged attempt whose
   energy per call is above `stop_above_j` (not by 3 standard errors: the bound already holds a
   margin) is not re-measured either, flagged `above_bound`: only a pick needs the second look.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .meters import EnergyMeter, PowerReading

# Bump when a change to this protocol (or to a meter's reading) changes what its figures mean:
# records measured under another version are not mixed with new ones (compiler/identity.py).
PROTOCOL_VERSION = 2


@dataclass
class Precision:
    target_rse: float = 0.005        # stop adding windows at this relative std. error of power
    min_windows: int = 2
    max_windows: int = 6
    min_ticks: int = 3               # counter ticks inside each window
    min_calls: int = 10
    max_disagreement: float = 0.05   # counter vs. instant-power estimate
    min_clock_fraction: float = 0.85 # of the SM's maximum clock
    max_spread: float = 0.03         # coefficient of variation of power across windows
    remeasure: int = 1               # extra attempts for a flagged measurement
    warmup_s: float = 0.2
    capped_fraction: float = 0.95    # power at this fraction of the limit counts as capped


REMEASURE_FLAGS = {"few_ticks", "disagree", "throttled", "spread"}
EARLY_STOP_SE = 3.0     # standard errors (at least MIN_SE_FRACTION of the mean) above the bound
MIN_SE_FRACTION = 0.005


@dataclass
class EnergyResult:
    energy_j: float | None           # per call; None if no window gave a counter estimate
    power_w: float | None            # mean counter power over windows
    power_sampled_w: float | None    # mean instant-power integration (second estimate)
    power_cv: float | None           # across windows
    sustained_latency_s: float
    flags: list[str]
    attempt_flags: list[list[str]]   # flags of every attempt, first to last
    attempts: int
    gpu_seconds: float               # device time spent on this measurement, all attempts
    window_scale: float = 1.0        # window length of the kept attempt, x `window_seconds`
    windows: list[dict] = field(default_factory=list)


def window_seconds(meter: EnergyMeter, latency_s: float, precision: Precision,
                   scale: float = 1.0) -> float:
    """Long enough for `min_ticks` counter ticks inside (plus one for alignment) and `min_calls`."""
    return scale * max((precision.min_ticks + 1) * meter.tick_period_s,
                       precision.min_calls * latency_s)


def energy_seconds(meter: EnergyMeter, latency_s: float, precision: Precision,
                   start_scale: float = 1.0) -> float:
    """The longest `measure_energy` can take: warm-up, then every attempt at its most windows."""
    total = precision.warmup_s + latency_s
    for attempt in range(1 + precision.remeasure):
        window = window_seconds(meter, latency_s, precision, scale=start_scale * 2.0 ** attempt)
        total += precision.max_windows * (window + latency_s + 4 * meter.tick_period_s + 0.05)
    return total


def relative_spread(values: list[float]) -> float:
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if len(values) > 1 and mean > 0 else 0.0


def quality_flags(readings: list[PowerReading], precision: Precision,
                  max_clock_mhz: float | None, power_limit_w: float | None = None) -> list[str]:
    """What makes a measurement doubtful, as short names:
    few_ticks: a window held fewer than `min_ticks` counter ticks (zero or one means no estimate);
    disagree: counter and instant-power estimates differ by more than `max_disagreement`;
    throttled: the SM clock fell below `min_clock_fraction` of its maximum while power was under
      `capped_fraction` of the limit (thermal or other throttling: the reading may not repeat);
    power_capped: the same low clock, at the power limit (the kernel's steady state);
    spread: power varied across windows by more than `max_spread` (coefficient of variation).
    """
    flags = []
    if any(r.ticks < precision.min_ticks for r in readings):
        flags.append("few_ticks")
    pairs = [(r.watts, r.watts_sampled) for r in readings
             if r.watts is not None and r.watts_sampled is not None]
    if pairs:
        counter = statistics.fmean(p[0] for p in pairs)
        sampled = statistics.fmean(p[1] for p in pairs)
        if abs(counter - sampled) > precision.max_disagreement * counter:
            flags.append("disagree")
    clocks = [r.min_sm_clock_mhz for r in readings if r.min_sm_clock_mhz is not None]
    watts = [r.watts for r in readings if r.watts is not None]
    if max_clock_mhz and clocks and min(clocks) < precision.min_clock_fraction * max_clock_mhz:
        capped = power_limit_w and watts and \
            max(watts) >= precision.capped_fraction * power_limit_w
        flags.append("power_capped" if capped else "throttled")
    if len(watts) > 1 and relative_spread(watts) > precision.max_spread:
        flags.append("spread")
    return flags


def clearly_above(readings: list[PowerReading], bound_j: float) -> bool:
    """Whether the windows put the energy per call more than EARLY_STOP_SE standard errors of
    the mean power (at least MIN_SE_FRACTION of it) above bound_j."""
    watts = [r.watts for r in readings if r.watts is not None]
    if len(watts) < 2:
        return False
    mean = statistics.fmean(watts)
    se = max(statistics.stdev(watts) / math.sqrt(len(watts)), MIN_SE_FRACTION * mean)
    return (mean - EARLY_STOP_SE * se) * statistics.fmean(r.result for r in readings) > bound_j


def _energy_per_call(readings: list[PowerReading]) -> float | None:
    """Mean counter power x mean per-call time of the windows (None without a counter estimate)."""
    watts = [r.watts for r in readings if r.watts is not None]
    return statistics.fmean(watts) * statistics.fmean(r.result for r in readings) if watts else None


def _attempt(meter: EnergyMeter, run_batch: Callable[[int], float], calls: int,
             warmup_calls: int, precision: Precision, stop_above_j: float | None
             ) -> tuple[list[PowerReading], list[dict], float, bool]:
    """Windows until the precision target, max_windows, or (with stop_above_j) clearly above it;
    also says whether it stopped for the last reason."""
    readings: list[PowerReading] = []
    states: list[dict] = []
    start = time.monotonic()
    if warmup_calls:
        run_batch(warmup_calls)
    while len(readings) < precision.max_windows:
        readings.append(meter.power_during(lambda: run_batch(calls)))
        states.append(meter.device_state())
        watts = [r.watts for r in readings if r.watts is not None]
        if len(readings) < precision.min_windows or len(watts) < 2:
            continue
        if stop_above_j is not None and clearly_above(readings, stop_above_j):
            return readings, states, time.monotonic() - start, True
        if relative_spread(watts) / math.sqrt(len(watts)) <= precision.target_rse:
            break
    return readings, states, time.monotonic() - start, False


def _summarize(readings: list[PowerReading], states: list[dict], flags: list[str],
               all_flags: list[list[str]], gpu_seconds: float, calls: int,
               scale: float) -> EnergyResult:
    watts = [r.watts for r in readings if r.watts is not None]
    sampled = [r.watts_sampled for r in readings if r.watts_sampled is not None]
    per_call = statistics.fmean(r.result for r in readings)
    power = statistics.fmean(watts) if watts else None
    return EnergyResult(
        energy_j=None if power is None else power * per_call,
        power_w=power,
        power_sampled_w=statistics.fmean(sampled) if sampled else None,
        power_cv=relative_spread(watts) if watts else None,
        sustained_latency_s=per_call, flags=flags, attempt_flags=all_flags,
        attempts=len(all_flags),
        gpu_seconds=gpu_seconds, window_scale=scale,
        windows=[{"calls": calls, **asdict(r), **state} for r, state in zip(readings, states)])


def measure_energy(meter: EnergyMeter, run_batch: Callable[[int], float], latency_s: float,
                   precision: Precision, max_clock_mhz: float | None = None,
                   power_limit_w: float | None = None,
                   stop_above_j: float | None = None, start_scale: float = 1.0) -> EnergyResult:
    """`run_batch(n)` runs n calls back to back, synchronizes, and returns seconds per call;
    `stop_above_j`: stop early once the energy per call is clearly above it (step 5);
    `start_scale`: the first attempt's window length, x `window_seconds` (step 4)."""
    attempts: list[tuple[list[PowerReading], list[dict], int]] = []
    all_flags: list[list[str]] = []
    spent = 0.0
    warmup_calls = math.ceil(precision.warmup_s / latency_s) if precision.warmup_s > 0 else 0
    for attempt in range(1 + precision.remeasure):
        seconds = window_seconds(meter, latency_s, precision, scale=start_scale * 2.0 ** attempt)
        calls = max(1, math.ceil(seconds / latency_s))
        readings, states, took, stopped = _attempt(meter, run_batch, calls, warmup_calls,
                                                   precision, stop_above_j)
        spent += took
        attempts.append((readings, states, calls))
        all_flags.append(quality_flags(readings, precision, max_clock_mhz, power_limit_w)
                         + (["stopped_early"] if stopped else []))
        if stopped or not set(all_flags[-1]) & REMEASURE_FLAGS:
            break
        energy_j = _energy_per_call(readings)   # None: no estimate, so re-measure
        if stop_above_j is not None and energy_j is not None and energy_j > stop_above_j:
            all_flags[-1].append("above_bound")   # flagged, but no pick: not worth re-measuring
            break

    def badness(i: int) -> tuple[int, float]:
        watts = [r.watts for r in attempts[i][0] if r.watts is not None]
        return len(all_flags[i]), relative_spread(watts) if watts else math.inf

    keep = min(range(len(attempts)), key=badness)
    readings, states, calls = attempts[keep]
    return _summarize(readings, states, all_flags[keep], all_flags, spent, calls,
                      start_scale * 2.0 ** keep)


def learned_scale(result: EnergyResult, current: float) -> float:
    """The window scale a runner's next measurement starts at: that of a re-measurement which
    came out free of the flags that asked for it (the device needs windows that long), else
    `current`."""
    if result.attempts > 1 and not set(result.flags) & REMEASURE_FLAGS:
        return max(current, result.window_scale)
    return current


def idle_power(meter: EnergyMeter, seconds: float = 1.0) -> float | None:
    """Board power with nothing running, measured once per tuning run."""
    return meter.power_during(lambda: time.sleep(seconds) or 0.0).watts
