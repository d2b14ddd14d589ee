"""experiments/objective_table.py on the H200 baseline tunes (replayed) and on constructed tunes."""
import csv
import shutil

import pytest

from energy_tuner.compiler.database import Record, TuningDatabase
from energy_tuner.compiler.objective import Objective
from experiments import objective_table
from energy_tuner.schedules import make_op
from tests.conftest import DATA

BASELINE = DATA.parent.parent / "experiments" / "results" / "matmul4096_fp16_h200_2026-11-21"
SMALL = make_op("matmul", "64,64,64", "float16").describe()


def write_db(path, objective, rows):
    """A tuning database of `rows` (status, latency ms, energy mJ) measured under `objective`."""
    db = TuningDatabase(path)
    for status, ms, mj in rows:
        db.add(Record(id=None, workload_key="k", workload=SMALL, target="", device="GPU",
                      objective=objective, mod_hash="", trace=[], status=status,
                      latency_s=ms / 1e3, energy_j=None if mj is None else mj / 1e3))
    db.close()


def replayed_case(case, gpu_records):
    """The H200 baseline: its latency and energy tunes, its energy tune's candidates again as a
    bounded tune, and the cuBLAS calls measured with the latency tune."""
    shutil.copy(BASELINE / "latency.sqlite.gz", case / "latency.sqlite.gz")
    shutil.copy(BASELINE / "energy.sqlite.gz", case / "energy.sqlite.gz")
    shutil.copy(BASELINE / "cublas_latency.json", case / "cublas.json")
    db = TuningDatabase(case / "slowdown.sqlite")
    for r in gpu_records:
        if r["run"] == "energy":
            db.add(Record(id=None, workload_key="k", workload=r["workload"], target=r["target"],
                          device=r["device"], objective="energy@1.03x", mod_hash="",
                          trace=r["trace"], status=r["status"], latency_s=r["latency_s"],
                          energy_j=r["energy_j"], power_w=r["power_w"]))
    db.close()


def read_csv(out):
    with open(out / "objective_table.csv") as f:
        return {(r["case"], r["kernel"]): r for r in csv.DictReader(f)}


def test_objective_keys_round_trip():
    for objective in (Objective("latency"), Objective("energy"), Objective("edp"),
                      Objective("energy", 1.03), Objective("energy", 1.5)):
        assert Objective.from_key(objective.key) == objective


def test_table_compares_each_tune_with_the_latency_tune(tmp_path, gpu_records):
    (tmp_path / "h200").mkdir()
    replayed_case(tmp_path / "h200", gpu_records)
    saving = tmp_path / "saving"
    saving.mkdir()
    # the wrong kernel would win every objective, and one kernel lacks energy: both ignored
    write_db(saving / "latency.sqlite", "latency",
             [("ok", 1.00, 100), ("ok", 1.20, 60), ("wrong", 0.90, 50)])
    write_db(saving / "energy.sqlite", "energy",
             [("ok", 1.02, 74), ("ok", 0.99, None), ("wrong", 1.5, 10)])
    # 60 mJ is 1.04x its tune's fastest kernel (1.00 ms): outside the bound, so 90 mJ is chosen
    write_db(saving / "slowdown.sqlite", "energy@1.03x", [("ok", 1.00, 90), ("ok", 1.04, 60)])

    text = objective_table.main(tmp_path)
    rows = read_csv(tmp_path)
    lat = rows[("h200", "TVM, latency")]
    assert lat["db_id"] == "63" and float(lat["energy_mj"]) == pytest.approx(325.1, abs=0.05)
    energy = rows[("h200", "TVM, energy")]
    assert energy["db_id"] == "28" and energy["meets"] == "False"
    assert float(energy["d_energy"]) == pytest.approx(372.01 / 325.11 - 1, abs=1e-4)
    assert float(energy["d_latency"]) == pytest.approx(0.5232 / 0.4524 - 1, abs=1e-3)
    assert rows[("h200", "TVM, energy within 1.03x of fastest")]["db_id"] == "28"
    cublas = rows[("h200", "cublas fp16->fp32")]
    assert cublas["meets"] == "" and float(cublas["d_latency"]) == pytest.approx(-0.541, abs=1e-3)

    assert rows[("saving", "TVM, latency")]["db_id"] == "1"
    met = rows[("saving", "TVM, energy")]
    assert met["db_id"] == "1" and met["meets"] == "True"
    assert float(met["d_energy"]) == pytest.approx(-0.26)
    assert float(met["d_latency"]) == pytest.approx(0.02)
    bounded = rows[("saving", "TVM, energy within 1.03x of fastest")]
    assert float(bounded["energy_mj"]) == 90 and bounded["meets"] == "False"
    assert "| h200 | matmul 4096,4096,4096 float16 | no |" in text
    assert "| saving | matmul 64,64,64 float16 | yes: TVM, energy, -26.0% energy, +2.0% latency |" \
        in text
    assert "Met on 1 of 2 cases: target reached" in text

    (tmp_path / "unfinished").mkdir()      # a case whose tunes never ran counts as not met
    write_db(tmp_path / "unfinished" / "latency.sqlite", "latency", [("ok", 1.0, 100)])
    text = objective_table.main(tmp_path)
    assert ("unfinished", "TVM energy: not run") in read_csv(tmp_path)
    assert "Met on 1 of 3 cases: target not reached" in text
    assert (tmp_path / "objective_table.md").read_text() == text + "\n"
