"""The Python API: what `tune` and `tune-model` do, as functions over the same code.

    from energy_tuner.compiler import api

    run = api.tune_op("matmul", "64,64,64", target="llvm", trials=8, db="t.sqlite")
    run = api.tune_model("decoder_layer:hidden=64,ffn=128,heads=4,kv_heads=2,batch=1,seq=16,"
                         "phase=decode", target="llvm", trials=24, db="t.sqlite", export="lib")
    run = api.tune_model(my_module, example_inputs=(x,), target="llvm", trials=24)
    api.records("t.sqlite", op="matmul")          # every measured candidate, as db Records
    api.export("t.sqlite", "lib", objective="latency")   # the db's chosen kernels as a library
    lib = api.load("lib"); lib.serve(my_module)   # nn.Linear layers now call the kernels
    merged = api.merge_linears(my_module)         # parallel linears as one (compiler/merge.py);
    api.tune_model(merged, (x,), ...); lib.serve(merged)   # tune, export and serve it as any module

Bad input raises one of the project's error types (`ERRORS`), each with a one-line message.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from .cli import DEFAULT_DTYPE, DTYPES_FOR_TARGET, UsageError, default_db, make_objective
from .graph import GraphError, Task, module_graph, parse_spec, spec_graph, tasks as graph_tasks
from .library import Library, LibraryError, db_kernels, export_library, load
from .merge import merge_linears
from .model_tuner import Settings, TaskResult, per_pass, report_table, tune_tasks
from .objective import Objective

__all__ = ["ERRORS", "Library", "ModelRun", "export", "graph", "load", "make_objective",
           "merge_linears", "records", "report", "tasks", "tune_model", "tune_op", "tune_tasks_on"]


def _errors() -> tuple[type[Exception], ...]:
    from .database import DatabaseError
    from .target import TargetError
    from ..schedules import OpError

    return UsageError, GraphError, LibraryError, OpError, TargetError, DatabaseError


ERRORS = _errors()


def _objective(objective: Objective | str | None) -> Objective:
    return objective if isinstance(objective, Objective) else make_objective(objective)


def graph(model, example_inputs: tuple | None = None, dtype: str = "float32"):
    """A model's operator graph: `model` is a spec (dict, JSON file path or inline
    `name:key=value,...`, see graph.parse_spec) or an nn.Module traced on `example_inputs`."""
    if isinstance(model, dict):
        return spec_graph(model, dtype)
    if isinstance(model, (str, Path)):
        return spec_graph(parse_spec(str(model)), dtype)
    if example_inputs is None:
        raise GraphError(f"a {type(model).__name__} is traced on example inputs: "
                         "pass example_inputs")
    return module_graph(model, tuple(example_inputs))


def tasks(model, example_inputs: tuple | None = None, dtype: str = "float32") -> list[Task]:
    """The model's tasks, deduplicated by workload, with their counts per forward pass."""
    return graph_tasks(graph(model, example_inputs, dtype))


@dataclass
class ModelRun:
    """What a tune of a model (or of one op) produced."""
    results: list[TaskResult]
    objective: Objective
    device: str
    db: Path
    library: Path | None = None                     # the manifest, where exported
    not_exported: list[str] = field(default_factory=list)

    def per_pass(self, side: str = "ours", quantity: str = "energy_j") -> float | None:
        """Σ count × figure per call over the tasks ("ours" | "torch"; "latency_s" |
        "energy_j"); None unless every task has it."""
        return per_pass(self.results, side, quantity)

    def to_dict(self) -> dict:
        return {"device": self.device, "objective": self.objective.label, "db": str(self.db),
                "library": str(self.library) if self.library else None,
                "tasks": [{"task": asdict(r.task), "trials": r.trials,
                           "ours": None if r.ours is None else
                           {"db_record": r.ours.id, "latency_s": r.ours.latency_s,
                            "energy_j": r.ours.energy_j, "power_w": r.ours.power_w},
                           "torch": None if r.torch is None else asdict(r.torch)}
                          for r in self.results],
                "per_pass": {side: {q: self.per_pass(side, q) for q in ("latency_s", "energy_j")}
                             for side in ("ours", "torch")}}


def _setup(target: str, objective: Objective, db: str | Path | None):
    """(platform, meter problem, database) as `tune` checks them."""
    from .database import TuningDatabase
    from .target import resolve
    from ..measure.meters import meter_problem, powercap_root

    plat = resolve(target)
    no_meter = meter_problem(plat.kind, plat.device.index, powercap_root())
    if no_meter and objective.needs_energy:
        raise UsageError(f"--objective {objective.kind} needs an energy meter, but {no_meter}; "
                         "use --objective latency")
    return plat, no_meter, TuningDatabase(db or default_db())


def _check_dtypes(found: list[Task], kind: str) -> None:
    for task in found:
        if task.dtype not in DTYPES_FOR_TARGET[kind]:
            raise UsageError(f"{task.label}: dtype {task.dtype} is not supported on target {kind} "
                             f"(supported: {', '.join(DTYPES_FOR_TARGET[kind])})")


