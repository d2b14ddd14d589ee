"""The energy protocol replayed on a meter trace recorded on an H200 (tests/data/README.md).

The replay meter is the hardware boundary only: it returns what the NVML samplers recorded
during the given span of the trace; window alignment, estimates, flags, re-measurement and
window sizing are the real code.
"""
import gzip
import json

import pytest

from energy_tuner.measure.meters import Timeline, median_tick_period, reading_from_timeline
from energy_tuner.measure.protocol import Precision, learned_scale, measure_energy, quality_flags
from tests.conftest import DATA


class ReplayMeter:
    name = "replay"

    def __init__(self, power_scale: float = 1.0, clock_scale: float = 1.0) -> None:
        with gzip.open(DATA / "h200_nvml_trace_cublas4096.json.gz", "rt") as f:
            trace = json.load(f)
        self.busy_start, self.busy_end = trace["busy_start"], trace["busy_end"]
        self.per_call = trace["per_call_s"]
        self.line = Timeline([tuple(t) for t in trace["ticks"]],
                             [(t, w * power_scale) for t, w in trace["power"]],
                             [(t, c * clock_scale) for t, c in trace["sm_clock"]])
        self.state = trace["device_state"]
        self.tick_period_s = median_tick_period(self.line.ticks)
        self.clock = self.busy_start

    def run_batch(self, calls: int) -> float:
        """Advance through the recorded busy interval; a batch that would run past its end
        replays it from the start (the kernel's steady state repeats)."""
        span = calls * self.per_call
        assert span < self.busy_end - self.busy_start - 0.1, "batch longer than the recording"
        if self.clock + span > self.busy_end:
            self.clock = self.busy_start + 0.05
        self.start = self.clock
        self.clock += span
        return self.per_call

    def power_during(self, run):
        result = run()
        return reading_from_timeline(self.line, self.start, self.clock, 0.005, result)

    def device_state(self) -> dict:
        return dict(self.state)


def measure(meter, precision, **kw):
    return measure_energy(meter, meter.run_batch, meter.per_call, precision,
                          meter.state["sm_clock_max_mhz"], meter.state["power_limit_w"], **kw)


def test_trace_has_a_100ms_counter():
    assert ReplayMeter().tick_period_s == pytest.approx(0.1, abs=0.005)


def test_default_protocol_on_the_recorded_trace():
    meter = ReplayMeter()
    result = measure(meter, Precision())
    assert all(w["ticks"] >= Precision().min_ticks for w in result.windows)
    assert 2 <= len(result.windows) <= Precision().max_windows
    # cuBLAS fp16 4096^3 on the H200 drew ~690-700 W at the 700 W limit (fidelity.json)
    assert 650 < result.power_w < 720
    assert abs(result.power_w - result.power_sampled_w) < 0.05 * result.power_w
    assert result.energy_j == pytest.approx(result.power_w * meter.per_call)
    assert "disagree" not in result.flags and "few_ticks" not in result.flags


def test_window_length_follows_the_tick_period():
    meter = ReplayMeter()
    precision = Precision(min_ticks=5, min_windows=2, max_windows=2, remeasure=0, warmup_s=0)
    result = measure(meter, precision)
    for w in result.windows:
        assert w["busy_s"] >= 5 * meter.tick_period_s and w["ticks"] >= 5


def test_too_few_ticks_are_flagged_and_remeasured_with_longer_windows():
    meter = ReplayMeter()
    meter.tick_period_s = 0.03     # a meter that understates its tick period: windows too short
    result = measure(meter, Precision(warmup_s=0, min_windows=2, max_windows=2, min_calls=1))
    assert "few_ticks" in result.attempt_flags[0] and result.attempts == 2
    assert any(w["ticks"] < 3 for w in result.windows) == ("few_ticks" in result.flags)


def test_disagreeing_estimates_are_flagged_and_remeasured():
    meter = ReplayMeter(power_scale=1.2)     # instant power 20% above the counter
    result = measure(meter, Precision(max_windows=2))
    assert result.attempt_flags[0][:1] == ["disagree"] and result.attempts == 2
    assert "disagree" in result.flags


