"""Re-measure exported kernels in a fresh process, interleaved with the library on the same inputs.

    PYTHONPATH=/tmp/site:$PWD python3 -m experiments.remeasure_export EXPORT_DIR --out OUT [--rounds 3]

For every manifest (`<name>.json`, compiler/export.py) in EXPORT_DIR: the op is rebuilt from the
manifest, the .so is loaded with nothing but `tvm.runtime.load_module`, and measured by our Runner
(correctness on fresh random inputs, latency, NVML energy with measure/protocol.py), alternating
round by round with the library call (experiments/cublas_energy.py, fp16->fp32 for fp32 outputs,
fp16->fp16 otherwise) on the same inputs with the same protocol, L2 resident (as the tune measured
unless the manifest says otherwise). Writes OUT/summary.json (GUIDE section 6): per kernel the
median of the rounds for ours and the library, and the figures the tune recorded, so that one can
see whether they hold.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


from energy_tuner.schedules import op_from_description


def library_call(op, x):
    from experiments.cublas_energy import reference_name, torch_variants

    variants = torch_variants(op, x)
    name = reference_name(op)
    return (name, variants[name]) if name in variants else next(iter(variants.items()))


def measure_library(fn, meter, state) -> dict:
    from experiments.measure_fidelity import events_batch
    from energy_tuner.measure.protocol import Precision, measure_energy

    graph_calls = 20 if events_batch(fn, 1)(200) < 50e-6 else 1
    run_batch = events_batch(fn, graph_calls)
    run_batch(10)
    latency = statistics.median(run_batch(20) for _ in range(10))
    e = measure_energy(meter, run_batch, latency, Precision(), state["sm_clock_max_mhz"],
                       state["power_limit_w"])
    return {"ms": e.sustained_latency_s * 1e3, "burst_ms": latency * 1e3,
            "mj": e.energy_j * 1e3, "w": e.power_w}


def median_of(rounds: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rounds) for k in ("ms", "burst_ms", "mj", "w")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7, help="seed of the fresh inputs (not the tune's)")
    args = ap.parse_args()
    import pynvml
    import torch
    from experiments.cublas_energy import to_torch
    import tvm
    from energy_tuner.measure.meters import NvmlMeter
    from energy_tuner.measure.runner import MeasureConfig, Runner

    args.out.mkdir(parents=True, exist_ok=True)
    meter = NvmlMeter(0)
    state = meter.device_state()
    pynvml.nvmlInit()
    summary = {"gpu": torch.cuda.get_device_name(), "driver": pynvml.nvmlSystemGetDriverVersion(),
               "date": time.strftime("%Y-%m-%d"), "commit": os.environ.get("COMMIT", "unknown"),
               "command": "python -m experiments.remeasure_export " + " ".join(sys.argv[1:]),
               "l2": "resident", "rows": []}
    for manifest_path in sorted(args.export_dir.glob("*.json")):
        manifest = json.loads(manifest_path.read_text())
        op = op_from_description(manifest)
        runner = Runner(op, tvm.cuda(0), meter, MeasureConfig(), seed=args.seed)
        x = [to_torch(a.numpy()) for a in runner.arg_sets[0]]
        ref_name, fn = library_call(op, x)
        ours, ref = [], []
        for i in range(args.rounds):
            m = runner.run(str(manifest_path.with_name(manifest["library"])))
            if m.status != "ok":
                raise SystemExit(f"{manifest_path.name}: {m.status}: {m.error}")
            sustained = m.meta.get("sustained_latency_s") or m.latency_s
            ours.append({"ms": sustained * 1e3, "burst_ms": m.latency_s * 1e3,
                         "mj": m.energy_j * 1e3, "w": m.power_w, "rel_error": m.rel_error})
            ref.append(measure_library(fn, meter, state))
            print(f"{manifest_path.stem} round {i + 1}: ours {ours[-1]['ms']:.4f} ms "
                  f"{ours[-1]['mj']:.2f} mJ {ours[-1]['w']:.0f} W | {ref_name} "
                  f"{ref[-1]['ms']:.4f} ms {ref[-1]['mj']:.2f} mJ {ref[-1]['w']:.0f} W", flush=True)
        tuned = manifest["measured"]
        row = {"case": manifest_path.stem, "op": op.name, "shape": op.shape, "dtype": op.dtype,
               "out_dtype": op.output_dtype, "params": dict(op.params),
               "ours": {**median_of(ours), "objective": manifest["objective"],
                        "db_record": manifest["db_record_id"],
                        "rel_error": max(r["rel_error"] for r in ours), "rounds": ours},
               "ref": {"name": ref_name, **median_of(ref), "rounds": ref},
               "tune_recorded": {"burst_ms": tuned["latency_ms"], "mj": tuned["energy_mj"],
                                 "w": tuned["power_w"]}}
        row["energy_vs_ref"] = row["ours"]["mj"] / row["ref"]["mj"]
        row["time_vs_ref"] = row["ours"]["ms"] / row["ref"]["ms"]
        if tuned["energy_mj"]:
            row["energy_vs_tune"] = row["ours"]["mj"] / tuned["energy_mj"]
        summary["rows"].append(row)
        print(json.dumps({k: row[k] for k in ("case", "energy_vs_ref", "time_vs_ref")}
                         | {"energy_vs_tune": row.get("energy_vs_tune")}), flush=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    meter.close()


if __name__ == "__main__":
    main()
