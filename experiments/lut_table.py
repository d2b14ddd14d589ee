"""Table of lut_benchmark.sh runs: per weight shape, M and bit width, the fastest LUT and dequant
kernels (with their energy) beside cuBLAS fp16 on the same M, N, K, and the targets' verdicts.

    python -m experiments.lut_table RESULTS_DIR [RESULTS_DIR ...] > table.md
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from energy_tuner.compiler.database import Record, TuningDatabase
from energy_tuner.compiler.objective import Objective

TARGETS = {2: 3.0, 4: 2.0}  # W2: >= 3x faster and less energy than fp16 at M = 1; W4: >= 2x


def lut_records(db_path: Path) -> list[Record]:
    db = TuningDatabase(db_path)
    keys = [k for (k,) in db.conn.execute("SELECT DISTINCT workload_key FROM candidates")]
    records = [r for key in keys for r in db.records(key) if r.workload["op"] == "lut_mpgemm"]
    db.close()
    return records


def best_per_config(records: list[Record]) -> dict[tuple, dict[str, Record]]:
    """{(n, k, m, bits): {impl: fastest correct record}}."""
    groups: dict[tuple, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        shape, params = r.workload["shape"], r.workload["params"]
        config = (shape["n"], shape["k"], shape["m"], params["wbits"])
        groups[config][params["impl"]].append(r)
    fastest = Objective("latency")
    return {config: {impl: best for impl, rs in impls.items()
                     if (best := fastest.choose(rs)) is not None}
            for config, impls in groups.items()}


def cublas_fp16(results: Path, m: int, n: int, k: int) -> dict | None:
    path = results / f"cublas_{m}_{n}_{k}.json"
    if not path.exists():
        return None
    return next((c for c in json.loads(path.read_text()) if c["kernel"] == "cublas fp16->fp16"), None)


def _cell(latency_s: float | None, energy_j: float | None) -> str:
    if latency_s is None:
        return "not measured | not measured"
    energy = "not measured" if energy_j is None else f"{energy_j * 1e6:.1f}"
    return f"{latency_s * 1e6:.1f} | {energy}"


def rows(results: Path) -> list[str]:
    out = []
    for (n, k, m, bits), impls in sorted(best_per_config(lut_records(results / "lut.sqlite")).items()):
        lut, deq = impls.get("lut"), impls.get("dequant")
        ref = cublas_fp16(results, m, n, k)
        best = min((r for r in (lut, deq) if r), key=lambda r: r.latency_s, default=None)
        speed = ratio = verdict = "-"
        if best and ref:
            speed = f"{ref['latency_s'] / best.latency_s:.2f}x"
            if best.energy_j:
                ratio = f"{ref['energy_j'] / best.energy_j:.2f}x"
            if m == 1 and bits in TARGETS and best.energy_j:
                met = min(ref["latency_s"] / best.latency_s, ref["energy_j"] / best.energy_j) \
                    >= TARGETS[bits]
                verdict = f"{'met' if met else 'NOT met'} (>= {TARGETS[bits]:g}x)"
        picked = best.workload["params"]["impl"] if best else "-"
        out.append(f"| {n}x{k} | {m} | W{bits} | "
                   + " | ".join([_cell(lut and lut.latency_s, lut and lut.energy_j),
                                 _cell(deq and deq.latency_s, deq and deq.energy_j),
                                 _cell(ref and ref["latency_s"], ref and ref["energy_j"]),
                                 picked, speed, ratio, verdict]) + " |")
    return out


HEADER = ["| N x K | M | bits | LUT µs | LUT µJ | dequant µs | dequant µJ | cuBLAS fp16 µs | "
          "cuBLAS fp16 µJ | picked | speed-up vs fp16 | energy ratio vs fp16 | target |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def main(dirs: list[str]) -> None:
    lines = list(HEADER)
    for d in dirs:
        lines += rows(Path(d))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
