"""Measurement through TVM's RPC tracker: a tracker and three measurement servers on 127.0.0.1,
each a real `python -m energy_tuner.measure.rpc_server` measuring llvm candidates."""
from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

import tvm

from energy_tuner.compiler.builder import build_to_file
from energy_tuner.compiler.cli import main
from energy_tuner.compiler.database import TuningDatabase
from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler.search import Tuner
from energy_tuner.compiler.target import resolve
from energy_tuner.measure.rpc import NoWorkers, RpcPool
from energy_tuner.measure.runner import MeasureConfig
from energy_tuner.measure.worker import WorkerError, WorkerSpec
from energy_tuner.schedules import make_op
from tests.fake_powercap import ClockPowercap

KEY = "cpu-test"
SERVERS = 3
START_S = 300  # generous: three servers import TVM at once on a small, loaded host


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    """A child in its own process group, so that it and the processes it starts end together."""
    return subprocess.Popen([sys.executable, "-m", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def free_count(port: int, key: str) -> int:
    from tvm import rpc

    tracker = rpc.connect_tracker("127.0.0.1", port)
    try:
        return tracker.summary()["queue_info"].get(key, {}).get("free", 0)
    finally:
        tracker.close()


@pytest.fixture(scope="module")
def tracker():
    port = free_port()
    proc = spawn("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                 "--port-end", str(port + 1), "--silent")
    deadline = time.monotonic() + START_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "tracker did not start"
            time.sleep(0.5)
    yield port
    end(proc)


def start_servers(port: int, key: str, envs: list[dict]) -> list[subprocess.Popen]:
    """One measurement server per environment, registered under `key`."""
    procs = [spawn("energy_tuner.measure.rpc_server", "--tracker", f"127.0.0.1:{port}",
                   "--key", key, "--host", "127.0.0.1", "--port", str(free_port()), env=env)
             for env in envs]
    deadline = time.monotonic() + START_S
    while free_count(port, key) < len(procs):
        if not (all(p.poll() is None for p in procs) and time.monotonic() < deadline):
            for proc in procs:
                end(proc)
            pytest.fail("the servers did not register")
        time.sleep(0.5)
    return procs


@pytest.fixture
def servers(tracker):
    procs = start_servers(tracker, KEY, [{}] * SERVERS)
    yield procs
    for proc in procs:
        end(proc)


@pytest.fixture
def metered_servers(tracker, tmp_path):
    """Two servers, each metering its own fake RAPL tree (the hardware boundary): 30 W and 60 W."""
    with contextlib.ExitStack() as stack:
        trees = [stack.enter_context(ClockPowercap(tmp_path / f"rapl{i}", watts=(watts,),
                                                   start_uj=(0,), tick_s=0.005))
                 for i, watts in enumerate((30.0, 60.0))]
        procs = start_servers(tracker, "metered",
                              [{"ENERGY_TUNER_POWERCAP": str(tree.root)} for tree in trees])
        yield list(zip(procs, trees))
        for proc in procs:
            end(proc)


OP = make_op("matmul", "64,64,64", "float32")
CONFIG = MeasureConfig(latency_repeats=2, latency_min_repeat_ms=1)


def spec(energy: bool = False) -> WorkerSpec:
    """With `energy`, each server measures it through its own meter (its own powercap root)."""
    return WorkerSpec(OP.describe(), "llvm", 0, CONFIG, 0, "server's own" if energy else None)


def server_of(procs: list[subprocess.Popen], pid: int) -> subprocess.Popen:
    """The server whose listening process (TVM's, a child of our entry point) has `pid`."""
    return next(p for p in procs
                if pid in {c.pid for c in psutil.Process(p.pid).children(recursive=True)})


TRIALS = 16


def test_a_tune_survives_a_killed_server(tracker, servers, tmp_path):
    """One server killed after the second record: its candidate (the one it was measuring, or
    the next it takes: workers take turns) is measured on another, and the tune completes.
    TRIALS leaves many candidates after the kill, so the dead server is always asked again,
    however slowly the kill lands on a loaded host."""
    pool = RpcPool(f"127.0.0.1:{tracker}", KEY, spec(), wait_s=START_S)
    assert pool.slots == SERVERS and pool.measurement == {"l2": "resident", "meter": None}
    assert len({w["pid"] for w in pool.workers}) == SERVERS
    assert all(w["host"] == socket.gethostname() and w["device_index"] == 0 and w["device_name"]
               for w in pool.workers)
    db = TuningDatabase(tmp_path / "t.sqlite")
    seen, killed = [], []

    def kill_after_two(record) -> None:
        seen.append(record)
        if len(seen) == 2:
            killed.append(record.meta["worker"]["pid"])
            end(server_of(servers, killed[0]))

    tuner = Tuner(OP, resolve("llvm"), pool, db, Objective("latency"), seed=0)
    try:
        tuner.tune(TRIALS, on_record=kill_after_two)
    finally:
        pool.close()
    records = db.records(tuner.key)
    assert len(records) == TRIALS                              # every trial stored
    assert len({r.mod_hash for r in records}) == TRIALS        # none measured twice
    measured = [r for r in records if r.status != "build_error"]
    assert not [r for r in measured if r.status == "run_error"]  # no kernel blamed for the loss
    assert len({r.meta["worker"]["pid"] for r in measured}) >= 2
    assert [w["pid"] for w in pool.lost] == killed
    retried = [r for r in measured if "workers_lost" in r.meta]
    assert len(retried) == 1 and retried[0].meta["worker"]["pid"] != killed[0]
    db.close()
    # the command line on the servers left (free again once the pool closed its sessions)
    cli_db = tmp_path / "cli.sqlite"
    assert main(["--op", "matmul", "--shape", "32,32,32", "--target", "llvm", "--trials", "2",
                 "--db", str(cli_db), "--tracker", f"127.0.0.1:{tracker}", "--key", KEY,
                 "--tracker-wait", "300"]) == 0       # the servers free again: a slow host waits
    cli = TuningDatabase(cli_db)
    stored = [r for key in cli.workload_keys() for r in cli.records(key)]
    cli.close()
    assert len(stored) == 2 and all(r.meta["worker"]["pid"] != killed[0] for r in stored
                                    if r.status != "build_error")


def test_a_worker_that_loses_its_meter_drops_out(tracker, metered_servers, tmp_path):
    """A remote harness failure (its meter stops, as when a GPU falls off the bus) drops that
    worker; its candidate is measured on the other; that one hangs: with none left, the pool
    raises."""
    good = build_to_file(tvm.IRModule({"main": OP.prim_func()}), tvm.target.Target("llvm"),
                         str(tmp_path / "good.so"))
    pool = RpcPool(f"127.0.0.1:{tracker}", "metered", spec(energy=True), wait_s=START_S,
                   call_timeout_s=180)  # a hang, not a slow host: generous
    tree_of_server = dict(metered_servers)
    tree_of = {w["pid"]: tree_of_server[server_of(list(tree_of_server), w["pid"])]
               for w in pool.workers}
    try:
        assert pool.measurement["meter"] == "rapl" and len(tree_of) == 2
        for w in pool.workers:   # each worker's own idle power (30 or 60 W), by that worker's meter:
            own = tree_of[w["pid"]].total_watts        # nearer its own tree's than the other's,
            assert (w["idle_w"] > math.sqrt(30.0 * 60.0)) == (own == 60.0)  # however late the steps
        first = pool.run(good)
        assert first.status == "ok" and first.energy_j > 0
        broken = first.meta["worker"]["pid"]
        tree_of[broken].stop()                         # the first worker's counters freeze
        second = pool.run(good)                        # workers take turns: the other one
        assert second.status == "ok" and second.meta["worker"]["pid"] != broken
        third = pool.run(good)                         # the broken one's turn: retried
        assert third.status == "ok" and third.meta["worker"]["pid"] != broken
        assert len(third.meta["workers_lost"]) == 1
        assert [w["pid"] for w in pool.lost] == [broken]
        assert "energy meter failed" in pool.lost[0]["why"]
        hung = server_of(list(tree_of_server), second.meta["worker"]["pid"])
        os.killpg(hung.pid, signal.SIGSTOP)            # the last one hangs
        with pytest.raises(WorkerError, match="every RPC worker is gone.*no answer in"):
            pool.run(good)
    finally:
        pool.close()


def test_no_free_server_is_reported(tracker):
    with pytest.raises(NoWorkers, match="no free server with key 'nobody'"):
        RpcPool(f"127.0.0.1:{tracker}", "nobody", spec(), wait_s=1)
    with pytest.raises(NoWorkers, match="no RPC tracker"):
        RpcPool(f"127.0.0.1:{free_port()}", KEY, spec(), wait_s=1)


@pytest.mark.parametrize("args,message", [
    (["--tracker", "localhost", "--key", "k"], "HOST:PORT"),
    (["--tracker", ":9190", "--key", "k"], "HOST:PORT"),
    (["--tracker", "localhost:99999", "--key", "k"], "HOST:PORT"),
    (["--tracker", "127.0.0.1:9190"], "needs --key"),
    (["--key", "k"], "needs --tracker"),
    (["--tracker", "127.0.0.1:9190", "--key", "k", "--tracker-wait", "-1"], "--tracker-wait"),
])
def test_cli_rejects_bad_worker_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--op", "matmul", "--shape", "64,64,64", "--target", "llvm", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_reports_a_missing_tracker_or_server(tracker, capsys, tmp_path):
    base = ["--op", "matmul", "--shape", "64,64,64", "--target", "llvm",
            "--db", str(tmp_path / "t.sqlite"), "--tracker-wait", "1"]
    for args, message in ((["--tracker", f"127.0.0.1:{free_port()}", "--key", KEY], "no RPC tracker"),
                          (["--tracker", f"127.0.0.1:{tracker}", "--key", "nobody"], "no free server")):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
