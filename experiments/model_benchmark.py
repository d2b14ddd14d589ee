"""GPU benchmark: a decoder layer's energy and latency per forward pass, our library vs torch eager.

    python -m experiments.model_benchmark OUT [--trials 256] [--objective energy]
                                              [--cases decode1,decode16,prefill2048] [--served-only]
                                              [--merge]

The issue's layer (hidden 4096, FFN 14336, 32 heads, 8 KV heads, float16) in decode at batch 1
and 16 (one token after a 2047-token KV cache) and in prefill (2048 tokens). Per case:
1. `api.tune_model` tunes the layer's tasks from one budget (db OUT/tune.sqlite, shared by the
   cases, so re-running resumes) and measures each task's torch call in the same run
   (model_tuner.torch_baseline: CUDA-graph replays, energy by measure/protocol.py): kernel by
   kernel, and summed per forward pass (tasks only);
2. the chosen kernels are exported to OUT/<case>/lib, loaded, and served to the torch layer
   (experiments/decoder_layer.py; nn.Linear only, attention stays with torch); the whole layer,
   eager and served, is measured as back-to-back forward passes, interleaved A/B/A/B, with the
   same energy protocol, first Python-launched (`ms`, `mj`, `w`: what a Python caller gets,
   launch gaps included), then as CUDA-graph replays of the same passes on the same static
   inputs (`graph_ms`, `graph_mj`, `graph_w`: the kernels without launch gaps; where a layer
   cannot be captured, `graph_error` says why); the served output is checked against eager.
`--served-only` tunes only the tasks the served layer runs (its linears: gemv, linear, matmul);
the attention products are then neither tuned nor in the per-task rows.
`--merge` serves the layer with its parallel linears merged (compiler/merge.py: q/k/v as one
linear, gate/up as one), so the merged tasks are tuned (the spec's merge_linears); `ref` stays
torch eager on the unmerged layer (the user's baseline), and the layer row's `ref_merged` is torch
eager on the merged layer, measured in the same A/B/C rounds (merging's effect on torch alone).
Writes OUT/summary.json (GUIDE §6 format; `ms` is the sustained per-call time of the energy
windows) and OUT/<case>/report.json. Needs a CUDA GPU with NVML.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from energy_tuner.compiler import api
from energy_tuner.measure.cuda_graph import try_graph_batch
from energy_tuner.measure.l2_policy import l2_policy
from energy_tuner.measure.meters import open_meter
from energy_tuner.measure.protocol import Precision, measure_energy
from experiments.decoder_layer import FULL, DecoderLayer, example_inputs

SERVED_OPS = ("gemv", "linear", "matmul")   # what LibraryLinear dispatches an nn.Linear to
CASES = {"decode1": (1, 2048, "decode"), "decode16": (16, 2048, "decode"),
         "prefill2048": (1, 2048, "prefill")}


def python_batch(layer, inputs):
    """run_batch of Python-launched back-to-back forward passes."""
    def run_batch(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            layer(*inputs)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / calls
    return run_batch


def measure_forward(run_batch, meter) -> dict:
    """Sustained ms, mJ and W per forward pass of `run_batch`."""
    run_batch(3)
    latency = min(run_batch(20) for _ in range(3))
    energy = measure_energy(meter, run_batch, latency, Precision())
    return {"ms": energy.sustained_latency_s * 1e3, "mj": energy.energy_j * 1e3,
            "w": energy.power_w, "flags": energy.flags}


def layer_figures(windows: dict, side: str, tokens: int, graph_error: str | None) -> dict:
    """One side's layer figures: its least-energy Python-launched window, and its
    least-energy graph window (`graph_*`) or the capture's error."""
    best = min(windows[side], key=lambda w: w["mj"])
    out = {**best, "mj_per_token": best["mj"] / tokens}
    graphs = windows.get(f"{side}_graph")
    if not graphs:
        return {**out, "graph_error": graph_error}
    best = min(graphs, key=lambda w: w["mj"])
    return {**out, **{f"graph_{k}": v for k, v in best.items()},
            "graph_mj_per_token": best["mj"] / tokens}


