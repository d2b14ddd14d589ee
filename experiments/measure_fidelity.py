"""How good are our energy numbers? Repeatability, cost, estimator agreement and order bias.

    python -m experiments.measure_fidelity --out DIR [--trace FILE]

Kernels: cuBLAS GEMMs through torch from ~5 µs to ~3 ms (CUDA-graph launched below 50 µs so the
GPU stays busy), and the best TVM kernel of the H200 baseline tune, rebuilt from its stored trace
and measured through our Runner (both L2 policies). For each: 10 independent measurements with
the default protocol (measure/protocol.py), reporting the coefficient of variation of energy per
call, GPU seconds per measurement, counter-vs-instant-power agreement, flags and re-measures.
Order bias: one kernel measured after 5 s idle vs right after 5 s of a hot kernel.
Writes DIR/fidelity.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from energy_tuner.measure.meters import NvmlMeter
from energy_tuner.measure.protocol import EnergyResult, Precision, idle_power, measure_energy

REPEATS = 10
BASELINE = Path(__file__).parent / "results" / "matmul4096_fp16_h200_2026-11-21"


def events_batch(fn, graph_calls: int):
    """run_batch(n) for a torch callable: CUDA-graph replays for short kernels, else a loop."""
    if graph_calls > 1:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(graph_calls):
                fn()
        launch, per_launch = graph.replay, graph_calls
    else:
        launch, per_launch = fn, 1

    def run_batch(calls: int) -> float:
        reps = max(1, round(calls / per_launch))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            launch()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / (reps * per_launch)
    return run_batch


def torch_kernels():
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    for m, n, k, dtype in [(256, 256, 256, torch.float16), (1024, 1024, 1024, torch.float16),
                           (2048, 2048, 2048, torch.float16), (4096, 4096, 4096, torch.float16),
                           (8192, 8192, 8192, torch.float16), (4096, 4096, 4096, torch.float32)]:
        a = torch.rand((m, k), device="cuda", dtype=dtype, generator=gen) * 2 - 1
        b = torch.rand((k, n), device="cuda", dtype=dtype, generator=gen) * 2 - 1
        fn = (lambda a=a, b=b: torch.matmul(a, b))
        short = events_batch(fn, 1)(200) < 50e-6
        name = f"cuBLAS {str(dtype).split('.')[-1]} {m}x{n}x{k}" + (" (graph)" if short else "")
        yield name, 2 * m * n * k, events_batch(fn, 20 if short else 1)


def tvm_kernels(meter):
    """The baseline's best latency-objective kernel, rebuilt from its trace, via our Runner."""
    import tvm

    from energy_tuner.compiler.builder import build_to_file
    from energy_tuner.measure.runner import MeasureConfig, Runner
    from energy_tuner.schedules import make_op
    from energy_tuner.compiler.report_cli import read_records
    from energy_tuner.compiler.objective import Objective

    records = read_records(BASELINE / "latency.sqlite.gz")
    chosen = Objective("latency").choose(records)
    op = make_op("matmul", "4096,4096,4096", "float16")
    mod = tvm.IRModule({"main": op.prim_func()})
    import tvm.s_tir.tensor_intrin  # noqa: F401
    sch = tvm.s_tir.Schedule(mod)
    tvm.s_tir.schedule.Trace.apply_json_to_schedule(chosen.trace, sch)
    tmp = tempfile.mkdtemp()
    artifact = build_to_file(sch.mod, tvm.target.Target.from_device(tvm.cuda(0)), f"{tmp}/k.so")
    for l2 in ("resident", "rotate"):
        runner = Runner(op, tvm.cuda(0), meter, MeasureConfig(l2=l2))
        yield f"TVM best-latency 4096^3 fp16 (L2 {l2})", op.flops, runner, artifact


def summarize(name, flops, latency, results: list[EnergyResult]) -> dict:
    energies = [r.energy_j for r in results if r.energy_j is not None]
    agreement = [abs(r.power_w - r.power_sampled_w) / r.power_w for r in results
                 if r.power_w and r.power_sampled_w]
    return {
        "kernel": name, "latency_us": latency * 1e6, "gflop": flops / 1e9,
        "energy_mj_mean": statistics.fmean(energies) * 1e3 if energies else None,
        "energy_cv": statistics.pstdev(energies) / statistics.fmean(energies) if energies else None,
        "power_w_mean": statistics.fmean(r.power_w for r in results if r.power_w),
        "gpu_s_per_measurement": statistics.fmean(r.gpu_seconds for r in results),
        "counter_vs_sampled_max": max(agreement) if agreement else None,
        "counter_vs_sampled_median": statistics.median(agreement) if agreement else None,
        "flagged": sum(bool(r.flags) for r in results),
        "flags": sorted({f for r in results for f in r.flags}),
        "first_attempt_flags": sorted({f for r in results for f in r.attempt_flags[0]}),
        "remeasured": sum(r.attempts > 1 for r in results),
        "measurements": [asdict(r) for r in results],
    }