def tune_tasks_on(found: list[Task], *, target: str = "auto",
                  objective: Objective | str | None = None,
                  trials: int = 64, db: str | Path | None = None, export: str | Path | None = None,
                  baseline: bool = True, console: Console | None = None, title: str = "model",
                  **settings) -> ModelRun:
    """Tune `found` from one budget (see compiler/model_tuner.py), report, optionally export."""
    objective = _objective(objective)
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    if not found:
        raise GraphError("the model has no op this compiler tunes (matmul, batch_matmul, gemv, "
                         "linear, conv2d); nothing to do")
    plat, no_meter, database = _setup(target, objective, db)
    console = console or Console(stderr=True)
    try:
        _check_dtypes(found, plat.kind)
        cfg = Settings(objective, trials, **settings)
        results, tuner = tune_tasks(found, plat, database, cfg, no_meter, console,
                                    f"{title} on {plat.device_name}, objective {objective.label}, "
                                    f"{trials} trials", baseline)
        run = ModelRun(results, objective, plat.device_name, database.path)
        if export is not None:
            kernels = [(s.op, plat.target, r)
                       for s, r in zip(tuner.states, tuner.chosen()) if r is not None]
            run.library, run.not_exported = export_library(kernels, objective.label, export)
    finally:
        database.close()
    return run


def only_ops(found: list[Task], ops: tuple[str, ...] | None) -> list[Task]:
    """The tasks of the named ops (all where `ops` is None); an unknown name is a UsageError."""
    if ops is None:
        return found
    from ..schedules import OPS

    if unknown := sorted(set(ops) - set(OPS)):
        raise UsageError(f"unknown op {unknown[0]!r} in ops (known: {', '.join(sorted(OPS))})")
    return [t for t in found if t.op in ops]


def tune_model(model, example_inputs: tuple | None = None, *, dtype: str | None = None,
               target: str = "auto", ops: tuple[str, ...] | None = None, **kwargs) -> ModelRun:
    """Tune every task of a model (spec or nn.Module, as `graph` takes) from one budget, or
    only those of `ops` (the rest stay with torch). Keyword arguments: objective (an Objective
    or its name), trials, db, export, baseline, console, and Settings' fields (l2,
    energy_policy, seed, overlap, round_trials, first_trials, ...)."""
    from .target import resolve

    if dtype is None and not hasattr(model, "forward"):
        dtype = DEFAULT_DTYPE[resolve(target).kind]
    g = graph(model, example_inputs, dtype or "float32")
    return tune_tasks_on(only_ops(graph_tasks(g), ops), target=target,
                         title=g.graph.get("name", "model"), **kwargs)


def tune_op(op: str, shape: str | None = None, dtype: str | None = None,
            params: dict | None = None, *, target: str = "auto", **kwargs) -> ModelRun:
    """Tune one op (as `tune --op` does, one implementation); keyword arguments as tune_model."""
    from .target import resolve
    from ..schedules import OPS, make_op

    kind = resolve(target).kind
    if op not in OPS:
        raise UsageError(f"unknown op {op!r} (known: {', '.join(sorted(OPS))})")
    made = make_op(op, shape or OPS[op].default_shape[kind], dtype or DEFAULT_DTYPE[kind], params)
    task = Task(made.name, dict(made.shape), made.dtype, 1, [made.name], params)
    return tune_tasks_on([task], target=target, title=made.name, **kwargs)


def records(db: str | Path, op: str | None = None) -> list:
    """Every measured candidate in the db (of `op` only, if given), in the order measured."""
    from .database import DatabaseError, TuningDatabase

    if not Path(db).is_file():
        raise DatabaseError(f"no tuning database at {db}")
    database = TuningDatabase(db)
    try:
        found = [r for key in database.workload_keys() for r in database.records(key)]
    finally:
        database.close()
    return sorted((r for r in found if op is None or r.workload.get("op") == op),
                  key=lambda r: r.id)


def export(db: str | Path, out_dir: str | Path, objective: Objective | str | None = None,
           model=None, example_inputs: tuple | None = None, target: str = "auto",
           dtype: str | None = None) -> tuple[Path, list[str]]:
    """The chosen kernel of every workload in the db (or of `model`'s tasks only) as a library
    in out_dir: (manifest path, ops the library cannot hold)."""
    from .database import DatabaseError, TuningDatabase
    from .target import resolve

    objective = _objective(objective)
    if not Path(db).is_file():
        raise DatabaseError(f"no tuning database at {db}")
    database = TuningDatabase(db)
    try:
        kernels = db_kernels(database, objective)
        if model is not None:  # only the model's workloads (under any measurement configuration)
            plat = resolve(target)
            found = tasks(model, example_inputs, dtype or DEFAULT_DTYPE[plat.kind])
            wanted = [t.make_op().describe() for t in found]
            kernels = [k for k in kernels if k[0].describe() in wanted]
        if not kernels:
            raise LibraryError(f"{db}: no correct kernel measured for objective {objective.label}"
                               + (" for this model's tasks" if model is not None else ""))
        return export_library(kernels, objective.label, out_dir)
    finally:
        database.close()


def report(run: ModelRun):
    """The rich table of a run: per task and per forward pass, ours against torch."""
    return report_table(run.results, f"objective {run.objective.label} on {run.device} "
                                     "(- = not measured)")