def run_case(name: str, out: Path, args, meter) -> tuple[list[dict], dict]:
    batch, seq, phase = CASES[name]
    spec = {"model": "decoder_layer", **FULL, "batch": batch, "seq": seq, "phase": phase,
            **({"merge_linears": True} if args.merge else {})}
    run = api.tune_model(spec, target="cuda", dtype="float16", objective=args.objective,
                         trials=args.trials, db=out / "tune.sqlite", export=out / name / "lib",
                         ops=SERVED_OPS if args.served_only else None)
    rows = []
    for r in run.results:
        op = r.task.make_op()
        row = {"case": f"{name}/{r.task.label}", "op": r.task.op, "shape": r.task.shape,
               "dtype": r.task.dtype, "out_dtype": op.output_dtype, "count": r.task.count,
               "l2": l2_policy("auto", op)}
        if r.ours:
            row["ours"] = {"ms": r.ours.latency_s * 1e3, "objective": args.objective.label,
                           "trials": r.trials, "db_record": r.ours.id, "rel_error": r.ours.rel_error}
            if r.ours.energy_j is not None:
                row["ours"].update(mj=r.ours.energy_j * 1e3, w=r.ours.power_w)
        if r.torch:
            row["ref"] = {"name": r.torch.name, "ms": r.torch.latency_s * 1e3}
            if r.torch.energy_j is not None:
                row["ref"].update(mj=r.torch.energy_j * 1e3, w=r.torch.power_w)
        rows.append(row)
    torch.manual_seed(0)
    layer = DecoderLayer(**FULL).to("cuda", torch.float16).eval()
    inputs = example_inputs(layer, batch, seq, phase, torch.float16, "cuda")
    served = DecoderLayer(**FULL).to("cuda", torch.float16).eval()
    served.load_state_dict(layer.state_dict())
    modules = {"eager": layer, "served": api.merge_linears(served) if args.merge else served}
    if args.merge:
        modules["eager_merged"] = api.merge_linears(layer)
    lib = api.load(out / name / "lib")
    with torch.inference_mode():
        lib.serve(modules["served"])
        expected = layer(*inputs)
        rel = {side: float((m(*inputs).float() - expected.float()).norm() / expected.float().norm())
               for side, m in modules.items() if side != "eager"}
        windows = {side: [] for side in modules}
        for _ in range(2):                           # A/B(/C)/A/B(/C) within one run
            for side, module in modules.items():
                windows[side].append(measure_forward(python_batch(module, inputs), meter))
        graphs, graph_errors = {}, {}
        for side, module in modules.items():         # the same passes, without launch gaps
            latency = min(w["ms"] for w in windows[side]) / 1e3
            graph, graph_errors[side] = try_graph_batch(lambda m=module: m(*inputs), latency)
            if graph is not None:
                graphs[side] = graph
        for _ in range(2):
            for side, graph in graphs.items():
                windows.setdefault(f"{side}_graph", []).append(measure_forward(graph, meter))
    tokens = batch * (seq if phase == "prefill" else 1)
    row = {"case": f"{name}/layer", "op": "decoder_layer", "shape": spec, "dtype": "float16",
           "ours": {**layer_figures(windows, "served", tokens, graph_errors["served"]),
                    "rel_error": rel["served"], "objective": args.objective.label},
           "ref": {"name": f"torch {torch.__version__} eager",
                   **layer_figures(windows, "eager", tokens, graph_errors["eager"])}}
    if args.merge:
        row["ref_merged"] = {"name": f"torch {torch.__version__} eager, linears merged",
                             **layer_figures(windows, "eager_merged", tokens,
                                             graph_errors["eager_merged"]),
                             "rel_error": rel["eager_merged"]}
    rows.append(row)
    report = {**run.to_dict(), "layer_windows": windows, "rel_error_vs_eager": rel["served"],
              "rel_error_merged_torch_vs_eager": rel.get("eager_merged"),
              "merged_linears": modules["served"].meta["merged_linears"] if args.merge else None,
              "graph_errors": graph_errors,
              "graph_calls_per_replay": {k: g.calls_per_replay for k, g in graphs.items()},
              "kernel_calls": {k.entry["library"]: k.calls for k in lib.kernels}}
    (out / name / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return rows, report


def main() -> None:
    import pynvml

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--trials", type=int, default=256)
    ap.add_argument("--objective", default="energy")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--served-only", action="store_true",
                    help="tune only the ops the served layer runs (its linears)")
    ap.add_argument("--merge", action="store_true",
                    help="merge parallel linears (q/k/v, gate/up) before tuning and serving")
    args = ap.parse_args()
    args.objective = api.make_objective(args.objective)
    if not torch.cuda.is_available():
        sys.exit("model_benchmark: needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    pynvml.nvmlInit()
    meter = open_meter("cuda", 0)
    rows = []
    try:
        for name in args.cases.split(","):
            (args.out / name).mkdir(exist_ok=True)
            rows += run_case(name, args.out, args, meter)[0]
    finally:
        meter.close()
    commit = os.environ.get("COMMIT") or subprocess.run(  # the device's git HEAD can be stale
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {"gpu": torch.cuda.get_device_name(), "driver": pynvml.nvmlSystemGetDriverVersion(),
               "date": datetime.date.today().isoformat(), "commit": commit or None,
               "command": "python -m experiments.model_benchmark " + " ".join(sys.argv[1:]),
               "l2": "auto: per task (its row's l2), rotate for gemv and few-row products; "
                     "the layer reads its weights as a forward pass does", "rows": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    layer_keys = ("case", "ours", "ref", "ref_merged")
    print(json.dumps([{k: r[k] for k in layer_keys if k in r} for r in rows
                      if r["case"].endswith("/layer")], indent=2, default=str))


if __name__ == "__main__":
    main()
