"""Held-out cost-model predictions and dynamic-policy replays as JSON, for the notebook
experiments/notebooks/04_cost_model_and_policy.ipynb (which reads it instead of retraining).

    python -m experiments.model_predictions OUT.json --models DB... --replay DB...

`--models`: per workload with at least 30 correct candidates (experiments/model_quality.py's
grouping), the production model's (weighted loss, PerStore + kernel features) 4-fold
cross-validated predictions of every candidate beside its measured latency and energy, and the
folds (candidate indices).
`--replay`: per database and objective (energy, EDP, energy within 1.03x of the fastest), the
dynamic energy policy replayed as experiments/policy_replay.py does; measuring everything is the
reference it is compared with. CPU only: tens of minutes on two busy cores (each replay retrains
the model once per candidate); the file is rewritten after each step.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from energy_tuner.compiler.objective import Objective
from experiments.model_quality import cross_val_predictions, featurize, workloads
from experiments.policy_replay import replay
from energy_tuner.compiler.report_cli import read_records

OBJECTIVES = (Objective("energy"), Objective("edp"), Objective("energy", 1.03))


def model_predictions(paths: list[str], min_candidates: int = 30) -> list[dict]:
    out = []
    for key, records in sorted(workloads(paths).items()):
        if len(records) < min_candidates:
            continue
        _, x = featurize(records)
        lat = np.array([r.latency_s for r in records])
        energy = np.array([r.energy_j for r in records])
        pred, folds = cross_val_predictions(x, lat, energy, weighted=True, kernel_features=True)
        out.append({"workload": key, "latency_s": lat.tolist(), "energy_j": energy.tolist(),
                    "predicted": {name: p.tolist() for name, p in pred.items()},
                    "folds": [f.tolist() for f in folds]})
    return out


def policy_replays(paths: list[str], done=lambda result: None) -> list[dict]:
    """Replays of the dynamic policy per database and objective; `done` sees each result."""
    out = []
    for path in paths:
        records = [r for r in read_records(Path(path)) if r.status == "ok"]
        _, x = featurize(records)
        for objective in OBJECTIVES:
            result = replay(records, x, objective, "dynamic")
            out.append({"db": path, "objective": objective.label, **result})
            done(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--replay", nargs="*", default=[])
    args = ap.parse_args()
    result = {"command": "python -m experiments.model_predictions " + " ".join(
                  [args.out, "--models", *args.models, "--replay", *args.replay]),
              "models": model_predictions(args.models), "replays": []}

    def write(replays: list[dict]) -> None:  # after each step, so a long run can be cut
        result["replays"] = replays
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    write([])
    policy_replays(args.replay, write)


if __name__ == "__main__":
    main()
