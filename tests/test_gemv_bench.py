"""experiments/gemv_bench.py on a CPU: the plan (configs, reject counts, CUDA source) and the
summary's choice among measurements (synthetic rows: the bookkeeping, not GPU figures)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tvm.target import Target

from energy_tuner.schedules import make_op
from energy_tuner.schedules.gemv_knobs import GemvKnobs
from experiments import gemv_bench


def test_configs_are_distinct_valid_and_curated_first():
    space = GemvKnobs(make_op("gemv", "4096,14336", "float16"), gemv_bench.SM90, sms=132)
    configs, reasons = gemv_bench.bench_configs(space, 20, seed=0)
    assert len(configs) == 20
    assert all(space.reject(c) is None for c in configs)
    assert len({space.key(c) for c in configs}) == 20
    assert configs[0] == gemv_bench.BASE
    assert not any(str(c["load"]).startswith("bulk") for c in configs)
    bulk, _ = gemv_bench.bench_configs(space, 4, seed=0, bulk=True)
    assert len(bulk) == 4 and all(str(c["load"]).startswith("bulk") for c in bulk)
    assert sum(reasons.values()) == 2000 and 0 < reasons["valid"] < 2000


def test_explicit_changes_replace_the_curated_list_and_bad_json_is_one_line(tmp_path, capsys):
    space = GemvKnobs(make_op("gemv", "4096,14336", "float16"), gemv_bench.SM90, sms=132)
    configs, _ = gemv_bench.bench_configs(space, 2, seed=0, changes=[{"split_k": 3}, {"unroll": 4}])
    assert configs[0] == {**gemv_bench.BASE, "unroll": 4}        # the invalid change is skipped
    assert configs[1] != gemv_bench.BASE and space.reject(configs[1]) is None
    with pytest.raises(SystemExit) as stop:
        gemv_bench.main(["--dry-run", "--out", str(tmp_path), "--changes", "{oops"])
    assert stop.value.code == 2 and "--changes: not JSON" in capsys.readouterr().err


def test_dry_run_builds_every_planned_config(tmp_path):
    rc = gemv_bench.main(["--dry-run", "--out", str(tmp_path), "--configs", "2",
                          "--bulk-configs", "1", "--shapes", "4096x4096,28672x8192"])
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert rc == 0
    assert [p["shape"] for p in plan] == [{"n": 4096, "k": 4096}, {"n": 28672, "k": 8192}]
    assert all(p["builds"] == [True, True, True] for p in plan)
    assert [str(c["load"]).startswith("bulk") for c in plan[0]["configs"]] == [False, False, True]
    assert plan[0]["rotation_sets_h200"] == 6 and plan[1]["rotation_sets_h200"] == 2


def test_watchdog_kills_a_run_without_progress(tmp_path):
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    progress = tmp_path / gemv_bench.PROGRESS
    progress.write_text("gemv4096x4096 config 3: {...}")
    # an hour without progress against a 5 s limit: no host is slow enough to blur that
    os.utime(progress, (time.time() - 3600, time.time() - 3600))
    gemv_bench._watchdog(stuck.pid, tmp_path, hang_s=5.0)
    assert stuck.wait(timeout=120) == -signal.SIGKILL   # killed before _watchdog returned
    assert "during: gemv4096x4096 config 3" in (tmp_path / "watchdog.txt").read_text()


def test_dry_run_of_the_dequant_twin(tmp_path):
    rc = gemv_bench.main(["--dry-run", "--op", "dequant", "--wbits", "2", "--zero-points",
                          "--out", str(tmp_path), "--configs", "3", "--shapes", "4096x14336"])
    (plan,) = json.loads((tmp_path / "plan.json").read_text())
    assert rc == 0 and plan["case"] == "dequant4096x14336_w2g128z"
    assert plan["builds"] == [True, True, True]          # no bulk pass for the dequant twin
    # hand-picked configs first, each as changes to the base
    assert plan["configs"][0] == {**gemv_bench.BASE_DEQUANT, **gemv_bench.CURATED_DEQUANT[0]}


@pytest.mark.parametrize("space", ["gemv-wgmma", "linear-mma"])
def test_dry_run_of_linear_decode_rows(space, tmp_path):
    """--op linear plans y = x W^T at --rows rows through both linear spaces, curated first."""
    rc = gemv_bench.main(["--dry-run", "--op", "linear", "--rows", "16", "--space", space,
                          "--out", str(tmp_path), "--configs", "2", "--shapes", "4096x4096"])
    (plan,) = json.loads((tmp_path / "plan.json").read_text())
    assert rc == 0 and plan["case"] == "linear16x4096x4096" and plan["builds"] == [True, True]
    _, base, curated, _ = gemv_bench.BENCH_SPACES["linear"][space]
    assert plan["configs"][0] == {**base, **curated[0]}


@pytest.mark.parametrize("argv", [["--configs", "0"], ["--ref-every", "0"], ["--bulk-share", "1"],
                                  ["--op", "dequant", "--group-size", "7"],
                                  ["--op", "linear", "--rows", "17"]])
def test_bad_counts_exit_2(argv, tmp_path, capsys):
    assert gemv_bench.main(["--dry-run", "--out", str(tmp_path), *argv]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_no_gpu_exits_2(tmp_path, capsys):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    assert gemv_bench.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def _row(kind, ms, mj, name="gemv-simt", config=None):
    return {"case": "gemv64x64", "kind": kind, "name": name, "status": "ok", "config": config,
            "sustained_latency_s": ms / 1e3, "energy_j": mj / 1e3, "power_w": mj / ms,
            "rel_error": 1e-7}


def test_summary_takes_least_energy_within_the_latency_bound():
    class Args:
        shapes, commit, op = [(64, 64)], "abc", "gemv"

    results = [_row("ref", 0.030, 17.0, "cublas fp16->fp32"), _row("ref", 0.031, 16.0, "cublas fp16->fp32"),
               _row("ref", 0.029, 15.0, "cublas fp16->fp16"),
               _row("ours", 0.029, 17.5, config={"a": 1}),     # fastest
               _row("ours", 0.0312, 15.5, config={"a": 2}),    # least energy within 1.03x
               _row("ours", 0.040, 12.0, config={"a": 3})]     # less energy, too slow
    out = gemv_bench.summary(results, {"idle_w": 90.0}, Args, "NVIDIA H200", "580")
    (row,) = out["rows"]
    assert row["ref"]["name"] == "cublas fp16->fp32" and row["ref"]["repeats"] == 2
    assert row["ref"]["ms"] == pytest.approx(0.0305)
    assert row["ours"]["config"] == {"a": 2} and row["ours"]["trials"] == 3
    assert out["l2"] == "rotate" and out["commit"] == "abc"


def test_dry_run_of_the_tensor_core_space(tmp_path):
    rc = gemv_bench.main(["--dry-run", "--op", "dequant", "--wbits", "4", "--space",
                          "lut-dequant-gemv-mma", "--out", str(tmp_path), "--configs", "3",
                          "--shapes", "28672x8192"])
    (plan,) = json.loads((tmp_path / "plan.json").read_text())
    assert rc == 0 and plan["builds"] == [True, True, True]
    assert plan["configs"][0] == {**gemv_bench.BASE_MMA, **gemv_bench.CURATED_MMA[0]}
    assert "thread_cols" in plan["configs"][2]


def test_every_curated_mma_config_is_valid_on_issue_10_shapes():
    from energy_tuner.schedules.dequant_gemv_mma import DequantGemvMma

    for bits in (2, 4):
        for n, k in gemv_bench.DEQUANT_SHAPES:
            op = make_op("lut_mpgemm", f"m=1,n={n},k={k}", "float16",
                         {"wbits": bits, "group_size": 128, "zero_points": False, "impl": "dequant"})
            space = DequantGemvMma(op, gemv_bench.SM90, sms=132)
            for changes in gemv_bench.CURATED_MMA:
                assert space.reject({**gemv_bench.BASE_MMA, **changes}) is None, (n, k, changes)


def test_space_must_fit_the_op(tmp_path, capsys):
    assert gemv_bench.main(["--dry-run", "--out", str(tmp_path), "--space",
                            "lut-dequant-gemv-mma"]) == 2
    assert "--space for --op gemv must be one of gemv-simt, gemv-mma" in capsys.readouterr().err


def test_every_curated_fp16_mma_config_is_valid_on_issue_10_shapes():
    from energy_tuner.schedules.gemv_mma import GemvMmaKnobs

    for n, k in gemv_bench.SHAPES:
        space = GemvMmaKnobs(make_op("gemv", f"{n},{k}", "float16"), gemv_bench.SM90, sms=132)
        configs, _ = gemv_bench.bench_configs(space, len(gemv_bench.CURATED_GEMV_MMA), seed=0)
        assert configs == [{**gemv_bench.BASE_GEMV_MMA, **c} for c in gemv_bench.CURATED_GEMV_MMA]
