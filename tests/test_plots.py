"""compiler/plots.py and `tune-report` on a small database recorded on an H200 (tests/data)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from energy_tuner.compiler import plots  # noqa: E402
from energy_tuner.compiler.database import TuningDatabase  # noqa: E402
from energy_tuner.compiler.objective import Objective  # noqa: E402
from energy_tuner.compiler.report_cli import ReportInputError, main, read_records  # noqa: E402

DB = Path(__file__).parent / "data" / "h200_conv2d_objectives.sqlite.gz"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def records():
    return read_records(DB)


def test_reads_gzipped_and_plain_databases(records, tmp_path):
    assert len(records) == 48
    assert {r.objective for r in records} == {"latency", "energy", "energy@1.03x"}
    plain = tmp_path / "tuning.sqlite"
    with gzip.open(DB, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert [r.id for r in read_records(plain)] == [r.id for r in records]


def test_best_so_far_is_the_running_best_of_the_tune(records):
    tune = [r for r in records if r.objective == "latency"]
    curve = plots.best_so_far(tune, Objective("latency"))
    running, expected = None, []
    for r in tune:  # independent: running minimum of correct latencies
        if r.status == "ok" and (running is None or r.latency_s < running):
            running = r.latency_s
        expected.append(running)
    assert curve == expected
    assert all(b <= a for a, b in zip(curve, curve[1:]) if a is not None)


def test_best_so_far_under_a_slowdown_bound_is_the_chosen_kernels_energy(records):
    tune = [r for r in records if r.objective == "energy@1.03x"]
    objective = Objective.from_key("energy@1.03x")
    curve = plots.best_so_far(tune, objective)
    assert curve[-1] == objective.choose(tune).energy_j
    # a bounded objective may get worse when a faster kernel tightens the bound
    assert len(curve) == len(tune)


def test_tuning_curve_draws_one_line_per_tune_ending_at_one(records):
    fig, ax = plt.subplots()
    plots.tuning_curve(records, ax=ax)
    steps = [line for line in ax.get_lines() if line.get_linestyle() != "None"]
    assert len(steps) == 3
    assert all(line.get_ydata()[-1] == pytest.approx(1.0) for line in steps)
    plt.close(fig)


def test_scatter_front_is_the_set_no_kernel_dominates(records):
    fig, ax = plt.subplots()
    plots.latency_energy(records, ax=ax, references=[plots.Reference("lib", 1e-5, 6e-3)])
    front_line = next(line for line in ax.get_lines() if "Pareto" in line.get_label())
    measured = [(r.latency_s, r.energy_j) for r in records
                if r.status == "ok" and r.energy_j is not None]
    dominated = {p for p in measured for q in measured
                 if q != p and q[0] <= p[0] and q[1] <= p[1]}
    expected = sorted(set(measured) - dominated)
    got = sorted(zip(front_line.get_xdata() / 1e3, front_line.get_ydata() / 1e3))
    assert np.allclose(got, expected)
    assert len(ax.collections) >= 3 + 1  # one scatter per tune, the library star
    plt.close(fig)


def test_write_report_writes_two_pngs_per_workload(records, tmp_path):
    written = plots.write_report(records, tmp_path / "out")
    assert len(written) == 2
    assert {p.name.rsplit("_", 2)[-2] for p in written} == {"tuning", "latency"}
    for path in written:
        assert path.read_bytes().startswith(PNG)


def test_ratio_bars_mark_missing_values(tmp_path):
    fig, ax = plt.subplots()
    plots.ratio_bars(["a", "b"], {"latency": [2.0, None], "energy": [1.5, 3.0]}, ax=ax)
    texts = [t.get_text().strip() for t in ax.texts]
    assert "not measured" in texts and "2.00" in texts and "3.00" in texts
    plt.close(fig)


def test_predicted_vs_measured_highlights_the_best_quarter():
    fig, ax = plt.subplots()
    measured = np.arange(1.0, 9.0)
    plots.predicted_vs_measured(measured, measured * 1.1, ax=ax, quantity="energy", unit="mJ")
    best = next(c for c in ax.collections if c.get_label() == "best quarter")
    assert len(best.get_offsets()) == 2
    plt.close(fig)


def test_cli_writes_figures(tmp_path, capsys):
    assert main([str(DB), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(Path(p).read_bytes().startswith(PNG) for p in printed)
    key = read_records(DB)[0].workload_key
    assert main([str(DB), "--out", str(tmp_path / "one"), "--workload", key]) == 0


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    fake_gz = tmp_path / "fake.sqlite.gz"
    fake_gz.write_bytes(b"not gzip")
    empty = tmp_path / "empty.sqlite"
    TuningDatabase(empty).close()
    return {"no such file": tmp_path / "missing.sqlite", "not an SQLite database": text,
            "not a tuning database": fake_gz, "no records": empty}


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for message, path in _bad_inputs(tmp_path).items():
        assert main([str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
        if message != "no records":
            with pytest.raises(ReportInputError):
                read_records(path)
    assert main([str(DB), "--out", str(tmp_path / "out"), "--workload", "nosuchkey"]) == 2
    assert "no records for workload nosuchkey" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()



def test_latency_only_database_gets_a_note_instead_of_a_front(records, tmp_path):
    from dataclasses import replace

    db = TuningDatabase(tmp_path / "latency_only.sqlite")
    for r in records[:16]:
        db.add(replace(r, id=None, energy_j=None, power_w=None))
    db.close()
    fig, ax = plt.subplots()
    plots.latency_energy(read_records(tmp_path / "latency_only.sqlite"), ax=ax)
    assert [t.get_text() for t in ax.texts] == ["no correct kernel with measured energy"]
    plt.close(fig)
    assert main([str(tmp_path / "latency_only.sqlite"), "--out", str(tmp_path / "out")]) == 0
