"""Measurement on many workers through TVM's RPC tracker: `RpcPool`, a `CandidateRunner` with
one slot per server registered under a key (`python -m energy_tuner.measure.rpc_server`, one per
device).

Each `run` takes a free worker, uploads the built library through that worker's RPC session and
has the server's own measurement worker check, time and meter it (`measure.rpc_server`). Records
carry the worker (`meta["worker"]`: host, device index and name, its idle power).

A worker whose server dies, stops answering (`call_timeout_s`) or loses its device (the remote
worker reports a harness failure, e.g. it cannot restart) drops out, and its candidate is measured
again on another worker: a lost worker is never the kernel's failure. A candidate during which
`MAX_LOSSES` workers were lost is recorded as a run error (it may be what kills them). With no
worker left, `run` raises `WorkerError`, which stops the tune with every result kept.
A kernel that is wrong, or crashes or hangs the remote worker process, is a result as locally.
"""
from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Callable

from .runner import Measurement, last_line
from .rpc_server import PREFIX, decode, encode, parse_address
from .worker import WorkerError, WorkerSpec

MAX_LOSSES = 2


class NoWorkers(WorkerError):
    """No tracker at the address, or no free server under the key: the user's input to fix."""


class WorkerLost(Exception):
    """This worker's server died, hung or lost its device."""


def free_servers(address: tuple[str, int], key: str, wait_s: float) -> int:
    """How many servers under `key` the tracker has free, waiting up to `wait_s` for one;
    raises NoWorkers when the tracker cannot be reached or none is free in time."""
    from tvm import rpc

    host, port = address
    try:
        socket.create_connection(address, timeout=5).close()
        tracker = rpc.connect_tracker(host, port)
    except (OSError, RuntimeError) as err:
        raise NoWorkers(f"no RPC tracker at {host}:{port} ({last_line(err)})") from None
    deadline = time.monotonic() + wait_s
    try:
        while True:
            free = tracker.summary()["queue_info"].get(key, {}).get("free", 0)
            if free or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        tracker.close()
    if not free:
        raise NoWorkers(f"the tracker at {host}:{port} has no free server with key {key!r} "
                        f"(waited {wait_s:g} s)")
    return free


