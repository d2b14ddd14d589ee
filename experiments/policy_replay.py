"""Dynamic energy policy vs measuring every candidate, replayed on candidates measured on a GPU.

    python -m experiments.policy_replay DB... [--orders N] [--trials T] [--objectives K,...]
        [--warmup W] [--base-margin M] [--json SUMMARY]

Runs on a CPU. Each tune (a tuning database, .gz or not) is replayed in the order it was
measured. Before each candidate the model is retrained on what the policy has measured so far
(features of the candidate's space: a trace space's from the stored trace, a knob space's own
`features`; latency always known, energy only where the policy measured it), the policy decides,
and a skipped candidate's energy is hidden. A candidate screened out in the tune had no energy
and asks for none. At the end the objective chooses among what was measured; that choice is
compared with the choice from all the recorded energies.

Knob-space tunes are also replayed in N random orders of the distinct configs of all the given
databases of one workload (T of them per order): `seeds first` puts the space's seeds first, as
the genetic strategy proposes them, the policy taking them as its warmup (`policy_for`);
`shuffled` leaves them where the shuffle puts them and warms up on WARMUP candidates, as on a
space without seeds. Shuffles do not reproduce how the genetic search converges on the front:
the recorded orders do.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from energy_tuner.compiler.database import Record
from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler.policy import WARMUP, EnergyPolicy, policy_for
from energy_tuner.compiler.report_cli import read_records
from energy_tuner.costmodel.model import KernelModel
from energy_tuner.schedules import op_from_description
from energy_tuner.schedules.knobs import SPACES, KnobSpace
from experiments.model_quality import H100, featurize

OBJECTIVES = ("energy", "edp", "energy@1.03x")


def replay(records: list[Record], features: np.ndarray, objective: Objective,
           policy: EnergyPolicy) -> dict:
    """Replay one order of correct candidates under a policy: counts, the chosen kernel's
    figures, and the skipped candidates that would have beaten the pick of their time."""
    seen, model, misses = [], KernelModel(seed=0), []
    for i, r in enumerate(records):
        if r.energy_j is None:  # screened out in the tune: no energy to decide on
            seen.append(r)
            continue
        predicted = None
        if model.power is not None and policy.mode == "dynamic":
            predicted = float(math.exp(model.predict_log(features[i:i + 1])["power"][0]))
        keep = policy.decide(r.latency_s, predicted, seen)
        if keep:
            policy.observe(predicted, r.latency_s, r.energy_j)
        elif (pick := objective.choose(seen)) and (value := objective.value(r.latency_s, r.energy_j)) \
                < objective.value(pick.latency_s, pick.energy_j):
            misses.append(1 - value / objective.value(pick.latency_s, pick.energy_j))
        seen.append(r if keep else replace(r, energy_j=None, power_w=None))
        if policy.mode == "dynamic":
            ok = [j for j, s in enumerate(seen) if s.status == "ok"]
            energy = [np.nan if seen[j].energy_j is None else seen[j].energy_j for j in ok]
            model.fit(features[ok], np.array([seen[j].latency_s for j in ok]), np.array(energy))
    chosen, truth = objective.choose(seen), objective.choose(records)
    return {"measured": policy.measured, "skipped": policy.skipped, "chosen_id": chosen.id,
            "energy_j": chosen.energy_j, "latency_s": chosen.latency_s,
            "energy_vs_all": chosen.energy_j / truth.energy_j - 1,
            "misses": len(misses), "worst_miss": max(misses, default=0.0)}


@dataclass
class Case:
    """One order of one workload's candidates to replay."""
    name: str
    records: list[Record]
    features: np.ndarray
    space: object = None        # the knob space, or None (trace space)
    seeded: bool = False        # the space's seeds lead the order: the policy's warmup


def knob_space(records: list[Record]) -> KnobSpace | None:
    trace = records[0].trace
    if not isinstance(trace, dict):
        return None
    return SPACES[trace["space"]](op_from_description(records[0].workload), H100)


