"""A fake powercap tree (the hardware boundary of the RAPL meter) driven by the real clock.

Each package's energy_uj is start + watts x (time.monotonic() - origin), wrapped at
max_energy_range_uj, rewritten every `tick_s` by a separate process (atomically, by rename), so
the energy any reader sees depends only on when it reads, never on how long a sleep really slept
or on the GIL of the process that measures.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path


def _write(root: Path, index: int, value: int) -> None:
    domain = root / f"intel-rapl:{index}"
    tmp = domain / ".energy_uj.tmp"
    tmp.write_text(str(value))
    os.replace(tmp, domain / "energy_uj")


def _tick(root: Path, watts, start_uj, max_range_uj: int, tick_s: float, origin: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        now = time.monotonic()
        for i, (w, start) in enumerate(zip(watts, start_uj)):
            _write(root, i, (start + round(w * (now - origin) * 1e6)) % max_range_uj)
        time.sleep(tick_s)


class ClockPowercap:
    """`with ClockPowercap(tmp_path) as tree:` a running tree; `tree.stop()` freezes it."""

    def __init__(self, root: Path, watts=(30.0, 20.0), start_uj=(0, 0),
                 max_range_uj: int = 2 ** 32, tick_s: float = 1e-3) -> None:
        self.root, self.watts = Path(root), tuple(watts)
        self.args = (self.root, self.watts, tuple(start_uj), max_range_uj, tick_s)
        for i, start in enumerate(start_uj):
            domain = self.root / f"intel-rapl:{i}"
            (domain / "sub").mkdir(parents=True)
            (domain / "max_energy_range_uj").write_text(str(max_range_uj))
            _write(self.root, i, start)
            sub = self.root / f"intel-rapl:{i}:0"   # a sub-domain: the meter must ignore it
            sub.mkdir()
            (sub / "energy_uj").write_text("0")
        self._proc = None

    @property
    def total_watts(self) -> float:
        return sum(self.watts)

    def __enter__(self) -> "ClockPowercap":
        self._proc = mp.get_context("spawn").Process(target=_tick,
                                                     args=(*self.args, time.monotonic()),
                                                     daemon=True)
        self._proc.start()
        first = (self.root / "intel-rapl:0" / "energy_uj").read_text()
        while (self.root / "intel-rapl:0" / "energy_uj").read_text() == first:
            time.sleep(0.001)       # ticking
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join(10)
            self._proc = None

    def __exit__(self, *exc) -> None:
        self.stop()
