"""Meters and the energy protocol: RAPL on a fake powercap tree, NVML on a recorded H200 trace."""
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import pytest

from energy_tuner.measure.meters import (MeterError, RaplCounters, RaplMeter, inside, meter_problem, nvml_device,
                            power_from_ticks)
from energy_tuner.measure.protocol import Precision, measure_energy, window_seconds
from tests.conftest import DATA
from tests.fake_powercap import ClockPowercap


def test_rapl_sums_packages_and_handles_wraparound(tmp_path):
    """Package 1 wraps at once: the summed power is still the tree's 50 W (windows of 2 s, so a
    reader that sees a counter step up to 700 ms late on a loaded host stays inside 35%; one
    package alone (30 or 20 W) or a missed wrap (+-45 W over a window) falls outside)."""
    # a 90 J range: package 0 wraps every 3 s, package 1 every 4.5 s (at once, then at
    # 4.5 s), each more than a window apart, so no window can alias a whole wrap away
    tree = ClockPowercap(tmp_path, watts=(30.0, 20.0), start_uj=(1_000_000, 89_990_000),
                         max_range_uj=90_000_000)
    with tree:
        meter = RaplMeter(tmp_path)
        readings = [meter.power_during(lambda: time.sleep(2.0) or 0.001) for _ in range(3)]
    assert readings[0].result == 0.001
    for reading in readings:
        assert reading.watts == pytest.approx(tree.total_watts, rel=0.35)
        # the tree writes at most once per ms (sleeps only oversleep); a starved reader sees fewer
        assert 1 <= reading.ticks <= round(reading.span_s / 1e-3) + 1
        assert reading.watts_sampled is None and reading.min_sm_clock_mhz is None  # RAPL has neither


def test_rapl_counters_sum_packages_and_unwrap_each_at_its_range(tmp_path):
    """The joules between two reads, from counters written by hand (no clock): exact."""
    for i, (value, top) in enumerate([(1_000_000, 90_000_000), (49_990_000, 50_000_000)]):
        (tmp_path / f"intel-rapl:{i}").mkdir()
        (tmp_path / f"intel-rapl:{i}" / "max_energy_range_uj").write_text(str(top))
        (tmp_path / f"intel-rapl:{i}" / "energy_uj").write_text(str(value))
    counters = RaplCounters(tmp_path)
    before = counters.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text(str(4_000_000))     # +3 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text(str(1_990_000))     # wrapped: +2 J
    assert counters.joules(before, counters.read()) == pytest.approx(5.0)


def test_rapl_tick_period_is_measured(tmp_path):
    with ClockPowercap(tmp_path, tick_s=0.005):
        meter = RaplMeter(tmp_path)
    # writes are >= 5 ms apart (sleeps only oversleep); a step is timed within its 1 ms bracket
    assert meter.tick_period_s >= 0.004


def test_rapl_missing_tree_says_why(tmp_path):
    with pytest.raises(MeterError, match="no RAPL energy counters"):
        RaplMeter(tmp_path / "absent")


def test_rapl_frozen_counter_is_a_meter_error(tmp_path):
    tree = ClockPowercap(tmp_path)
    with pytest.raises(MeterError, match="did not advance"):
        RaplMeter(tmp_path, patience_s=1.0)               # never started: frozen from the outset
    with tree:
        meter = RaplMeter(tmp_path, patience_s=1.0)      # a writer starved 1 s is not frozen
        tree.stop()                                       # freezes after the meter opened
        with pytest.raises(MeterError, match="did not advance"):
            meter.power_during(lambda: 0.001)
    assert "did not advance" in meter_problem("llvm", 0, str(tmp_path))


def test_measure_energy_protocol_with_rapl(tmp_path):
    """Energy per call = mean window power x per-call time; calls sized to fill the window.
    The power comes from the clock-driven tree (50 W), whatever the sleeps really slept."""
    state = {"calls": []}

    def run_batch(calls):             # a "kernel" of 1 ms per call
        state["calls"].append(calls)
        time.sleep(calls * 0.001)
        return 0.001

    # windows of >= 1 s (1000 calls): a counter step seen up to 300 ms late stays inside 30%
    precision = Precision(min_calls=1000, min_windows=3, max_spread=0.5, warmup_s=0.05)
    with ClockPowercap(tmp_path, watts=(50.0,), start_uj=(0,)):
        meter = RaplMeter(tmp_path)
        result = measure_energy(meter, run_batch, latency_s=0.001, precision=precision)
    window_calls = math.ceil(window_seconds(meter, 0.001, precision) / 0.001)
    assert window_calls >= 1000
    assert state["calls"][:4] == [50, window_calls, window_calls, window_calls]  # warm-up, windows
    assert 3 <= len(result.windows) <= precision.max_windows
    assert "few_ticks" not in result.flags       # ~1000 ticks per window (a spread may re-measure)
    assert result.energy_j == pytest.approx(result.power_w * 0.001)
    assert result.energy_j == pytest.approx(0.050, rel=0.3)   # 50 W x 1 ms (step edges seen late on a loaded host)
    assert result.sustained_latency_s == 0.001


