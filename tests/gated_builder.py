"""A real Builder whose chosen builds wait for an event before compiling, and a log of events.

Every build runs in the Builder's worker processes as usual; each writes `start N PID` and
`end N` to a log (N: the build's place in the order of submission, from 1). Build N in `gates`
first waits until the log holds a line starting with `gates[N]` (or GATE_LIMIT_S passed: a bound
for a regression, so that a test fails instead of hanging). So a test can make builds finish out of
order, or keep one running, and assert on the order of events rather than on wall time.
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

import cloudpickle

from energy_tuner.compiler.builder import Builder

GATE_LIMIT_S = 300.0
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import tests


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def logged(log: Path, prefix: str) -> str | None:
    """The first line of the log starting with `prefix`, if any."""
    return next((line for line in lines(log) if line.startswith(prefix)), None)


def gated_build(log: Path, number: int, gate: str | None, fn, args) -> str:
    with open(log, "a") as f:
        f.write(f"start {number} {os.getpid()}\n")
    deadline = time.monotonic() + GATE_LIMIT_S
    while gate is not None and not logged(log, gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    path = fn(*args)
    with open(log, "a") as f:
        f.write(f"end {number}\n")
    return path


def wait_for(log: Path, prefix: str) -> str:
    """The first line starting with `prefix`, once it has been logged."""
    deadline = time.monotonic() + GATE_LIMIT_S
    while (line := logged(log, prefix)) is None:
        assert time.monotonic() < deadline, f"{prefix!r} never logged: {lines(log)}"
        time.sleep(0.05)
    return line


class GatedBuilder(Builder):
    def __init__(self, *args, log: Path, gates: dict[int, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log, self.gates, self.numbers = log, gates, itertools.count(1)

    def job(self, mod, *rest):
        made, number = super().job(mod, *rest), next(self.numbers)   # numbered as submitted

        def gated_job():
            fn, args = made()
            return gated_build, (self.log, number, self.gates.get(number), fn, args)
        return gated_job


def gated(log: Path, gates: dict[int, str], workers: int | None = None):
    """A stand-in for compiler.search.Builder: GatedBuilders (with `workers` workers if given)."""
    def make(*args, **kwargs) -> GatedBuilder:
        if workers is not None:
            kwargs["workers"] = workers
        return GatedBuilder(*args, log=log, gates=gates, **kwargs)
    return make