def _call(timeout_s: float, fn: Callable, *args):
    """`fn(*args)` with a deadline: a remote call blocks on its socket while the server hangs."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except Exception as err:  # the RPC layer's errors (TVMError, OSError, ...)
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True, name="rpc-call")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WorkerLost(f"no answer in {timeout_s:g} s")
    if "error" in outcome:
        raise WorkerLost(last_line(outcome["error"]))
    return outcome["value"]


def _keep(handles: tuple) -> None:
    """Hold `handles` for the rest of the process (a daemon thread's frame is never freed)."""
    threading.Event().wait()


class RemoteWorker:
    """One RPC session to a measurement server, bound to that server's device."""

    def __init__(self, session, spec: WorkerSpec, call_timeout_s: float,
                 start_timeout_s: float) -> None:
        self.session, self.call_timeout_s = session, call_timeout_s
        self._fn = {name: session.get_function(PREFIX + name)
                    for name in ("open", "submit", "next", "answer")}
        ready = decode(_call(start_timeout_s, self._fn["open"], encode(spec)))
        if "error" in ready:
            raise WorkerLost(f"worker failed to start: {ready['error']}")
        self.measurement = ready.pop("measurement")
        self.info: dict = ready   # host, device_index, device_name, idle_w
        self.restarts = 0
        self.lost = False        # dropped out: its server died, hung or lost its device

    def close(self) -> None:
        """Drop the session: its connection closes and the server's session process exits.
        Releasing a remote handle talks to the server with the GIL held, so a lost worker's
        handles are never released: a thread that waits for ever keeps them (a hung server
        would otherwise block this process, at the latest when it exits)."""
        handles = (self.session, self._fn)
        self.session, self._fn = None, {}
        if self.lost:
            threading.Thread(target=_keep, args=(handles,), daemon=True, name="rpc-lost").start()

    @property
    def name(self) -> str:
        return f"{self.info['host']}:{self.info['device_index']}"

    def measure(self, artifact: str, decide: Callable[[Measurement], bool],
                latency_bound_s: float | None, energy_bound_j: float | None = None,
                poll_s: float = 2.0) -> Measurement:
        remote = f"{uuid.uuid4().hex}.so"
        _call(self.call_timeout_s, self.session.upload, artifact, remote)
        _call(self.call_timeout_s, self._fn["submit"], remote,
              -1.0 if latency_bound_s is None else latency_bound_s,
              -1.0 if energy_bound_j is None else energy_bound_j)
        while True:   # the remote worker times the kernel out itself; an empty reply: running
            if not (text := _call(poll_s + self.call_timeout_s, self._fn["next"], poll_s)):
                continue
            event = decode(text)
            if "ask" in event:
                _call(self.call_timeout_s, self._fn["answer"],
                      int(decide(Measurement(**event["ask"]))))
            elif "harness_error" in event:
                raise WorkerLost(event["harness_error"])
            else:
                self.restarts = event["restarts"]
                return Measurement(**event["result"])


class RpcPool:
    """`run(artifact) -> Measurement` on whichever worker is free; `slots` workers at once."""

    idle_w = None  # per worker, in `workers` and in every record's meta["worker"]

    def __init__(self, tracker: str, key: str, spec: WorkerSpec, wait_s: float = 60.0,
                 call_timeout_s: float = 120.0, start_timeout_s: float = 900.0,
                 report: Callable[[str], None] = lambda line: None) -> None:
        from tvm import rpc

        address = parse_address(tracker)
        count = free_servers(address, key, wait_s)
        self.report = report
        self.lost: list[dict] = []   # workers that dropped out: their info and why
        started: list[RemoteWorker] = []
        problems: list[str] = []

        def request():
            tracker = rpc.connect_tracker(*address)
            try:
                return tracker.request(key, max_retry=1)
            finally:
                tracker.close()

        def start() -> None:
            try:
                session = _call(call_timeout_s, request)
                started.append(RemoteWorker(session, spec, call_timeout_s, start_timeout_s))
            except WorkerLost as err:
                problems.append(str(err))

        threads = [threading.Thread(target=start, daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if not started:
            raise WorkerError(f"no RPC worker with key {key!r} started: {problems[0]}")
        for problem in problems:
            report(f"an RPC worker did not start: {problem}")
        identities = {repr(w.measurement) for w in started}
        if len(identities) > 1:
            raise WorkerError("the RPC workers measure differently (meter or protocol): "
                              + "; ".join(f"{w.name}: {w.measurement}" for w in started))
        self.measurement = started[0].measurement
        self.workers = [dict(w.info) for w in started]
        self.slots = len(started)
        self._started = started
        self._free, self._alive = list(started), len(started)
        self._ready = threading.Condition()

    @property
    def restarts(self) -> int:
        """Remote worker processes restarted after a kernel crashed or hung them."""
        return sum(w.restarts for w in self._started)

    def _take(self) -> RemoteWorker:
        with self._ready:
            while not self._free:
                if not self._alive and not self.lost:
                    raise WorkerError("the RPC pool is closed")
                if not self._alive:
                    last = self.lost[-1]
                    raise WorkerError(f"every RPC worker is gone (the last, {last['host']} device "
                                      f"{last['device_index']}: {last['why']})")
                self._ready.wait()
            return self._free.pop(0)  # the longest idle: every worker takes its turn

    def _give(self, worker: RemoteWorker) -> None:
        with self._ready:
            self._free.append(worker)
            self._ready.notify()

    def _drop(self, worker: RemoteWorker, why: str) -> None:
        worker.lost = True
        with self._ready:
            self._alive -= 1
            self.lost.append({**worker.info, "why": why})
            self._ready.notify_all()
        self.report(f"RPC worker {worker.name} dropped out ({why}); "
                    f"{self._alive} left, its candidate goes to another")

    def run(self, artifact: str, decide: Callable[[Measurement], bool] = lambda m: True,
            latency_bound_s: float | None = None,
            energy_bound_j: float | None = None) -> Measurement:
        losses: list[str] = []
        while True:
            worker = self._take()
            try:
                result = worker.measure(artifact, decide, latency_bound_s, energy_bound_j)
            except WorkerLost as err:
                self._drop(worker, str(err))
                losses.append(f"{worker.name}: {err}")
                if len(losses) >= MAX_LOSSES:
                    return Measurement("run_error", error=f"{len(losses)} RPC workers lost "
                                       f"while measuring it (last: {losses[-1]})")
                continue
            self._give(worker)
            result.meta["worker"] = dict(worker.info)
            if losses:
                result.meta["workers_lost"] = losses
            return result

    def close(self) -> None:
        """End the sessions: each server's worker exits and the server is free again."""
        with self._ready:
            self._free.clear()
            self._alive = 0
        for worker in self._started:
            worker.close()
