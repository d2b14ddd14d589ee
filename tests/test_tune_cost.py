"""What the tune cost: the device counter over the run, and the payback in calls."""
import json
import sqlite3

import pytest

from energy_tuner.compiler.database import Record
from energy_tuner.compiler.tune_cost import TuneEnergy


def fake_powercap(root, packages):
    """intel-rapl:N package domains (energy_uj, max_energy_range_uj), plus an ignored sub-domain."""
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


def kernel(energy_j):
    return Record(id=1, workload_key="k", workload={}, target="", device="", objective="energy",
                  mod_hash="", trace=[], status="ok", latency_s=1e-3, energy_j=energy_j)


def test_rapl_counter_over_the_run_with_a_wrap_and_payback(tmp_path):
    fake_powercap(tmp_path, [(900, 1000), (0, 1000)])          # (energy_uj, max range) per package
    meter = TuneEnergy("llvm", 0, str(tmp_path))
    advance(tmp_path, 0, 990)
    advance(tmp_path, 1, 300)
    meter.sample()
    advance(tmp_path, 0, 100)                                    # wrapped: 990 -> 1000 -> 100
    cost = meter.stop(chosen=kernel(0.3e-3), fastest=kernel(0.4e-3))
    assert cost.meter == "rapl"
    assert cost.energy_j == pytest.approx((90 + 110 + 300) / 1e6)
    assert cost.saving_j_per_call == pytest.approx(0.1e-3)
    assert cost.payback_calls == pytest.approx(5.0)
    assert "pays the tune back after 5 calls" in cost.line()


def test_no_saving_no_payback_and_no_meter_is_not_measured(tmp_path):
    fake_powercap(tmp_path, [(0, 1000)])
    same = kernel(0.3)
    cost = TuneEnergy("llvm", 0, str(tmp_path)).stop(chosen=same, fastest=same)
    assert cost.payback_calls is None and "no payback" in cost.line()
    missing = TuneEnergy("llvm", 0, str(tmp_path / "none")).stop(same, same)
    assert missing.energy_j is None and missing.meter is None
    assert "not measured" in missing.line()


def test_tiny_tune_keeps_its_cost_in_the_db(tiny_tune):
    db, _, rc = tiny_tune
    con = sqlite3.connect(db)
    metas = [json.loads(m) for (m,) in con.execute("SELECT meta FROM candidates ORDER BY id")]
    costs = [m["tune_cost"] for m in metas if m and "tune_cost" in m]
    assert len(costs) == 1 and "tune_cost" in (metas[-1] or {})   # the run's last record
    assert costs[0]["seconds"] > 0
    if costs[0]["meter"] is None:                                  # CI: no readable RAPL
        assert costs[0]["energy_j"] is None and costs[0]["why_not"]
