"""Candidates run in a long-lived worker process per device, so a bad kernel costs only the worker.

A kernel that crashes the process (segfault, illegal address), hangs past the timeout, or fails on
a GPU (after which the CUDA context may be unusable) is recorded as a failed measurement with its
error, the worker is restarted, and the tune goes on. The worker owns the device, the inputs, the
numpy reference and the energy meter; it measures idle power once when it starts.

A failure of the harness (the energy meter or its sampler) is not the kernel's: the worker reports
it and exits, and `run` raises `WorkerError`, which stops the tune with every result so far kept.
The timeout grows with the kernel: after its first call the worker says how long timing, energy
and the re-check may take, and the parent waits that long on top of `timeout_s`.
Ctrl-C is the parent's to handle: the worker ignores SIGINT (no traceback from it) and is closed.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from dataclasses import asdict, dataclass
from typing import Callable

from .meters import METER_NAMES
from .runner import MeasureConfig, Measurement, Runner, measurement_identity


class WorkerError(RuntimeError):
    """The measurement harness failed (worker setup, energy meter, sampler): not a kernel's fault."""


@dataclass
class WorkerSpec:
    op: dict                      # Op.describe()
    kind: str                     # "cuda" | "llvm"
    device_index: int
    config: MeasureConfig
    seed: int
    powercap: str | None          # RAPL root; None: measure no energy

    def measurement(self) -> dict:
        """The measurement identity the worker will report (its meter opened as `kind` opens
        one), known before it starts: what a tune's database key holds."""
        meter = None if self.powercap is None else METER_NAMES[self.kind]
        return measurement_identity(self.config, meter)


def _serve(conn, spec: WorkerSpec) -> None:
    import tvm

    from .meters import MeterError, open_meter
    from ..schedules import op_from_description

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    meter = None
    try:
        try:
            device = (tvm.cuda(spec.device_index) if spec.kind == "cuda"
                      else tvm.cpu(spec.device_index))
            meter = (open_meter(spec.kind, spec.device_index, spec.powercap)
                     if spec.powercap is not None else None)
            runner = Runner(op_from_description(spec.op), device, meter, spec.config, spec.seed)
        except Exception as err:
            conn.send({"error": f"{type(err).__name__}: {err}"})
            return
        conn.send({"idle_w": runner.idle_w, "measurement": runner.measurement})

        def ask_parent(measurement: Measurement) -> bool:
            conn.send({"ask": asdict(measurement)})
            return bool(conn.recv())

        while (job := conn.recv()) is not None:
            artifact, latency_bound_s, energy_bound_j = job
            try:
                result = runner.run(artifact, ask_parent,
                                    lambda seconds: conn.send({"expect_s": seconds}),
                                    latency_bound_s, energy_bound_j)
            except MeterError as err:
                conn.send({"harness_error": f"energy meter failed: {err}"})
                return
            conn.send({"result": asdict(result)})
            if result.status == "run_error" and spec.kind == "cuda":
                return  # the CUDA context may be corrupt: let the parent start a fresh worker
    except (EOFError, OSError):  # the parent is gone
        return
    finally:
        if meter is not None:
            meter.close()


def start_ignoring_sigint(proc: mp.Process) -> None:
    """Start a child that ignores Ctrl-C from its first instruction (Python keeps an inherited
    SIG_IGN), so an interrupt while it imports prints no traceback from it."""
    if threading.current_thread() is not threading.main_thread():
        proc.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)


class IsolatedRunner:
    """`run(artifact) -> Measurement`, like `Runner`, with the kernel in a separate process.

    wait=False: return once the worker is launched, without waiting for its imports, inputs,
    references and idle power (seconds for a large op), so builds can start meanwhile; the first
    `run` (or `ready`) waits for it. `measurement` is then the spec's until the worker confirms it."""

    slots = 1

    def __init__(self, spec: WorkerSpec, timeout_s: float = 120.0,
                 start_timeout_s: float = 900.0, wait: bool = True) -> None:
        self.spec, self.timeout_s, self.start_timeout_s = spec, timeout_s, start_timeout_s
        self.restarts = 0
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self.measurement: dict = spec.measurement()
        self.idle_w: float | None = None
        self._launch()
        if wait:
            self.ready()

    def _launch(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child, self.spec))
        start_ignoring_sigint(self._proc)
        child.close()
        self._started = False

    def ready(self) -> None:
        """Wait until the launched worker has started (its idle power measured)."""
        if self._started:
            return
        if not self._conn.poll(self.start_timeout_s):
            self._kill()
            raise WorkerError(f"measurement worker did not start in {self.start_timeout_s:.0f} s")
        try:
            ready = self._conn.recv()
        except EOFError:
            raise WorkerError(f"measurement worker died on start (exit code {self._exit()})")
        if "error" in ready:
            self._proc.join(10)
            raise WorkerError(f"measurement worker failed to start: {ready['error']}")
        if ready["measurement"] != self.measurement:
            self._kill()
            raise WorkerError(f"measurement worker measures as {ready['measurement']}, not as "
                              f"expected {self.measurement}")
        self.idle_w, self._started = ready["idle_w"], True

    def _exit(self) -> int | None:
        self._proc.join(10)
        return self._proc.exitcode

    def _kill(self) -> None:
        self._proc.kill()
        self._proc.join(10)

    def _restart(self) -> None:
        if self._proc.is_alive():
            self._kill()
        self.restarts += 1
        self._launch()
        self.ready()

    def run(self, artifact: str, decide: Callable[[Measurement], bool] = lambda m: True,
            latency_bound_s: float | None = None,
            energy_bound_j: float | None = None) -> Measurement:
        """Measure in the worker; `decide` answers the worker's "measure energy?" question."""
        self.ready()
        if not self._proc.is_alive():
            self._restart()
        self._conn.send((artifact, latency_bound_s, energy_bound_j))
        timeout = self.timeout_s
        while True:
            if not self._conn.poll(timeout):
                self._restart()
                return Measurement("run_error", error=f"timed out after {timeout:.3g} s; "
                                                      "worker restarted")
            try:
                message = self._conn.recv()
            except EOFError:
                code = self._exit()
                self._restart()
                return Measurement("run_error",
                                   error=f"worker crashed (exit code {code}); restarted")
            if "result" in message:
                return Measurement(**message["result"])
            if "harness_error" in message:
                self._exit()
                raise WorkerError(message["harness_error"])
            if "expect_s" in message:
                timeout = self.timeout_s + message["expect_s"]
                continue
            self._conn.send(decide(Measurement(**message["ask"])))

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(10)
            if self._proc.is_alive():
                self._kill()
