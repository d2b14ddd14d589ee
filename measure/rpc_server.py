"""A measurement server for TVM's RPC tracker: `python -m energy_tuner.measure.rpc_server
--tracker HOST:PORT --key KEY [--device N]`, one per GPU (or CPU socket).

It is `tvm.rpc.Server` with our measurement functions registered as TVM global functions
(`server_init_callback`); TVM forks one session process per client connection, and in it
`energy_tuner.rpc.open` starts our local measurement worker (`measure.worker.IsolatedRunner`:
correctness, latency, energy through this machine's meter for the server's device, idle power
measured once at start). A kernel that crashes or hangs costs only that worker, as locally; the
session itself dying is what the client (`measure.rpc.RpcPool`) reads as a lost worker.

A remote call cannot call back into the client, so one measurement is a small exchange:
`submit(file, latency bound)` starts it, `next(wait_s)` returns its next event (a question
"measure energy?" answered with `answer(bool)`, then the result), each a pickled dict in base64.
"""
from __future__ import annotations

import argparse
import base64
import os
import pickle
import platform
import queue
import socket
import sys
import threading
from dataclasses import asdict, replace
from multiprocessing import util

PREFIX = "energy_tuner.rpc."


def encode(value) -> str:
    return base64.b64encode(pickle.dumps(value)).decode()


def decode(text: str):
    return pickle.loads(base64.b64decode(text))


def parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" -> (host, port); ValueError with a readable message otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"tracker address must be HOST:PORT, got {text!r}")
    return host, int(port)


def device_name(kind: str, index: int) -> str:
    """The measured device's name: the GPU's (NVML), or the CPU model."""
    if kind == "cuda":
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
        finally:
            pynvml.nvmlShutdown()
        return name.decode() if isinstance(name, bytes) else name
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return models[0] if models else platform.processor() or "cpu"
    except OSError:
        return platform.processor() or "cpu"


class Session:
    """One client's measurement worker, in the session process TVM forked for it."""

    def __init__(self, spec, device_index: int) -> None:
        from .meters import meter_problem, powercap_root
        from .worker import IsolatedRunner

        if spec.powercap is not None:  # energy wanted: measured where this machine has a meter
            root = powercap_root()
            spec = replace(spec, powercap=None if meter_problem(spec.kind, device_index, root)
                           else root)
        spec = replace(spec, device_index=device_index)
        self.runner = IsolatedRunner(spec)
        self.info = {"host": socket.gethostname(), "pid": os.getppid(),  # the server's
                     "device_index": device_index,
                     "device_name": device_name(spec.kind, device_index),
                     "idle_w": self.runner.idle_w}
        self.events: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()
        util.Finalize(self, self.runner.close, exitpriority=10)  # before mp joins its children

    def submit(self, path: str, latency_bound_s: float | None,
               energy_bound_j: float | None) -> None:
        threading.Thread(target=self._measure, args=(path, latency_bound_s, energy_bound_j),
                         daemon=True).start()

    def _measure(self, path: str, latency_bound_s: float | None,
                 energy_bound_j: float | None) -> None:
        from .worker import WorkerError

        try:
            result = self.runner.run(path, self._ask, latency_bound_s, energy_bound_j)
            self.events.put({"result": asdict(result), "restarts": self.runner.restarts})
        except WorkerError as err:
            self.events.put({"harness_error": str(err)})
        except Exception as err:  # anything else is this worker's failure too, not the kernel's
            self.events.put({"harness_error": f"{type(err).__name__}: {err}"})
        finally:
            try:
                os.remove(path)
            except OSError:
                pass

    def _ask(self, measurement) -> bool:
        self.events.put({"ask": asdict(measurement)})
        return self.answers.get()


def register(device_index: int) -> None:
    """Register the remote functions (the server's init callback, run before TVM forks sessions)."""
    import tvm
    import tvm_ffi

    session: dict = {}

    @tvm_ffi.register_global_func(PREFIX + "open", override=True)
    def open_(spec: str) -> str:
        try:
            session["s"] = Session(decode(spec), device_index)
        except Exception as err:
            return encode({"error": f"{type(err).__name__}: {err}"})
        s = session["s"]
        return encode({**s.info, "measurement": s.runner.measurement})

    @tvm_ffi.register_global_func(PREFIX + "submit", override=True)
    def submit(file_name: str, latency_bound_s: float, energy_bound_j: float) -> None:
        path = tvm.get_global_func("tvm.rpc.server.workpath")(file_name)
        session["s"].submit(path, None if latency_bound_s < 0 else latency_bound_s,
                            None if energy_bound_j < 0 else energy_bound_j)

    @tvm_ffi.register_global_func(PREFIX + "next", override=True)
    def next_(wait_s: float) -> str:
        try:
            return encode(session["s"].events.get(timeout=wait_s))
        except queue.Empty:
            return ""

    @tvm_ffi.register_global_func(PREFIX + "answer", override=True)
    def answer(yes: int) -> None:
        session["s"].answers.put(bool(yes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m energy_tuner.measure.rpc_server",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--tracker", required=True, help="the RPC tracker, HOST:PORT")
    p.add_argument("--key", required=True, help="the key clients ask the tracker for, e.g. h200")
    p.add_argument("--device", type=int, default=0, help="the device index this server measures on")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=9091, help="first port to try")
    p.add_argument("--port-end", type=int, help="end of the ports to try (default: PORT + 100)")
    p.add_argument("--custom-addr", help="address reported to the tracker (default: as seen)")
    args = p.parse_args(argv)
    from . import rpc_server  # this module by its name (not __main__), for TVM to pickle

    try:
        tracker = parse_address(args.tracker)
    except ValueError as err:
        print(f"rpc_server: error: {err}", file=sys.stderr)
        return 2
    from functools import partial

    from tvm import rpc

    port_end = args.port + 100 if args.port_end is None else args.port_end
    server = rpc.Server(args.host, args.port, port_end, tracker_addr=tracker, key=args.key,
                        custom_addr=args.custom_addr, silent=True,
                        server_init_callback=partial(rpc_server.register, args.device))
    print(f"measurement server on port {server.port}, device {args.device}, key {args.key!r}, "
          f"tracker {args.tracker}", flush=True)
    server.proc.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