def test_nvml_window_alignment_on_recorded_h200_trace():
    trace = json.loads((DATA / "h200_nvml_ticks_cublas4096.json").read_text())
    ticks = [tuple(t) for t in trace["ticks"]]
    busy = inside(ticks, trace["busy_start"] + 0.005, trace["busy_end"])
    assert 3 <= len(busy) < len(ticks)
    assert all(trace["busy_start"] < t < trace["busy_end"] for t, _ in busy)
    busy_w, span = power_from_ticks(busy)
    # cuBLAS fp16 4096^3 ran at the H200's 700 W limit in the same run (cublas_latency.json)
    assert 600 < busy_w < 800 and span > 0.3
    whole_w, _ = power_from_ticks(ticks)   # idle edges included: a badly aligned window
    assert whole_w < 0.8 * busy_w


def test_too_few_ticks_give_no_estimate():
    assert power_from_ticks([(0.0, 5)]) == (None, 0.0)
    assert power_from_ticks([]) == (None, 0.0)


@pytest.mark.parametrize("visible,cuda_index,expected", [
    (None, 0, 0), (None, 3, 3),                        # unset: CUDA and NVML agree
    ("2", 0, 2), ("3,1", 0, 3), ("3,1", 1, 1),         # CUDA device i = i-th listed NVML index
    (" 1 , GPU-8f3a-uuid", 1, "GPU-8f3a-uuid"),        # UUID entries stay UUIDs
    ("MIG-0a1b", 0, "MIG-0a1b"),
])
def test_nvml_device_follows_cuda_visible_devices(visible, cuda_index, expected):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert nvml_device(cuda_index, env) == expected


@pytest.mark.parametrize("visible,cuda_index", [("", 0), ("2", 1), ("0,1", -1)])
def test_nvml_device_outside_the_visible_list_is_an_error(visible, cuda_index):
    with pytest.raises(MeterError, match="not among CUDA_VISIBLE_DEVICES"):
        nvml_device(cuda_index, {"CUDA_VISIBLE_DEVICES": visible})


def fake_pynvml(asked: list):
    """The few pynvml calls our code makes, recording which device each handle names."""
    return SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: asked.append(("index", i)) or ("index", i),
        nvmlDeviceGetHandleByUUID=lambda u: asked.append(("uuid", u)) or ("uuid", u),
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: 1000,
        nvmlDeviceGetName=lambda handle: f"GPU {handle[1]}")


@pytest.mark.parametrize("visible,expected", [("2", ("index", 2)),
                                              ("GPU-8f3a-uuid", ("uuid", "GPU-8f3a-uuid"))])
def test_meter_and_gpu_name_read_the_gpu_that_cuda_device_0_is(monkeypatch, visible, expected):
    from energy_tuner.compiler.target import nvidia_gpu_name

    asked: list = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(asked))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert meter_problem("cuda", 0) is None
    nvidia_gpu_name(0)            # None here (TVM sees no GPU), but NVML was asked about `expected`
    assert asked == [expected, expected]


FAKE_NVML = '''
"""A stand-in for the NVML library (the hardware boundary): a 250 W board whose energy counter
steps every 20 ms, as Hopper's does every ~100 ms."""
import time
NVML_FI_DEV_POWER_INSTANT, NVML_SUCCESS, NVML_CLOCK_SM = 186, 0, 1
class NVMLError(Exception):
    pass
def nvmlInit():
    pass
def nvmlDeviceGetHandleByIndex(i):
    return i
def nvmlDeviceGetTotalEnergyConsumption(handle):
    return int(time.monotonic() / 0.02) * 5000           # mJ: 5 J per 20 ms step
class _Value:
    nvmlReturn = NVML_SUCCESS
    class value:
        uiVal = 250000                                    # mW
def nvmlDeviceGetFieldValues(handle, fields):
    return [_Value()]
def nvmlDeviceGetClockInfo(handle, clock):
    return 1980
'''


def test_nvml_meter_samplers_are_plain_processes_that_read_the_board(tmp_path, monkeypatch):
    """The NVML meter's two sampler processes (plain Python processes importing only the meters
    module, with a fake NVML library on their path) answer with the board's power and end on
    close."""
    from energy_tuner.measure.meters import NvmlMeter

    (tmp_path / "pynvml.py").write_text(FAKE_NVML)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    meter = NvmlMeter(0)
    try:
        assert 0.01 < meter.tick_period_s < 1.0              # loose: a loaded host sees steps late
        reading = meter.power_during(lambda: time.sleep(2.0))
        assert reading.watts_sampled == pytest.approx(250)  # a constant: exact whatever the timing
        # the counter's estimate: 100 steps in the window, each seen late by the sampler's delay
        assert reading.watts == pytest.approx(250, rel=0.5)
    finally:
        meter.close()
    assert all(proc.poll() is not None for _, proc in meter._samplers)
