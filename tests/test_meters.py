"""Meters and the energy protocol: RAPL on a fake powercap tree, NVML on a recorded H200 trace."""
import json
import sys
import time
from types import SimpleNamespace

import pytest

from energy_tuner.measure.meters import (MeterError, RaplMeter, inside, meter_problem, nvml_device,
                            power_from_ticks)
from energy_tuner.measure.protocol import Precision, measure_energy
from tests.conftest import DATA


def fake_powercap(root, packages):
    """intel-rapl:N package domains (plus a sub-domain that must be ignored)."""
    for i, (energy, max_range) in enumerate(packages):
        d = root / f"intel-rapl:{i}"
        d.mkdir(parents=True)
        (d / "energy_uj").write_text(str(energy))
        (d / "max_energy_range_uj").write_text(str(max_range))
        sub = root / f"intel-rapl:{i}:0"
        sub.mkdir()
        (sub / "energy_uj").write_text("0")
    return root


def advance(root, index, energy):
    (root / f"intel-rapl:{index}" / "energy_uj").write_text(str(energy))


def test_rapl_sums_packages_and_handles_wraparound(tmp_path):
    root = fake_powercap(tmp_path, [(1_000_000, 10_000_000), (9_900_000, 10_000_000)])
    meter = RaplMeter(root)

    def run():
        advance(root, 0, 3_000_000)       # +2 J
        advance(root, 1, 900_000)         # wrapped: +1 J
        return 0.001

    reading = meter.power_during(run)
    assert reading.result == 0.001
    assert reading.watts * reading.span_s == pytest.approx(3.0, rel=1e-9)
    assert reading.watts_sampled is None and reading.min_sm_clock_mhz is None  # RAPL has neither


def test_rapl_missing_tree_says_why(tmp_path):
    with pytest.raises(MeterError, match="no RAPL energy counters"):
        RaplMeter(tmp_path / "absent")


def test_measure_energy_protocol_with_rapl(tmp_path):
    """Energy per call = mean window power x per-call time; calls sized to fill the window."""
    root = fake_powercap(tmp_path, [(0, 2**40)])
    meter = RaplMeter(root)
    state = {"energy_uj": 0, "calls": []}

    def run_batch(calls):             # a "kernel" of 1 ms per call at a steady 50 W
        state["calls"].append(calls)
        start = time.monotonic()
        time.sleep(calls * 0.001)     # the host may oversleep: charge the time really spent
        state["energy_uj"] += round(50 * (time.monotonic() - start) * 1e6)
        advance(root, 0, state["energy_uj"])
        return 0.001

    precision = Precision(min_calls=20, min_windows=3, max_spread=0.2, warmup_s=0.05)
    result = measure_energy(meter, run_batch, latency_s=0.001, precision=precision)
    assert state["calls"][:4] == [50, 20, 20, 20]        # warm-up, then the windows
    assert 3 <= len(result.windows) <= precision.max_windows
    assert result.energy_j == pytest.approx(result.power_w * 0.001)
    assert result.energy_j == pytest.approx(0.050, rel=0.05)   # 50 W x 1 ms
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
