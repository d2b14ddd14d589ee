"""Live progress of a tune and the final summary table (rich)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .database import Record
from .objective import Objective
from ..schedules import Op

UNITS = {"latency": ("ms", 1e3), "energy": ("mJ", 1e3), "edp": ("mJ·ms", 1e6),
         "pareto": ("mJ·ms (EDP)", 1e6)}


def fmt(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
    return "-" if value is None else f"{value * scale:.{digits}g}"


def fmt_objective(objective: Objective, value: float | None) -> str:
    unit, scale = UNITS[objective.kind]
    return f"{fmt(value, scale)} {unit}" if value is not None else "none yet"


class LiveProgress:
    """Trials done, best so far in the objective, the last candidate's latency and energy,
    candidates per minute in this run, and energy measurements skipped (by the policy or by
    screening out a clearly slower candidate)."""

    def __init__(self, objective: Objective, total: int, done: int, console: Console,
                 best: float | None = None) -> None:
        self.objective, self.best, self.console, self.done = objective, best, console, done
        self.progress = Progress(TextColumn("[bold]tuning"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                 console=console, transient=False)
        self.task = self.progress.add_task("tune", total=total, completed=done, status="")
        self.started, self.new, self.energy_skipped = time.monotonic(), 0, 0

    def __enter__(self) -> "LiveProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, record: Record) -> None:
        value = self.objective.value(record.latency_s, record.energy_j) \
            if record.status == "ok" and not self.objective.max_slowdown else None
        if value is not None and (self.best is None or value < self.best):
            self.best = value
        meta = record.meta or {}
        last = f"last {record.status}"
        if record.status == "ok":
            last = f"last {fmt(record.latency_s, 1e3)} ms" + (
                f", {fmt(record.energy_j, 1e3)} mJ" if record.energy_j is not None else
                ", screened out" if meta.get("screened_out") else
                ", energy left to the model" if meta.get("energy_skipped") else "")
        best = "" if self.objective.max_slowdown else \
            f"best {self.objective.kind} {fmt_objective(self.objective, self.best)} | "
        self.new += 1
        self.energy_skipped += bool(meta.get("energy_skipped") or meta.get("screened_out"))
        minutes = max(time.monotonic() - self.started, 1e-9) / 60
        status = (best + last + f" | {self.new / minutes:.1f}/min, "
                  f"{self.energy_skipped} energy measurements skipped")
        self.progress.update(self.task, advance=1, status=status)
        self.done += 1
        if not self.console.is_terminal:  # logs get one line per trial instead of a live bar
            self.console.print(f"trial {self.done}: {status}")


def kernel_figures(op: Op, record: Record) -> dict[str, float | None]:
    """Latency, energy, power and efficiency of one measured kernel."""
    lat, energy = record.latency_s, record.energy_j
    return {
        "latency_ms": lat * 1e3,
        "energy_mj": None if energy is None else energy * 1e3,
        "power_w": record.power_w,
        "tflops": op.flops / lat / 1e12,
        "gflop_per_j": None if energy is None else op.flops / energy / 1e9,
    }


def summary_table(op: Op, rows: list[tuple[str, Record]]) -> Table:
    table = Table(title=f"{op.name} {op.shape_text()} {op.dtype} (- = not measured)")
    for col in ("kernel", "id", "ms", "mJ/call", "W", "TFLOP/s", "GFLOP/J"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for label, record in rows:
        f = kernel_figures(op, record)
        table.add_row(label, str(record.id), fmt(f["latency_ms"]), fmt(f["energy_mj"]),
                      fmt(f["power_w"]), fmt(f["tflops"]), fmt(f["gflop_per_j"]))
    return table
