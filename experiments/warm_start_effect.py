"""Issue 11's transfer measure: how many trials a tune needed to come within 5% of its final
objective (95% of it), with and without a warm-started model, from the two tunes' databases:
    python -m experiments.warm_start_effect COLD.sqlite WARM.sqlite [--objective energy] [--json OUT]
Each database's records of its newest workload are read in measurement order (for WARM, the
records of the source workload it was warm-started from are left out)."""
from __future__ import annotations

import argparse
import json
import sys

from energy_tuner.compiler.database import TuningDatabase
from energy_tuner.compiler.objective import Objective


def best_so_far(records, objective: Objective) -> list[float | None]:
    """After each record: the objective's value of its pick among the records so far."""
    out = []
    for i in range(len(records)):
        pick = objective.choose(records[: i + 1])
        out.append(objective.value(pick.latency_s, pick.energy_j) if pick else None)
    return out


def trials_to(curve: list[float | None], target: float) -> int | None:
    """The first trial (1-based) whose best so far is within `target` (None if never)."""
    return next((i + 1 for i, v in enumerate(curve) if v is not None and v <= target), None)


def newest_workload(path: str) -> list:
    db = TuningDatabase(path)
    return db.records(db.workload_keys()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cold")
    ap.add_argument("warm")
    ap.add_argument("--objective", default="energy")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    objective = Objective.from_key(args.objective)
    curves = {name: best_so_far(newest_workload(path), objective)
              for name, path in (("cold", args.cold), ("warm", args.warm))}
    finals = {name: next((v for v in reversed(c) if v is not None), None)
              for name, c in curves.items()}
    if None in finals.values():
        print("a tune has no measured pick", file=sys.stderr)
        return 2
    common = min(finals.values())
    summary = {}
    for name, curve in curves.items():
        summary[name] = {"trials": len(curve), "final": finals[name],
                         "trials_to_95pct_own_final": trials_to(curve, finals[name] / 0.95),
                         "trials_to_95pct_best_final": trials_to(curve, common / 0.95),
                         "trials_to_99pct_best_final": trials_to(curve, common / 0.99)}
        print(name, json.dumps(summary[name]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
