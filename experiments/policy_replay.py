"""Dynamic energy policy vs measuring every candidate, replayed on candidates measured on a GPU.

    python -m experiments.policy_replay experiments/results/matmul4096_fp16_h200_2026-11-21/*.sqlite.gz

Each tune's candidates are replayed in the order they were measured. Before each candidate the
model is retrained on what the policy has measured so far (features from the stored trace,
latency always known, energy only where the policy measured it), the policy decides, and a
skipped candidate's energy is hidden. At the end the objective chooses among what was measured;
that choice is compared with the choice from all the recorded energies. Runs on a CPU.
"""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler.policy import EnergyPolicy
from energy_tuner.costmodel.model import KernelModel
from experiments.model_quality import featurize
from energy_tuner.compiler.report_cli import read_records


def replay(records, features: np.ndarray, objective: Objective, mode: str,
           **policy_args) -> dict:
    """Replay one tune under a policy; returns counts and the chosen kernel's figures."""
    policy = EnergyPolicy(objective, mode, **policy_args)
    seen, model = [], KernelModel(seed=0)
    for i, r in enumerate(records):
        if r.status != "ok":
            seen.append(r)
            continue
        predicted = None
        if model.power is not None:
            predicted = float(math.exp(model.predict_log(features[i:i + 1])["power"][0]))
        keep = policy.decide(r.latency_s, predicted, seen)
        if keep:
            policy.observe(predicted, r.latency_s, r.energy_j)
        seen.append(r if keep else replace(r, energy_j=None, power_w=None))
        ok = [j for j, s in enumerate(seen) if s.status == "ok"]
        lat = np.array([seen[j].latency_s for j in ok])
        energy = np.array([np.nan if seen[j].energy_j is None else seen[j].energy_j for j in ok])
        model.fit(features[ok], lat, energy)
    chosen = objective.choose(seen)
    truth = objective.choose(records)
    return {"policy": mode, "measured": policy.measured, "skipped": policy.skipped,
            "chosen_id": chosen.id, "energy_j": chosen.energy_j, "latency_s": chosen.latency_s,
            "energy_vs_all": chosen.energy_j / truth.energy_j - 1}


def main(paths: list[str]) -> None:
    print("| tune | objective | policy | energy measured | chosen kernel | energy (mJ) | "
          "latency (ms) | energy vs measuring all |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        records = [r for r in read_records(Path(path)) if r.status == "ok"]
        _, features = featurize(records)
        for objective in (Objective("energy"), Objective("edp"), Objective("energy", 1.03)):
            for mode, args in (("all", {}), ("dynamic", {}),
                               ("dynamic, error factor 1", {"error_factor": 1.0})):
                out = replay(records, features, objective, mode.split(",")[0], **args)
                print(f"| {Path(path).name} | {objective.label} | {mode} | {out['measured']} of "
                      f"{out['measured'] + out['skipped']} | id {out['chosen_id']} | "
                      f"{out['energy_j'] * 1e3:.1f} | {out['latency_s'] * 1e3:.4f} | "
                      f"{out['energy_vs_all']:+.1%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
