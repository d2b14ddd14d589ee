"""The objective table of an experiments/objective_table.sh run (arXiv 2411.18873 style).

    python -m experiments.objective_table OUTDIR

Per case (a folder of OUTDIR): the kernel each of the three tunes chose (latency, energy, energy
within a slowdown bound; `<tune>.sqlite`, or `.sqlite.gz` once archived) beside the library calls
of `cublas.json`, with each kernel's energy and latency change against the latency-tuned kernel.
A case meets the target when its energy or bounded-energy kernel uses at least 25% less energy at
no more than 3% more latency; the run meets it when at least half of the cases do. Prints the
markdown table and writes it with a CSV to OUTDIR/objective_table.{md,csv}.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler.report import fmt, kernel_figures
from energy_tuner.compiler.report_cli import read_records
from experiments.summarize_baseline import cublas_figures
from energy_tuner.schedules import op_from_description

TUNES = ("latency", "energy", "slowdown")   # database names; the latency tune is the reference
MIN_SAVING, MAX_SLOWDOWN = 0.25, 0.03       # the target: >= 25% less energy, <= 3% more latency
FIGURES = ("latency_ms", "energy_mj", "power_w", "tflops", "gflop_per_j")


@dataclass
class Row:
    case: str
    kernel: str
    shape: str = ""
    db_id: int | None = None
    correct: str = ""                        # "correct of measured" candidates of the tune
    latency_ms: float | None = None
    energy_mj: float | None = None
    power_w: float | None = None
    tflops: float | None = None
    gflop_per_j: float | None = None
    d_energy: float | None = None            # relative to the latency-tuned kernel
    d_latency: float | None = None
    meets: bool | None = None                # None: not a candidate for the target


def change(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base - 1


def tune_row(case_dir: Path, tune: str) -> Row:
    """The kernel a tune chose by its own objective, from its database as written (.sqlite) or
    archived (.sqlite.gz)."""
    case, dbs = case_dir.name, sorted(case_dir.glob(f"{tune}.sqlite*"))
    records = read_records(dbs[0]) if dbs else []
    if not records:
        return Row(case, f"TVM {tune}: not run")
    objective = Objective.from_key(records[0].objective)
    chosen = objective.choose(records)
    ok = sum(r.status == "ok" for r in records)
    row = Row(case, f"TVM, {objective.label}", correct=f"{ok} of {len(records)}")
    if chosen is None:
        row.kernel += ": no kernel"
        return row
    op = op_from_description(chosen.workload)
    row.shape, row.db_id = f"{op.name} {op.shape_text()} {op.dtype}", chosen.id
    for key, value in kernel_figures(op, chosen).items():
        setattr(row, key, value)
    return row


def case_rows(case_dir: Path) -> list[Row]:
    """The three tunes and the library calls of one case, compared with the latency tune."""
    rows = [tune_row(case_dir, tune) for tune in TUNES]
    cublas = case_dir / "cublas.json"
    for entry in json.loads(cublas.read_text()) if cublas.exists() else []:
        rows.append(Row(case_dir.name, entry["kernel"], shape=rows[0].shape,
                        **cublas_figures(entry)))
    base = rows[0]
    for row in rows[1:]:
        row.d_energy = change(row.energy_mj, base.energy_mj)
        row.d_latency = change(row.latency_ms, base.latency_ms)
        if row.kernel.startswith("TVM"):
            row.meets = (row.d_energy is not None and row.d_latency is not None
                         and row.d_energy <= -MIN_SAVING and row.d_latency <= MAX_SLOWDOWN)
    return rows


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def markdown(rows: list[Row]) -> str:
    lines = ["| case | kernel | db id | correct | latency (ms) | energy/call (mJ) | power (W) | "
             "TFLOP/s | GFLOP/J | energy vs latency-tuned | latency vs latency-tuned | "
             "target met |", "|" + "---|" * 12]
    for r in rows:
        cells = [r.case, r.kernel, "" if r.db_id is None else str(r.db_id), r.correct,
                 *(fmt(getattr(r, k)) for k in FIGURES), pct(r.d_energy), pct(r.d_latency),
                 {None: "", True: "yes", False: "no"}[r.meets]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each TVM kernel's figures were measured during its own tune; the tunes of a "
                  "case and then its library calls ran one after another on one GPU.", "",
              f"Target: >= {MIN_SAVING:.0%} less energy at <= {MAX_SLOWDOWN:.0%} more latency than "
              "the latency-tuned kernel, by the energy or the bounded-energy tune.", "",
              "| case | shape | target met |", "|---|---|---|"]
    cases = dict.fromkeys(r.case for r in rows)
    shapes = {r.case: r.shape for r in rows if r.shape}
    met = 0
    for case in cases:
        how = "; ".join(f"yes: {r.kernel}, {pct(r.d_energy)} energy, {pct(r.d_latency)} latency"
                        for r in rows if r.case == case and r.meets)
        lines.append(f"| {case} | {shapes.get(case, '')} | {how or 'no'} |")
        met += bool(how)
    reached = 2 * met >= len(cases) > 0
    lines += ["", f"Met on {met} of {len(cases)} cases: target "
                  f"{'reached' if reached else 'not reached'} (needs at least half)."]
    return "\n".join(lines)


def pooled(case_dir: Path) -> str:
    """What every kernel the case's tunes measured offers, whichever tune found it: the fastest,
    and the least energy within 1 + MAX_SLOWDOWN of it (separates the trade-off that exists in
    the measured kernels from which tune happened to find what)."""
    records = [r for db in sorted(case_dir.glob("*.sqlite*")) for r in read_records(db)
               if r.status == "ok" and r.energy_j is not None]
    fastest = Objective("latency").choose(records)
    if fastest is None:
        return f"| {case_dir.name} | 0 | - | - | - | - |"
    frugal = Objective("energy", 1 + MAX_SLOWDOWN).choose(records)
    return (f"| {case_dir.name} | {len(records)} | {fastest.latency_s * 1e3:.4g} ms, "
            f"{fastest.energy_j * 1e3:.4g} mJ | {frugal.latency_s * 1e3:.4g} ms, "
            f"{frugal.energy_j * 1e3:.4g} mJ | {pct(change(frugal.energy_j, fastest.energy_j))} | "
            f"{pct(change(frugal.latency_s, fastest.latency_s))} |")


def main(out: Path) -> str:
    cases = sorted(p for p in out.iterdir() if p.is_dir())
    rows = [r for d in cases for r in case_rows(d)]
    text = markdown(rows) + "\n".join([
        "", "", f"Pooled: every correct kernel with measured energy from a case's three tunes; "
        f"the fastest, and the least energy within {1 + MAX_SLOWDOWN:g}x of it.", "",
        "| case | kernels | fastest | least energy within bound | energy | latency |",
        "|---|---|---|---|---|---|", *(pooled(d) for d in cases)])
    (out / "objective_table.md").write_text(text + "\n")
    with open(out / "objective_table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
