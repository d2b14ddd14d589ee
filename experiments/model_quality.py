"""Cost-model quality on candidates measured on a GPU: Spearman and MAPE on held-out candidates.

    python -m experiments.model_quality experiments/results/*/*.sqlite.gz

Runs on a CPU: the schedules are rebuilt from the stored traces (or, for a knob space such as
hopper_gemm, its configs are featurized by the space itself) and featurized; no kernel runs.
Per workload with at least 30 measured candidates, 4-fold cross-validation over all correct
candidates, for the model with and without the weighted loss and with and without the
kernel-level features. Besides Spearman and
MAPE over all held-out candidates it reports them on the best quarter (what the search cares
about) and the regret: how much worse the truly best held-out candidate is than the one the
model ranks first. Energy is predicted twice: before anything is measured (the energy model,
which the search uses) and once the cheap latency measurement is in (the power model x measured
latency, which the dynamic energy policy uses).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms

from energy_tuner.costmodel.features import candidate_features, knob_features
from energy_tuner.costmodel.model import KernelModel
from energy_tuner.compiler.report_cli import read_records
from energy_tuner.schedules import op_from_description
from energy_tuner.schedules.knobs import SPACES

FOLDS = 4


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


H100 = tvm.target.Target("nvidia/nvidia-h100")


def featurize(records) -> tuple[object, np.ndarray]:
    """The op and one feature row per record: a trace space's (ending in the 6 kernel-level
    features), or a knob space's own features (`of_knob_space`)."""
    op = op_from_description(records[0].workload)
    if isinstance(records[0].trace, dict):
        space = SPACES[records[0].trace["space"]](op, H100)
        return op, knob_features(op, [space.features(r.trace["config"]) for r in records])
    import tvm.s_tir.tensor_intrin  # noqa: F401  traces may tensorize with WMMA
    mod = tvm.IRModule({"main": op.prim_func()})
    ctx = ms.TuneContext(mod=mod, target=H100, num_threads=2)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    cands = []
    for r in records:
        sch = tvm.s_tir.Schedule(mod)
        tvm.s_tir.schedule.Trace.apply_json_to_schedule(r.trace, sch)
        cands.append(ms.MeasureCandidate(sch, args))
    return op, candidate_features(ctx, cands, op)


def of_knob_space(records) -> bool:
    return isinstance(records[0].trace, dict)


PREDICTED = ("latency", "energy", "energy (latency measured)")


def cross_val_predictions(x, lat, energy, weighted, kernel_features):
    """Held-out predictions of every candidate ({quantity: array}, see PREDICTED) and the folds."""
    if not kernel_features:
        x = x[:, :-6]
    pred = {name: np.zeros(len(lat)) for name in PREDICTED}
    folds = np.array_split(np.random.default_rng(0).permutation(len(lat)), FOLDS)
    for test in folds:
        train = np.setdiff1d(np.arange(len(lat)), test)
        model = KernelModel(seed=0, weighted=weighted)
        model.fit(x[train], lat[train], energy[train])
        p = model.predict_log(x[test])
        pred["latency"][test] = np.exp(p["latency"])
        pred["energy"][test] = np.exp(p["energy"])
        pred["energy (latency measured)"][test] = np.exp(p["power"]) * lat[test]
    return pred, folds


def evaluate(x, lat, energy, weighted, kernel_features):
    return scores(*cross_val_predictions(x, lat, energy, weighted, kernel_features), lat, energy)


def scores(pred, folds, lat, energy):
    """Per predicted quantity: Spearman, MAPE, both on the best quarter, regret of the predicted
    best of each fold."""
    out = {}
    for name, truth in zip(PREDICTED, (lat, energy, energy)):
        p = pred[name]
        top = truth <= np.quantile(truth, 0.25)
        regrets = [truth[t][np.argmin(p[t])] / truth[t].min() - 1 for t in folds]
        out[name] = (spearman(p, truth), float(np.mean(np.abs(p - truth) / truth)),
                     spearman(p[top], truth[top]), float(np.mean(np.abs(p[top] - truth[top]) /
                                                                  truth[top])),
                     float(np.mean(regrets)))
    return out


def workloads(paths: list[str]) -> dict[str, list]:
    """Correct candidates with measured energy, by workload and GPU; a schedule measured in
    several databases (same seed, same trace) counts once, so that no fold tests on its train."""
    groups: dict[str, dict[str, object]] = {}
    for path in paths:
        for r in read_records(Path(path)):
            if r.status == "ok" and r.energy_j is not None:
                op = op_from_description(r.workload)
                params = "".join(f" {k}={v}" for k, v in op.params.items())
                key = f"{op.name} {op.shape_text()} {op.dtype}{params} on {r.device}"
                groups.setdefault(key, {}).setdefault(str(r.trace), r)
    return {key: list(by_trace.values()) for key, by_trace in groups.items()}


def table(title: str, x: np.ndarray, lat: np.ndarray, energy: np.ndarray,
          kernel_columns: bool = True) -> None:
    print(f"\n### {title}: {len(lat)} candidates, {FOLDS}-fold cross-validation\n")
    print("| model | quantity | Spearman | MAPE | Spearman, best 25% | MAPE, best 25% | "
          "regret of predicted best |")
    print("|---|---|---|---|---|---|---|")
    for weighted in (False, True):
        for kernel in ((False, True) if kernel_columns else (True,)):
            label = (f"{'weighted' if weighted else 'unweighted'}, " + (
                f"{'PerStore + kernel' if kernel else 'PerStore only'}" if kernel_columns
                else "knob features"))
            for name, (rho, mape, rho_top, mape_top, regret) in \
                    evaluate(x, lat, energy, weighted, kernel).items():
                print(f"| {label} | {name} | {rho:.3f} | {mape:.1%} | {rho_top:.3f} | "
                      f"{mape_top:.1%} | {regret:.1%} |")


def main(paths: list[str], min_candidates: int = 30) -> None:
    skipped = []
    for key, records in sorted(workloads(paths).items()):
        if len(records) < min_candidates:
            skipped.append(f"{key} ({len(records)})")
            continue
        _, x = featurize(records)
        lat = np.array([r.latency_s for r in records])
        energy = np.array([r.energy_j for r in records])
        table(key, x, lat, energy, kernel_columns=not of_knob_space(records))
    if skipped:
        print(f"\nSkipped, fewer than {min_candidates} candidates: " + "; ".join(skipped))


if __name__ == "__main__":
    main(sys.argv[1:])
