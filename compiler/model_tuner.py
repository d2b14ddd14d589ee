"""Tune every task of a model from one trial budget, shared by each task's part of the model's cost.

As MetaSchedule's task scheduler does for latency, trials go where the model spends: a task's
weight is its count per forward pass times its cost per call, energy for the energy objectives
and latency for the latency objective. Before a task has a measured kernel its cost is predicted
from its FLOPs and bytes (`prior_cost`), scaled by the median measured/predicted ratio of the
tasks that have one; after, the best measured kernel's figure is used. Every task first gets a
few trials (so that its cost is measured), then the budget is handed out in rounds by weight
(largest remainders). Each task's trials are counted from the database, so re-running with the
same budget continues an interrupted run and a larger budget extends a finished one.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .database import Record, TuningDatabase
from .graph import Task
from .objective import Objective
from .report import fmt
from .builder import Builder
from .search import Tuner, usable_cpus
from .session import LATENCY_TIMING
from .target import Platform
from ..measure.cuda_graph import try_graph_batch
from ..measure.meters import open_meter, powercap_root
from ..measure.protocol import Precision, measure_energy
from ..measure.l2_policy import l2_policy
from ..measure.runner import MeasureConfig, rotation_sets
from ..measure.worker import IsolatedRunner, WorkerSpec
from ..schedules import Op

# The prior's cost per FLOP and per byte moved, (J or s). CUDA: H200 anchors of
# /work/shared/GUIDE.md §2 (cuBLAS fp16 GEMM 919 GFLOP/J and 650 TFLOP/s, fp32 84 GFLOP/J and
# 51 TFLOP/s; GEMV 14336x4096 fp16 16.7 mJ per 117 MB, 3.8 TB/s). llvm: nominal figures (50
# GFLOP/s, 10 GB/s; 1 GFLOP/J, 0.2 GB/J), not measured. Only ratios between tasks matter: the
# prior is rescaled to measured figures as soon as one task has them.
PRIOR = {
    ("cuda", "float16"): {"energy": (1 / 919e9, 16.7e-3 / 117e6), "latency": (1 / 650e12, 1 / 3.8e12)},
    ("cuda", "float32"): {"energy": (1 / 84e9, 16.7e-3 / 117e6), "latency": (1 / 51e12, 1 / 3.8e12)},
    ("llvm", "float32"): {"energy": (1 / 1e9, 1 / 0.2e9), "latency": (1 / 50e9, 1 / 10e9)},
}


def prior_cost(op: Op, kind: str, quantity: str) -> float:
    """Predicted J (energy) or s (latency) per call: additive for energy, roofline for latency."""
    per_flop, per_byte = PRIOR.get((kind, op.dtype), PRIOR[("llvm", "float32")])[quantity]
    parts = (op.flops * per_flop, op.bytes_moved * per_byte)
    return sum(parts) if quantity == "energy" else max(parts)


def allocate(weights: dict[int, float], trials: int) -> dict[int, int]:
    """`trials` split in proportion to `weights` (largest remainders; ties to the lower index)."""
    total = sum(weights.values())
    if trials <= 0 or not weights:
        return {i: 0 for i in weights}
    if total <= 0:
        weights, total = {i: 1.0 for i in weights}, float(len(weights))
    exact = {i: trials * w / total for i, w in weights.items()}
    out = {i: math.floor(x) for i, x in exact.items()}
    for i in sorted(exact, key=lambda i: (out[i] - exact[i], i))[: trials - sum(out.values())]:
        out[i] += 1
    return out


@dataclass(frozen=True)
class Settings:
    """What `tune-model` takes besides the tasks: the knobs of `tune`, and the round size."""
    objective: Objective
    trials: int
    l2: str = "auto"                # per task, measure/l2_policy.py
    energy_policy: str = "auto"
    seed: int = 0
    overlap: bool = True            # on CUDA: search while measuring
    round_trials: int = 16          # trials handed out per round after the first
    first_trials: int = 4           # trials every task gets before the budget follows weights
    batch: int = 16
    population: int = 512

    @property
    def quantity(self) -> str:
        return "energy" if self.objective.needs_energy else "latency"


@dataclass
class TaskState:
    task: Task
    op: Op
    tuner: Tuner
    prior: float
    records: list[Record] = field(default_factory=list)
    planned: int = 0
    exhausted: bool = False
    runner: IsolatedRunner | None = None

    def done(self, objective: Objective) -> int:
        return sum(r.objective == objective.key for r in self.records)

    def cost(self, settings: Settings) -> float | None:
        """The measured cost per call of the kernel the objective chooses (None if none yet)."""
        best = settings.objective.choose(self.records)
        if best is None:
            return None
        return best.energy_j if settings.quantity == "energy" else best.latency_s


def weights(states: list[TaskState], settings: Settings) -> list[float]:
    """Each task's share of the model's cost per forward pass (measured, else scaled prior)."""
    measured = [s.cost(settings) for s in states]
    ratios = [c / s.prior for c, s in zip(measured, states) if c is not None]
    scale = statistics.median(ratios) if ratios else 1.0
    costs = [s.task.count * (c if c is not None else s.prior * scale)
             for c, s in zip(measured, states)]
    total = sum(costs)
    return [c / total for c in costs]


class ModelTuner:
    """Tunes a model's tasks on one platform; `run()` returns when the budget is spent."""

    def __init__(self, tasks: list[Task], plat: Platform, db: TuningDatabase, settings: Settings,
                 no_meter: str | None) -> None:
        self.plat, self.db, self.settings, self.no_meter = plat, db, settings, no_meter
        self.overlap = plat.kind == "cuda" and settings.overlap
        self.builder: Builder | None = None   # made by the first round (`_builder`)
        self.states = []
        for task in tasks:
            op = task.make_op()
            tuner = Tuner(op, plat, None, db, settings.objective, seed=settings.seed,
                          batch=settings.batch, population=settings.population,
                          energy_policy=settings.energy_policy, overlap=self.overlap,
                          measurement=self._measurement(op))
            state = TaskState(task, op, tuner, prior_cost(op, plat.kind, settings.quantity))
            state.records = db.records(tuner.key)
            state.planned = state.done(settings.objective)
            self.states.append(state)

    def spent(self) -> int:
        return sum(s.done(self.settings.objective) for s in self.states)

    def plan(self) -> dict[int, int]:
        """The next round: task index -> trials to add (empty when the budget is spent)."""
        cfg, objective = self.settings, self.settings.objective
        left = cfg.trials - self.spent()
        open_tasks = [i for i, s in enumerate(self.states) if not s.exhausted]
        if left <= 0 or not open_tasks:
            return {}
        share = weights(self.states, cfg)
        first = min(cfg.first_trials, max(1, cfg.trials // len(self.states)))
        starving = sorted((i for i in open_tasks if self.states[i].done(objective) < first),
                          key=lambda i: -share[i])
        if starving:
            out = {}
            for i in starving:
                out[i] = min(first - self.states[i].done(objective), left)
                left -= out[i]
                if left == 0:
                    break
            return out
        extra = allocate({i: share[i] for i in open_tasks}, min(cfg.round_trials, left))
        return {i: n for i, n in extra.items() if n}

    def run(self, on_record: Callable[[TaskState, Record], None] = lambda s, r: None) -> None:
        """Tune round by round until the budget is spent or every task's search is exhausted."""
        objective = self.settings.objective
        try:
            while plan := self.plan():
                for i, extra in plan.items():
                    state = self.states[i]
                    before = state.done(objective)
                    state.planned = before + extra
                    if state.runner is None:
                        state.runner = self._runner(state.op)
                        state.tuner.runner, state.tuner.builder = state.runner, self._builder()
                    result = state.tuner.tune(state.planned,
                                              on_record=lambda r, s=state: on_record(s, r))
                    state.records = result.records
                    if result.stats.exhausted or state.done(objective) < state.planned:
                        state.exhausted = True
        finally:
            self.close()

    def _config(self, op: Op) -> MeasureConfig:
        return MeasureConfig(l2=l2_policy(self.settings.l2, op), **LATENCY_TIMING[self.plat.kind])

    def _spec(self, op: Op) -> WorkerSpec:
        return WorkerSpec(op.describe(), self.plat.kind, self.plat.device.index, self._config(op),
                          self.settings.seed, None if self.no_meter else powercap_root())

    def _measurement(self, op: Op) -> dict:
        """What op's worker will report as its measurement identity (the task's db key)."""
        return self._spec(op).measurement()

    def _runner(self, op: Op) -> IsolatedRunner:
        """op's worker, launched: it starts while the task's first builds run."""
        return IsolatedRunner(self._spec(op), wait=not self.overlap)

    def _builder(self) -> Builder:
        """One build pool for every task: its processes import TVM (and, for MetaSchedule's
        pipeline, tensor_intrin) once per model tune, not once per task and round."""
        if self.builder is None:
            self._artifacts = tempfile.TemporaryDirectory(prefix="tune-model-artifacts-")
            self.builder = Builder(self.plat.target, self._artifacts.name,
                                   workers=usable_cpus(self.overlap))
        return self.builder

    def close(self) -> None:
        if self.builder is not None:
            self.builder.close()
            self._artifacts.cleanup()
            self.builder = None
        for state in self.states:
            if state.runner is not None:
                state.runner.close()
                state.runner = None

    def chosen(self) -> list[Record | None]:
        return [self.settings.objective.choose(s.records) for s in self.states]


# ---- torch in the same run ----------------------------------------------------------------------

@dataclass
class Baseline:
    name: str                     # e.g. "torch 2.13.0 eager, float32 out, cpu"
    latency_s: float
    energy_j: float | None = None
    power_w: float | None = None


def launcher(call: Callable[[], object], python_batch: Callable[[int], float], latency_s: float
             ) -> tuple[Callable[[int], float], str]:
    """On CUDA, the gap-free run_batch: `call` as CUDA-graph replays ("cuda graph"); where
    capture fails, `python_batch` (Python-launched, the name says why)."""
    graph, error = try_graph_batch(call, latency_s)
    if graph is not None:
        return graph, "cuda graph"
    return python_batch, f"python-launched (cuda graph failed: {error})"


def torch_baseline(op: Op, plat: Platform, no_meter: str | None, seed: int = 0,
                   l2: str = "resident") -> Baseline | None:
    """torch's call for the op on this platform's device, on the same seeded inputs, timed as
    back-to-back calls (median of repeats): on CUDA replays of a CUDA graph of calls, so that
    calls under ~20 µs are not timed with Python's launch gaps (Python-launched where capture
    fails, as the name says); on the CPU Python-launched. With `l2="rotate"` the calls cycle
    through copies of the inputs as our rotated measurements do (`rotation_sets`), so both read
    from DRAM. Energy with measure/protocol.py where there is a meter. None where torch cannot
    run there (no torch, or a torch without CUDA on a GPU platform)."""
    try:
        import torch
    except ImportError:
        return None
    from .library import torch_op

    if plat.kind == "cuda" and not torch.cuda.is_available():
        return None
    device = f"cuda:{plat.device.index}" if plat.kind == "cuda" else "cpu"
    a, b = (torch.from_numpy(x).to(device) for x in op.inputs(np.random.default_rng(seed)))
    sets = [(a, b)]
    if l2 == "rotate":
        sets += [(a.clone(), b.clone()) for _ in range(rotation_sets(a.nbytes + b.nbytes) - 1)]
    extra = (op.shape["stride"], op.shape["pad"]) if op.name == "conv2d" else ()
    sync = torch.cuda.synchronize if plat.kind == "cuda" else (lambda: None)
    turn = itertools.count()

    def call():
        x, w = sets[next(turn) % len(sets)]
        return torch_op(op.name, x, w, *extra)

    def python_batch(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        return (time.perf_counter() - start) / calls

    timing = LATENCY_TIMING[plat.kind]
    name = f"torch {torch.__version__} eager, {op.dtype} out, {device}" + (
        f", inputs rotated over {len(sets)} copies" if len(sets) > 1 else "")
    on_device = torch.cuda.device(device) if plat.kind == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), on_device:
        python_batch(3)
        run_batch = python_batch
        if plat.kind == "cuda":
            run_batch, launch = launcher(call, python_batch, python_batch(20))
            name += f", {launch}"
        calls = 1
        while run_batch(calls) * calls < timing["latency_min_repeat_ms"] / 1e3 and calls < 1 << 20:
            calls *= 2
        latency = statistics.median(run_batch(calls) for _ in range(timing["latency_repeats"]))
        if no_meter is not None:
            return Baseline(name, latency)
        meter = open_meter(plat.kind, plat.device.index, powercap_root())
        try:
            energy = measure_energy(meter, run_batch, latency, Precision())
        finally:
            meter.close()
    return Baseline(name, latency, energy.energy_j, energy.power_w)


# ---- report -------------------------------------------------------------------------------------

@dataclass
class TaskResult:
    task: Task
    trials: int
    ours: Record | None
    torch: Baseline | None


def per_pass(results: list[TaskResult], side: str, field_name: str) -> float | None:
    """Sum over tasks of count x figure per call; None unless every task has the figure."""
    values = [getattr(getattr(r, side), field_name, None) if getattr(r, side) else None
              for r in results]
    if any(v is None for v in values):
        return None
    return sum(r.task.count * v for r, v in zip(results, values))


def progress_table(states: list[TaskState], settings: Settings, title: str) -> Table:
    table = Table(title=title)
    for col in ("task", "x/pass", "share", "trials", "best ms", "best mJ", ""):
        table.add_column(col, justify="left" if col in ("task", "") else "right")
    for state, share in zip(states, weights(states, settings)):
        best = settings.objective.choose(state.records)
        table.add_row(state.task.label, str(state.task.count), f"{share:.0%}",
                      f"{state.done(settings.objective)}/{state.planned}",
                      fmt(best.latency_s if best else None, 1e3),
                      fmt(best.energy_j if best else None, 1e3),
                      "exhausted" if state.exhausted else "")
    return table


def report_table(results: list[TaskResult], title: str) -> Table:
    """Per task and per forward pass: ours against torch (- = not measured)."""
    table = Table(title=title)
    for col in ("task", "x/pass", "trials", "id", "ours ms", "ours mJ", "torch ms", "torch mJ"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in results:
        table.add_row(r.task.label, str(r.task.count), str(r.trials),
                      str(r.ours.id) if r.ours else "-",
                      fmt(r.ours.latency_s if r.ours else None, 1e3),
                      fmt(r.ours.energy_j if r.ours else None, 1e3),
                      fmt(r.torch.latency_s if r.torch else None, 1e3),
                      fmt(r.torch.energy_j if r.torch else None, 1e3))
    table.add_section()
    table.add_row("per forward pass (tasks only)", "", "", "",
                  *(fmt(per_pass(results, side, f), 1e3) for side in ("ours", "torch")
                    for f in ("latency_s", "energy_j")))
    return table


def live_progress(tuner: ModelTuner, console: Console, title: str):
    """(context manager, on_record callback): a live per-task table on a terminal, one line per
    measured candidate otherwise."""
    render = lambda: progress_table(tuner.states, tuner.settings, title)  # noqa: E731
    live = Live(render(), console=console, refresh_per_second=4, transient=False)

    def on_record(state: TaskState, record: Record) -> None:
        state.records = state.tuner.records  # the tuner's list, this record included
        if console.is_terminal:
            live.update(render())
        else:
            console.print(f"{state.task.label}: trial {state.done(tuner.settings.objective)}/"
                          f"{state.planned} {record.status}"
                          + (f" {fmt(record.latency_s, 1e3)} ms" if record.latency_s else ""))
    return (live if console.is_terminal else contextlib.nullcontext()), on_record


def tune_tasks(tasks: list[Task], plat: Platform, db: TuningDatabase, settings: Settings,
               no_meter: str | None, console: Console, title: str,
               baseline: bool = True) -> tuple[list[TaskResult], ModelTuner]:
    """Tune, then measure torch on each task (where `baseline`): the per-task results and the
    tuner (whose tuners rebuild the chosen schedules)."""
    tuner = ModelTuner(tasks, plat, db, settings, no_meter)
    context, on_record = live_progress(tuner, console, title)
    with context:
        tuner.run(on_record)
    results = []
    for state, chosen in zip(tuner.states, tuner.chosen()):
        ref = torch_baseline(state.op, plat, no_meter, settings.seed,
                             l2_policy(settings.l2, state.op)) if baseline else None
        results.append(TaskResult(state.task, state.done(settings.objective), chosen, ref))
    return results, tuner


__all__ = ["Baseline", "ModelTuner", "Settings", "TaskResult", "TaskState", "allocate",
           "launcher", "per_pass", "prior_cost", "report_table", "torch_baseline", "tune_tasks",
           "weights"]
