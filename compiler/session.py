"""One `tune` invocation after its input is validated: tune, summarize, export."""
from __future__ import annotations

import argparse
import time
from typing import Callable

from rich.console import Console
from rich.markup import escape

from .database import Record, TuningDatabase
from .export import export_kernel
from .objective import Objective, pareto_front
from .report import LiveProgress, op_title, summary_table
from .search import Tuner, TuneResult
from .target import Platform
from .tune_cost import TuneEnergy, store as store_tune_cost
from ..measure.l2_policy import l2_policy
from ..measure.meters import powercap_root
from ..measure.runner import MeasureConfig
from ..measure.rpc import NoWorkers, RpcPool
from ..measure.worker import IsolatedRunner, WorkerError, WorkerSpec
from ..schedules import Op

LATENCY_TIMING = {"cuda": {"latency_repeats": 10, "latency_min_repeat_ms": 20},
                  "llvm": {"latency_repeats": 5, "latency_min_repeat_ms": 5}}


class TuneStopped(Exception):
    """A tune ended early; `code` is the process exit status."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run_session(args: argparse.Namespace, objective: Objective, plat: Platform, ops: list[Op],
                no_meter: str | None, db: TuningDatabase, started: float | None = None) -> int:
    """Tune each implementation in `ops` (one op, or e.g. the LUT and dequant forms of lut_mpgemm,
    splitting the trials between them) and choose by measurement over all of them; `started`:
    the monotonic clock when the command began, for the wall-time split it reports."""
    began = time.monotonic()
    out, err = Console(), Console(stderr=True)
    op = ops[0]
    impls = f", implementations {' + '.join(o.params['impl'] for o in ops)}" if len(ops) > 1 else ""
    err.print(escape(f"{op_title(op, with_impl=len(ops) == 1)} on {plat.device_name} "
                     f"({plat.kind}), objective {objective.label}, {args.trials} trials{impls}, "
                     f"L2 {l2_policy(args.l2, op)}, energy policy {args.energy_policy}, db {db.path}"))
    if no_meter:
        err.print(f"energy: not measured ({no_meter})")
    tune_energy = TuneEnergy(plat.kind, plat.device.index, powercap_root())
    records, tuners, measured_now = [], {}, []
    try:
        for i, impl_op in enumerate(ops):
            trials = args.trials // len(ops) + (i < args.trials % len(ops))
            if len(ops) > 1:
                err.print(f"implementation {impl_op.params['impl']}: {trials} trials")
            tuner, result = _tune(args, objective, plat, impl_op, trials, no_meter, db, err,
                                  tune_energy.sample)
            tuners[tuner.key] = tuner
            records += result.records
            measured_now += result.records[len(result.records) - result.stats.measured:]
        fastest = Objective("latency").choose(records)
        chosen = objective.choose(records)
        cost = tune_energy.stop(chosen, fastest)
        err.print(cost.line())
        if measured_now:
            store_tune_cost(db, measured_now[-1], cost)
    except TuneStopped as stop:
        return stop.code
    finally:
        db.close()
    if chosen is None:
        err.print("tune: no correct kernel with the measurements this objective needs was found; "
                  "see the errors in the db")
        return 1
    label = (lambda r: f" [{r.workload['params']['impl']}]") if "impl" in op.params \
        else (lambda r: "")
    if objective.kind == "pareto":
        rows = [(f"front {i + 1}{label(r)}", r) for i, r in enumerate(pareto_front(records))]
    else:
        rows = [(f"best {objective.label}{label(chosen)}", chosen)]
        if objective.kind != "latency":
            rows.append((f"best latency{label(fastest)}", fastest))
    out.print(summary_table(op, rows))
    if chosen is not fastest:
        out.print(f"trade-off: {chosen.latency_s / fastest.latency_s - 1:+.1%} latency, "
                  + (f"{chosen.energy_j / fastest.energy_j - 1:+.1%} energy"
                     if chosen.energy_j and fastest.energy_j else "energy not measured"))
    tuned = time.monotonic()
    if args.export:
        tuner = tuners[chosen.workload_key]
        manifest = export_kernel(tuner.op, plat.target, chosen, objective.label, args.export)
        out.print(f"exported {manifest.with_suffix('.so')} and {manifest}")
    split = f"start-up {began - started:.1f} s (arguments, TVM, target, db), " \
        if started is not None else ""
    err.print(f"wall time: {split}tune {tuned - began:.1f} s"
              + (f", export {time.monotonic() - tuned:.1f} s" if args.export else ""))
    return 0


def make_runner(args: argparse.Namespace, spec: WorkerSpec, err: Console, wait: bool = True
                ) -> IsolatedRunner | RpcPool:
    """The RPC workers at `--tracker` under `--key`, each reported; else one local worker
    (`wait=False`: launched, it starts while the first builds run)."""
    if args.tracker is None:
        return IsolatedRunner(spec, wait=wait)
    pool = RpcPool(args.tracker, args.key, spec, args.tracker_wait,
                   report=lambda line: err.print(escape(line), soft_wrap=True))
    for w in pool.workers:
        idle = f", idle power {w['idle_w']:.1f} W" if w["idle_w"] is not None else ""
        err.print(escape(f"RPC worker {w['host']} device {w['device_index']} "
                         f"({w['device_name']}){idle}"), soft_wrap=True)
    return pool


def _tune(args: argparse.Namespace, objective: Objective, plat: Platform, op: Op, trials: int,
          no_meter: str | None, db: TuningDatabase, err: Console,
          on_record: Callable[[Record], None]) -> tuple[Tuner, TuneResult]:
    """One op's tune, its statistics reported; raises TuneStopped after an error or Ctrl-C."""
    config = MeasureConfig(l2=l2_policy(args.l2, op), **LATENCY_TIMING[plat.kind])
    spec = WorkerSpec(op.describe(), plat.kind, plat.device.index, config, args.seed,
                      None if no_meter else powercap_root())
    overlap = plat.kind == "cuda" and not args.no_overlap
    try:
        runner = make_runner(args, spec, err, wait=not overlap)
    except WorkerError as error:
        err.print(escape(f"tune: error: {error}"), soft_wrap=True)
        raise TuneStopped(2 if isinstance(error, NoWorkers) else 1) from error
    told_idle = runner.idle_w is not None  # a worker still starting: told after the tune
    if told_idle:
        err.print(f"idle power {runner.idle_w:.1f} W")
    if args.tracker is not None and runner.measurement.get("meter") is None:
        if objective.needs_energy:
            runner.close()
            err.print(f"tune: error: --objective {objective.kind} needs an energy meter, but the "
                      "RPC workers have none; use --objective latency")
            raise TuneStopped(2)
        err.print("energy: not measured (the RPC workers have no energy meter)")
    tuner = Tuner(op, plat, runner, db, objective, seed=args.seed,
                  energy_policy=args.energy_policy, overlap=overlap, space=args.space,
                  seeds=not args.no_seeds)
    previous = db.records(tuner.key)
    done = min(trials, sum(r.objective == objective.key for r in previous))
    if done:
        err.print(f"resuming: {done} of {trials} trials already in the db")
    prior_best = objective.choose(previous)
    prior_value = objective.value(prior_best.latency_s, prior_best.energy_j) if prior_best else None
    try:
        with LiveProgress(objective, trials, done, err, prior_value) as live:
            result = tuner.tune(trials, on_record=lambda r: (live.update(r), on_record(r)))
    except KeyboardInterrupt:
        err.print("interrupted: every measured candidate is in the db; "
                  "re-run the same command to continue")
        raise TuneStopped(130) from None
    except WorkerError as error:
        err.print(escape(f"tune: error: {error}; every measured candidate is in the db"),
                  soft_wrap=True)
        raise TuneStopped(1) from error
    finally:
        runner.close()

    s = result.stats
    if not told_idle and runner.idle_w is not None:
        err.print(f"idle power {runner.idle_w:.1f} W (measured while the first builds ran)")
    err.print(f"space {s.space}, strategy {s.strategy}, energy policy {tuner.policy.mode}"
              + (f"; {s.strategy_report}" if s.strategy_report else ""))
    err.print(f"measured {s.measured} new candidates ({s.previous} before): {s.build_errors} build "
              f"errors, {s.run_errors} run errors, {s.wrong} wrong results, "
              f"{runner.restarts} worker restarts"
              + ("; the search found no further new candidates" if s.exhausted else ""))
    if s.screened:
        err.print(f"{s.screened} correct candidates screened out after a few latency samples "
                  "(clearly slower than the best): not fully timed, energy not measured")
    if runner.measurement.get("meter") and s.energy_measured + s.energy_skipped + s.screened:
        err.print(f"energy measured for {s.energy_measured} of "
                  f"{s.energy_measured + s.energy_skipped + s.screened} correct candidates "
                  f"({s.energy_skipped} left to the model by the {tuner.policy.mode} policy"
                  + (", the objective needs none" if not objective.needs_energy else "")
                  + f", {s.screened} screened out)")
    if line := time_split(s, result.records[len(result.records) - s.measured:]):
        err.print(line)
    if s.proposal_s:
        mean_s = sum(s.proposal_s) / len(s.proposal_s)
        hidden = (f"{s.search_wait_s:.1f} s of {sum(s.proposal_s):.1f} s not overlapped with "
                  "measuring" if tuner.overlap else "search and measurement took turns")
        err.print(f"search: {len(s.proposal_s)} generations, {mean_s:.1f} s each on average to "
                  f"propose and score a batch, {hidden}"
                  + (f"; model warm-started from workload {s.warm_start}" if s.warm_start else ""))
    return tuner, result


def time_split(stats, measured: list[Record]) -> str | None:
    """Where a tune's time went, per new candidate: the worker's steps (Runner's `phase_s`), the
    wait for builds, and the rest (search, scoring, storing, worker round trips)."""
    if not stats.measured:
        return None
    phases: dict[str, float] = {}
    for record in measured:
        for name, seconds in (record.meta or {}).get("phase_s", {}).items():
            phases[name] = phases.get(name, 0.0) + seconds
    n = stats.measured
    steps = ", ".join(f"{name.removesuffix('_s')} {seconds / n:.2f}" for name, seconds in phases.items())
    rest = stats.wall_s - stats.build_wait_s - sum(phases.values())
    return (f"time per candidate: {stats.wall_s / n:.2f} s ({stats.measured * 60 / stats.wall_s:.1f}"
            f"/min): measuring {steps or 'none'}; waiting for builds {stats.build_wait_s / n:.2f} "
            f"({stats.first_build_wait_s:.1f} s in all for the first batch, its first record "
            f"after {stats.first_record_s:.1f} s); "
            f"other {max(rest, 0.0) / n:.2f}")