def bias(meter, precision, state):
    """The 4096^3 fp16 kernel after 5 s idle vs right after 5 s of back-to-back 8192^3."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    a, b = (torch.rand((4096, 4096), device="cuda", dtype=torch.float16, generator=gen)
            for _ in range(2))
    big = torch.rand((8192, 8192), device="cuda", dtype=torch.float16, generator=gen)
    run = events_batch(lambda: torch.matmul(a, b), 1)
    hot = events_batch(lambda: torch.matmul(big, big), 1)
    latency = run(200)
    out = {}
    for label in ("after_idle", "after_hot", "after_idle_again", "after_hot_again"):
        if label.startswith("after_idle"):
            time.sleep(5)
        else:
            hot(int(5 / hot(5)))
        r = measure_energy(meter, run, latency, precision, state["sm_clock_max_mhz"],
                           state["power_limit_w"])
        out[label] = {"energy_mj": r.energy_j * 1e3, "power_w": r.power_w,
                      "temperature_c": r.windows[0].get("temperature_c"),
                      "sm_clock_mhz": r.windows[0].get("sm_clock_mhz"), "flags": r.flags}
    return out


def record_trace(meter, path: Path):
    """0.5 s idle, 2.5 s of back-to-back cuBLAS 4096^3 fp16, 0.5 s idle: a fixture for tests."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    a, b = (torch.rand((4096, 4096), device="cuda", dtype=torch.float16, generator=gen)
            for _ in range(2))
    run = events_batch(lambda: torch.matmul(a, b), 1)
    run(100)  # the first calls include cuBLAS's own warm-up
    latency = run(100)
    start = time.monotonic()
    time.sleep(0.5)
    busy_start = time.monotonic()
    per_call = run(int(2.5 / latency))
    busy_end = time.monotonic()
    time.sleep(0.5)
    line = meter.timeline(start, time.monotonic())
    r3 = lambda samples: [[round(t - start, 6), round(v, 3)] for t, v in samples]  # noqa: E731
    trace = {"gpu": torch.cuda.get_device_name(), "kernel": "cuBLAS fp16 4096^3",
             "per_call_s": per_call, "busy_start": busy_start - start,
             "busy_end": busy_end - start, "ticks": r3(line.ticks), "power": r3(line.power),
             "sm_clock": r3(line.sm_clock), "device_state": meter.device_state()}
    with gzip.open(path, "wt") as f:
        json.dump(trace, f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--trace", type=Path, help="also record a raw meter trace here (.json.gz)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meter = NvmlMeter(torch.cuda.current_device())
    state = meter.device_state()
    precision = Precision()
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "tick_period_s": meter.tick_period_s, "idle_w": idle_power(meter),
              "precision": asdict(precision), "device_state": state, "kernels": []}
    print(f"{report['gpu']}: counter tick {meter.tick_period_s * 1e3:.1f} ms, "
          f"idle {report['idle_w']:.1f} W", flush=True)
    if args.trace:
        record_trace(meter, args.trace)
    for name, flops, run_batch in torch_kernels():
        latency = statistics.median(run_batch(max(1, int(0.01 / run_batch(10)))) for _ in range(10))
        results = [measure_energy(meter, run_batch, latency, precision, state["sm_clock_max_mhz"],
                                  state["power_limit_w"]) for _ in range(REPEATS)]
        report["kernels"].append(summarize(name, flops, latency, results))
        print(json.dumps({k: v for k, v in report["kernels"][-1].items() if k != "measurements"}),
              flush=True)
    for name, flops, runner, artifact in tvm_kernels(meter):
        measured = [runner.run(artifact) for _ in range(REPEATS)]
        results = [EnergyResult(energy_j=m.energy_j, power_w=m.power_w,
                                **{k: m.meta[k] for k in ("power_sampled_w", "power_cv",
                                                          "sustained_latency_s", "flags",
                                                          "attempt_flags", "attempts",
                                                          "gpu_seconds", "windows")})
                   for m in measured]
        report["kernels"].append(summarize(name, flops, measured[0].latency_s, results))
        print(json.dumps({k: v for k, v in report["kernels"][-1].items() if k != "measurements"}),
              flush=True)
    report["bias"] = bias(meter, precision, state)
    print(json.dumps(report["bias"]), flush=True)
    meter.close()
    (args.out / "fidelity.json").write_text(json.dumps(report, indent=1))
    print(table(report))


def table(report: dict) -> str:
    lines = ["| kernel | latency (µs) | energy/call (mJ) | power (W) | energy CV (10 runs) | "
             "GPU s/measurement | counter vs instant (median, max) | flagged (kept flags) / "
             "remeasured (first-attempt flags) |",
             "|---|---|---|---|---|---|---|---|"]
    for k in report["kernels"]:
        agree = (f"{k['counter_vs_sampled_median']:.1%}, {k['counter_vs_sampled_max']:.1%}"
                 if k["counter_vs_sampled_max"] is not None else "n/a")
        lines.append(f"| {k['kernel']} | {k['latency_us']:.1f} | {k['energy_mj_mean']:.4g} | "
                     f"{k['power_w_mean']:.0f} | {k['energy_cv']:.2%} | "
                     f"{k['gpu_s_per_measurement']:.2f} | {agree} | "
                     f"{k['flagged']} ({', '.join(k['flags']) or '-'}) / {k['remeasured']} "
                     f"({', '.join(k['first_attempt_flags']) or '-'}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    if shutil.which("nvidia-smi") is None:
        raise SystemExit("measure_fidelity.py needs an NVIDIA GPU")
    main()