def test_low_clocks_at_the_power_limit_are_capped_not_throttled():
    only_clocks = Precision(max_windows=2, max_spread=1.0, max_disagreement=1.0)
    capped = measure(ReplayMeter(clock_scale=0.5), only_clocks)
    assert capped.flags == ["power_capped"] and capped.attempts == 1   # not re-measured
    meter = ReplayMeter(clock_scale=0.5)
    meter.state["power_limit_w"] = 2000.0                              # far from the limit
    throttled = measure(meter, only_clocks)
    assert throttled.attempt_flags == [["throttled"], ["throttled"]]


def test_precision_target_sets_the_number_of_windows():
    loose = measure(ReplayMeter(), Precision(target_rse=0.5, warmup_s=0, max_spread=1.0))
    assert len(loose.windows) == Precision().min_windows
    strict = measure(ReplayMeter(), Precision(target_rse=1e-6, warmup_s=0, max_spread=1.0,
                                              max_windows=5))
    assert len(strict.windows) == 5


def test_spread_flag():
    meter = ReplayMeter()
    readings = [meter.power_during(lambda: meter.run_batch(2000)) for _ in range(3)]
    assert "spread" in quality_flags(readings, Precision(max_spread=0.0), None)
    assert "spread" not in quality_flags(readings, Precision(max_spread=0.5), None)


def test_a_clearly_worse_kernel_stops_after_min_windows_and_is_not_remeasured():
    strict = Precision(target_rse=1e-6, max_windows=5, max_spread=0.0)  # never precise enough
    full = measure(ReplayMeter(), strict)
    assert len(full.windows) == 5 and full.attempts == 2                   # spread: re-measured
    worse = measure(ReplayMeter(), strict, stop_above_j=0.8 * full.energy_j)
    assert len(worse.windows) < 5 and worse.attempts == 1     # 2-3 windows: this trace's cv is ~5%
    assert "stopped_early" in worse.flags
    assert worse.energy_j == pytest.approx(full.energy_j, rel=0.03)        # still a measurement
    close = measure(ReplayMeter(), strict, stop_above_j=0.995 * full.energy_j)  # within the noise
    assert len(close.windows) == 5 and "stopped_early" not in close.flags



def test_a_flagged_kernel_above_the_bound_is_not_remeasured():
    strict = Precision(target_rse=1e-6, max_windows=5, max_spread=0.0)  # always flagged: spread
    first = measure(ReplayMeter(), Precision(**{**strict.__dict__, "remeasure": 0})).energy_j
    above = measure(ReplayMeter(), strict, stop_above_j=0.995 * first)   # not clearly above
    assert len(above.windows) == 5 and "stopped_early" not in above.flags
    assert above.attempts == 1 and above.flags[-2:] == ["spread", "above_bound"]
    assert above.energy_j == pytest.approx(first)
    below = measure(ReplayMeter(), strict, stop_above_j=1.005 * first)   # it could be the pick
    assert below.attempts == 2 and "above_bound" not in below.flags


def test_a_clean_remeasurement_sets_where_the_next_measurement_starts():
    first = measure(ReplayMeter(), Precision())   # at the 700 W limit 0.4 s windows spread > 3%
    assert first.attempt_flags[0][-1] == "spread" and first.attempts == 2
    assert "spread" not in first.flags and first.window_scale == 2.0
    scale = learned_scale(first, 1.0)
    assert scale == 2.0
    second = measure(ReplayMeter(), Precision(), start_scale=scale)
    assert second.attempts == 1 and "spread" not in second.flags   # no wasted first attempt
    assert second.windows[0]["calls"] == first.windows[0]["calls"]
    assert second.energy_j == pytest.approx(first.energy_j, rel=0.01)
    assert learned_scale(second, scale) == scale           # a clean first attempt teaches nothing
    still_flagged = measure(ReplayMeter(), Precision(max_spread=0.01))
    assert still_flagged.attempts == 2 and "spread" in still_flagged.flags
    assert learned_scale(still_flagged, 1.0) == 1.0        # longer windows did not help
