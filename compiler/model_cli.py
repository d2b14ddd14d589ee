"""`tune-model`: tune every kernel of a model from one trial budget and export them as a library.

    tune-model --model decoder_layer:hidden=4096,ffn=14336,heads=32,kv_heads=8,batch=1,seq=2048,phase=decode
    tune-model --model spec.json --trials 256 --objective energy --export lib/
    tune-model --module mymodel.py:build --target llvm      # build() -> (nn.Module, example inputs)
    tune-model --export lib/ --db tuning.sqlite             # no model: every workload in the db
    tune-model --verify lib/                                # check a library loads here, list it
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import NoReturn

from .cli import UsageError, _Parser, default_db
from .objective import KINDS
from .policy import AUTO, CHOICES
from ..measure.l2_policy import L2_CHOICES

PROG = "tune-model"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="SPEC",
                     help="a JSON spec file or name:key=value,...; models: decoder_layer (hidden, "
                          "ffn, heads, kv_heads, batch, seq, phase=prefill|decode), "
                          "resnet50_stage (stage, batch, image)")
    src.add_argument("--module", metavar="FILE.py:FUNC",
                     help="FUNC() returns (nn.Module, example inputs); traced with torch.fx")
    src.add_argument("--verify", type=Path, metavar="DIR",
                     help="load the library in DIR as torch would (hashes, TVM version, device) "
                          "and list its kernels")
    p.add_argument("--dtype", choices=("float16", "float32"),
                   help="dtype of a spec's ops (default: float16 on cuda, float32 on llvm)")
    p.add_argument("--target", choices=("auto", "cuda", "llvm"), default="auto")
    p.add_argument("--objective", choices=KINDS, help="as for tune (default latency)")
    p.add_argument("--max-slowdown", type=float, metavar="X", help="as for tune")
    p.add_argument("--energy-policy", choices=CHOICES, default=AUTO, help="as for tune")
    p.add_argument("--trials", type=int, default=64,
                   help="candidates to measure over all tasks, counting those already in --db")
    p.add_argument("--first-trials", type=int, default=4,
                   help="trials each task gets before the budget follows the tasks' shares")
    p.add_argument("--round-trials", type=int, default=16,
                   help="trials handed out by share per round after that")
    p.add_argument("--db", type=Path, default=default_db(), help=f"default: {default_db()}")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="write the chosen kernels as a library (shared libraries, manifest) here")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the report as JSON here")
    p.add_argument("--l2", choices=L2_CHOICES, default="auto", help="as for tune (per task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-overlap", action="store_true", help="as for tune")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not time torch on each task after tuning")
    return p


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def load_module_factory(text: str):
    """(module, example inputs) from `FILE.py:FUNC`."""
    from .graph import GraphError

    file, sep, func = text.rpartition(":")
    if not sep or not file.endswith(".py") or not Path(file).is_file():
        raise GraphError(f"--module {text!r}: expected FILE.py:FUNC with an existing file")
    try:
        spec = importlib.util.spec_from_file_location(Path(file).stem, file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        module, inputs = getattr(mod, func)()
    except Exception as err:  # whatever the user's file raises
        raise GraphError(f"--module {text}: {type(err).__name__}: {err}") from None
    return module, tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        for flag in ("trials", "first_trials", "round_trials"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(args, flag)}")
        if args.model is None and args.module is None and args.export is None \
                and args.verify is None:
            raise UsageError("give --model or --module (or --export alone to export the db, "
                             "or --verify DIR)")
    except UsageError as err:
        fail(str(err))
    from rich.console import Console

    from . import api
    from ..measure.worker import WorkerError

    err = Console(stderr=True)
    try:
        if args.verify is not None:
            _print_library(api.load(args.verify))
            return 0
        objective = api.make_objective(args.objective, args.max_slowdown)
        if args.model is None and args.module is None:
            manifest, skipped = api.export(args.db, args.export, objective, target=args.target)
            _print_export(err, manifest, skipped)
            return 0
        model, inputs = (args.model, None) if args.model else load_module_factory(args.module)
        run = api.tune_model(model, inputs, dtype=args.dtype, target=args.target,
                             objective=objective, trials=args.trials, db=args.db,
                             export=args.export, baseline=not args.no_baseline, console=err,
                             l2=args.l2, energy_policy=args.energy_policy, seed=args.seed,
                             overlap=not args.no_overlap, first_trials=args.first_trials,
                             round_trials=args.round_trials)
    except api.ERRORS as error:
        fail(str(error))
    except WorkerError as error:
        err.print(f"{PROG}: error: {error}; every measured candidate is in the db")
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: every measured candidate is in the db; "
                  "re-run the same command to continue")
        return 130
    Console().print(api.report(run))
    names = {r.torch.name for r in run.results if r.torch}
    err.print("torch: " + ("; ".join(sorted(names)) + " (Python-launched back-to-back calls)"
                           if names else "not measured"))
    if args.export:
        _print_export(err, run.library, run.not_exported)
    if args.json:
        args.json.write_text(json.dumps(run.to_dict(), indent=2, default=str))
    missing = [r.task.label for r in run.results if r.ours is None]
    if missing:
        err.print(f"no kernel (budget spent elsewhere, or no correct candidate), left to torch: "
                  f"{', '.join(missing)}")
    return 1 if missing else 0


def _print_library(lib) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report import fmt

    print(f"{lib.path}: verified, {len(lib.kernels)} kernels")
    table = Table()
    for col in ("kernel", "inputs", "device", "objective", "ms", "mJ", "db record"):
        table.add_column(col)
    for k in lib.kernels:
        m = k.entry["measured"]
        table.add_row(k.entry["library"], " x ".join(map(str, k.inputs)), k.entry["device"],
                      k.entry["objective"], fmt(m["latency_ms"]), fmt(m["energy_mj"]),
                      str(k.entry["db_record_id"]))
    Console().print(table)


def _print_export(console, manifest: Path, skipped: list[str]) -> None:
    console.print(f"exported the library to {manifest.parent} ({manifest.name})")
    if skipped:
        console.print(f"not exported (no library op for them): {', '.join(skipped)}")


if __name__ == "__main__":
    sys.exit(main())
