"""Extract a compact table of Nsight Compute metrics from this folder's raw.csv.gz.

    python3 experiments/results/gemv_ncu_h200_2026-12-01/extract.py

raw.csv.gz is `ncu -i gemv.ncu-rep --page raw --csv` (row 0: metric names, row 1: units, then one
row per profiled kernel, by ID). ncu_log.txt names the call each kernel belongs to: the kernels
profiled before the line "profiled call i: LABEL" belong to that call. Writes metrics.csv beside
this file, one row per kernel, with the units in the column names.
"""
from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent

# column name in metrics.csv -> (ncu metric, unit ncu must have used for it)
METRICS = {
    "time_us": ("gpu__time_duration.sum", "us"),
    "dram_read_MB": ("dram__bytes_read.sum", "Mbyte"),
    "dram_read_TBps": ("dram__bytes_read.sum.per_second", "Tbyte/s"),
    "warp_inst_M": ("smsp__inst_executed.sum", "inst"),
    "warps_active_pct": ("sm__warps_active.avg.pct_of_peak_sustained_active", "%"),
    "sm_clock_GHz": ("sm__cycles_elapsed.avg.per_second", "Ghz"),
    "regs_per_thread": ("launch__registers_per_thread", "register/thread"),
    "dyn_smem_KB": ("launch__shared_mem_per_block_dynamic", "Kbyte/block"),
    "lsu_global_ld_requests": ("l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum", ""),
    "tma_ld_MB": ("l1tex__m_xbar2l1tex_read_bytes_mem_global_op_tma_ld.sum", "Mbyte"),
    "gmma_pct": ("sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active", "%"),
}


def kernel_labels(log: str) -> dict[int, str]:
    """Kernel ID -> the call that launched it, from the order of ncu_log.txt."""
    labels, pending = {}, []
    for line in log.splitlines():
        if m := re.match(r'==PROF== Profiling ".*" - (\d+):', line):
            pending.append(int(m.group(1)))
        elif m := re.match(r"profiled call \d+: (.+)", line):
            labels.update({kid: m.group(1).strip() for kid in pending})
            pending = []
    return labels


def short_name(kernel: str) -> str:
    """A demangled name without its return type and template arguments."""
    return re.sub(r"^void |<.*$", "", kernel)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def main() -> None:
    with gzip.open(HERE / "raw.csv.gz", "rt", newline="") as f:
        rows = list(csv.reader(f))
    names, units, kernels = rows[0], rows[1], rows[2:]
    col = {name: i for i, name in enumerate(names)}
    for metric, unit in METRICS.values():
        got = units[col[metric]]
        if got != unit:
            raise SystemExit(f"{metric}: unit {got!r}, expected {unit!r}")
    labels = kernel_labels((HERE / "ncu_log.txt").read_text())
    out = []
    for k in kernels:
        kid = int(k[col["ID"]])
        row = {"id": kid, "call": labels[kid], "kernel": short_name(k[col["Kernel Name"]]),
               "grid": k[col["Grid Size"]], "block": k[col["Block Size"]]}
        for name, (metric, _) in METRICS.items():
            value = number(k[col[metric]])
            row[name] = round(value / 1e6, 3) if name == "warp_inst_M" else round(value, 3)
        out.append(row)
    with open(HERE / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)


if __name__ == "__main__":
    main()