def shuffled(name: str, pool: list[Record], features: np.ndarray, space: KnobSpace, orders: int,
             trials: int, seeds_first: bool) -> list[Case]:
    keys = [KnobSpace.key(space.complete(r.trace["config"])) for r in pool]
    seeds = [keys.index(k) for k in map(KnobSpace.key, space.runnable_seeds()) if k in keys] \
        if seeds_first else []
    rest = [i for i in range(len(pool)) if i not in seeds]
    cases = []
    for n in range(orders):
        order = (seeds + list(np.random.default_rng(n).permutation(rest)))[:trials]
        cases.append(Case(f"{name}, order {n}", [pool[i] for i in order], features[order], space,
                          seeded=seeds_first))
    return cases


def cases(paths: list[str], orders: int, trials: int) -> list[Case]:
    """Each tune in its recorded order; per knob-space workload, the random orders of its pool."""
    out, pools = [], {}
    for path in paths:
        records = [r for r in read_records(Path(path)) if r.status == "ok"]
        _, features = featurize(records)
        space = knob_space(records)
        seeded = space is not None and bool(space.runnable_seeds()) and all(
            KnobSpace.key(space.complete(r.trace["config"])) == KnobSpace.key(c)
            for r, c in zip(records, space.runnable_seeds()))
        out.append(Case(f"{path}, as recorded", records, features, space, seeded))
        if space is not None:
            pool = pools.setdefault(json.dumps(records[0].workload, sort_keys=True), {})
            for r in records:  # a config measured in several tunes: its first measurement
                pool.setdefault(KnobSpace.key(r.trace["config"]), r)
    for workload, pool in pools.items():
        records = list(pool.values())
        _, features = featurize(records)
        space = knob_space(records)
        label = f"{len(records)} distinct configs"
        out += shuffled(f"{label}, seeds first", records, features, space, orders, trials, True)
        out += shuffled(f"{label}, shuffled", records, features, space, orders, trials, False)
    return out


def policy(objective: Objective, case: Case, warmup: int | None = None,
           base_margin: float | None = None) -> EnergyPolicy:
    """The dynamic policy a tune of the case runs (`policy_for`; WARMUP where the seeds do not
    lead), or a variant: another warmup or base margin."""
    p = policy_for(objective, "dynamic", case.space) if case.seeded else \
        EnergyPolicy(objective, "dynamic", warmup=WARMUP)
    p.warmup = p.warmup if warmup is None else warmup
    p.base_margin = p.base_margin if base_margin is None else base_margin
    return p


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--orders", type=int, default=10)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument("--warmup", type=int, help="replay this warmup instead of the policy's")
    ap.add_argument("--base-margin", type=float, help="replay this base margin instead")
    ap.add_argument("--json", type=Path, help="write every row here too")
    args = ap.parse_args(argv)
    rows = []
    print("| case | objective | warmup | base margin | energy measured | chosen kernel | energy (mJ) | "
          "latency (ms) | energy vs measuring all | skipped that beat the pick |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in cases(args.paths, args.orders, args.trials):
        for key in args.objectives.split(","):
            objective = Objective.from_key(key)
            p = policy(objective, case, args.warmup, args.base_margin)
            out = replay(case.records, case.features, objective, p)
            rows.append({"case": case.name, "objective": key, "warmup": p.warmup,
                         "base_margin": p.base_margin,
                         "candidates": len(case.records), **out})
            print(f"| {case.name} | {objective.label} | {p.warmup} | {p.base_margin:.0%} | "
                  f"{out['measured']} of "
                  f"{out['measured'] + out['skipped']} | id {out['chosen_id']} | "
                  f"{out['energy_j'] * 1e3:.1f} | {out['latency_s'] * 1e3:.4f} | "
                  f"{out['energy_vs_all']:+.1%} | {out['misses']}"
                  + (f" (up to {out['worst_miss']:.1%})" if out["misses"] else "") + " |",
                  flush=True)
    if args.json:  # a summary.json (GUIDE section 6): GPU and date of the recorded candidates
        recorded = [r for path in args.paths for r in read_records(Path(path))]
        summary = {"gpu": ", ".join(sorted({r.device for r in recorded})),
                   "date": ", ".join(sorted({time.strftime("%Y-%m-%d", time.gmtime(r.created_at))
                                             for r in recorded})),
                   "command": "python -m experiments.policy_replay " + " ".join(
                       argv if argv is not None else sys.argv[1:]),
                   "replayed_on": "CPU", "cases": rows}
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
