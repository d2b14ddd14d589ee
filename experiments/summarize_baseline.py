"""Markdown table of a gpu_baseline.sh run: each tune's chosen kernel beside cuBLAS.

    python -m experiments.summarize_baseline experiments/results/matmul4096_fp16_h200_2026-11-21
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from energy_tuner.compiler.report import kernel_figures
from energy_tuner.compiler.report_cli import read_records
from energy_tuner.compiler.objective import Objective
from energy_tuner.schedules import make_op


def cublas_figures(entry: dict) -> dict[str, float]:
    """An experiments/cublas_energy.py result as `kernel_figures` names its figures."""
    return {"latency_ms": entry["latency_s"] * 1e3, "energy_mj": entry["energy_j"] * 1e3,
            "power_w": entry["power_w"], "tflops": entry["tflops"],
            "gflop_per_j": entry["gflop_per_j"]}


def row(label: str, f: dict) -> str:
    cells = [f"{f['latency_ms']:.4f}", f"{f['energy_mj']:.1f}", f"{f['power_w']:.0f}",
             f"{f['tflops']:.0f}", f"{f['gflop_per_j']:.0f}"]
    return f"| {label} | " + " | ".join(cells) + " |"


def main(results: Path) -> None:
    lines = ["| kernel | latency (ms) | energy/call (mJ) | avg power (W) | TFLOP/s | GFLOP/J |",
             "|---|---|---|---|---|---|"]
    for objective in ("latency", "energy"):
        db_file = results / f"{objective}.sqlite.gz"
        if not db_file.exists():
            continue
        records = read_records(db_file)
        wl = records[0].workload
        op = make_op(wl["op"], ",".join(str(v) for v in wl["shape"].values()), wl["dtype"])
        chosen = Objective(objective).choose(records)
        ok = sum(r.status == "ok" for r in records)
        lines.append(row(f"TVM, `--objective {objective}` (best of {ok} correct of "
                         f"{len(records)}, db id {chosen.id})", kernel_figures(op, chosen)))
        cublas = json.loads((results / f"cublas_{objective}.json").read_text())
        for c in cublas:
            lines.append(row(f"{c['kernel']} (same call)", cublas_figures(c)))
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
