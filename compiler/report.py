"""Live progress of a tune and the final summary table (rich)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
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


def param_tags(op: Op) -> list[str]:
    """The op's parameters as short tags (wbits, group size, zero points, implementation,
    accumulation): in export names and the summary, so W2 and W4, or float16 and float32
    accumulation, of one shape are told apart."""
    p = op.params
    tags = [f"w{p['wbits']}"] if "wbits" in p else []
    tags += [f"g{p['group_size']}"] if "group_size" in p else []
    tags += [("zp" if p["zero_points"] else "sym")] if "zero_points" in p else []
    tags += [str(p["impl"])] if "impl" in p else []
    tags += [f"acc-{p['accum']}"] if p.get("accum") else []
    known = {"wbits", "group_size", "zero_points", "impl", "accum"}
    return tags + [f"{k}-{v}" for k, v in sorted(p.items()) if k not in known]


def op_title(op: Op, with_impl: bool = True) -> str:
    """e.g. "lut_mpgemm m=1,n=4096,k=4096 float16 w2 g128 sym lut"."""
    tags = [t for t in param_tags(op) if with_impl or t != op.params.get("impl")]
    return " ".join([op.name, op.shape_text(), op.dtype, *tags])


def kernel_figures(op: Op, record: Record) -> dict[str, float | None]:
    """Latency, energy, power and efficiency of one measured kernel."""
    lat, energy = record.latency_s, record.energy_j
    return {
        "latency_ms": lat * 1e3,
        "energy_mj": None if not energy else energy * 1e3,
        "power_w": record.power_w,
        "tflops": op.flops / lat / 1e12,
        "gflop_per_j": None if not energy else op.flops / energy / 1e9,
    }


def summary_table(op: Op, rows: list[tuple[str, Record]]) -> Table:
    table = Table(title=escape(f"{op_title(op, with_impl=False)} (- = not measured)"))
    for col in ("kernel", "id", "ms", "mJ/call", "W", "TFLOP/s", "GFLOP/J"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for label, record in rows:
        f = kernel_figures(op, record)
        table.add_row(escape(label), str(record.id), fmt(f["latency_ms"]), fmt(f["energy_mj"]),
                      fmt(f["power_w"]), fmt(f["tflops"]), fmt(f["gflop_per_j"]))
    return table
