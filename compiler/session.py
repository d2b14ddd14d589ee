"""One `tune` invocation after its input is validated: tune, summarize, export."""
from __future__ import annotations

import argparse

from rich.console import Console

from compiler.cli import powercap_root
from compiler.database import TuningDatabase
from compiler.export import export_kernel
from compiler.objective import objective_value
from compiler.report import LiveProgress, summary_table
from compiler.search import Tuner, best
from compiler.target import Platform
from measure.runner import MeasureConfig
from measure.worker import IsolatedRunner, WorkerError, WorkerSpec
from schedules import Op

LATENCY_TIMING = {"cuda": {"latency_repeats": 10, "latency_min_repeat_ms": 20},
                  "llvm": {"latency_repeats": 5, "latency_min_repeat_ms": 5}}


def run_session(args: argparse.Namespace, plat: Platform, op: Op, no_meter: str | None,
                db: TuningDatabase) -> int:
    out, err = Console(), Console(stderr=True)
    err.print(f"{op.name} {op.shape_text()} {op.dtype} on {plat.device_name} ({plat.kind}), "
              f"objective {args.objective}, {args.trials} trials, L2 {args.l2}, db {db.path}")
    if no_meter:
        err.print(f"energy: not measured ({no_meter})")
    config = MeasureConfig(l2=args.l2, **LATENCY_TIMING[plat.kind])
    spec = WorkerSpec(op.describe(), plat.kind, plat.device.index, config, args.seed,
                      None if no_meter else powercap_root())
    try:
        runner = IsolatedRunner(spec)
    except WorkerError as error:
        err.print(f"tune: error: {error}")
        db.close()
        return 1
    if runner.idle_w is not None:
        err.print(f"idle power {runner.idle_w:.1f} W")
    tuner = Tuner(op, plat, runner, db, args.objective, seed=args.seed)
    previous = db.records(tuner.key)
    done = min(args.trials, sum(r.objective == args.objective for r in previous))
    if done:
        err.print(f"resuming: {done} of {args.trials} trials already in the db")
    prior_best = best(previous, args.objective)
    prior_value = objective_value(args.objective, prior_best.latency_s, prior_best.energy_j) \
        if prior_best else None
    try:
        with LiveProgress(args.objective, args.trials, done, err, prior_value) as live:
            result = tuner.tune(args.trials, on_record=live.update)
    except KeyboardInterrupt:
        err.print("interrupted: every measured candidate is in the db; "
                  "re-run the same command to continue")
        return 130
    except WorkerError as error:
        err.print(f"tune: error: {error}; every measured candidate is in the db")
        return 1
    finally:
        runner.close()
        db.close()

    s = result.stats
    err.print(f"measured {s.measured} new candidates ({s.previous} before): {s.build_errors} build "
              f"errors, {s.run_errors} run errors, {s.wrong} wrong results, "
              f"{runner.restarts} worker restarts"
              + ("; the search found no further new candidates" if s.exhausted else ""))
    chosen = best(result.records, args.objective)
    if chosen is None:
        err.print("tune: no correct kernel was found; see the errors in the db")
        return 1
    rows = [(f"best {args.objective}", chosen)]
    fastest = best(result.records, "latency")
    if args.objective != "latency":
        rows.append(("best latency", fastest))
    out.print(summary_table(op, rows))
    if chosen is not fastest:
        out.print(f"trade-off: {chosen.latency_s / fastest.latency_s - 1:+.1%} latency, "
                  + (f"{chosen.energy_j / fastest.energy_j - 1:+.1%} energy"
                     if chosen.energy_j and fastest.energy_j else "energy not measured"))
    if args.export:
        manifest = export_kernel(op, plat.target, tuner.schedule(chosen), chosen,
                                 args.objective, args.export)
        out.print(f"exported {manifest.with_suffix('.so')} and {manifest}")
    return 0
