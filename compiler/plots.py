"""Figures of tuning results (matplotlib): the tuning curve, the latency-energy scatter with its
Pareto front, and the comparisons the research notebooks draw. `tune-report` and the notebooks
under experiments/notebooks call these functions; each draws on an Axes it is given or makes one.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from .database import Record
from .objective import Objective, pareto_front
from .report import UNITS
from ..schedules import op_from_description


@dataclass(frozen=True)
class Reference:
    """A library call measured like our kernels (e.g. a cuBLAS entry of experiments/cublas_energy.py)."""
    name: str
    latency_s: float
    energy_j: float


def workload_label(record: Record) -> str:
    """`op shape dtype on device`, as the tune's summary names the workload."""
    op = op_from_description(record.workload)
    params = "".join(f" {k}={v}" for k, v in op.params.items())
    return f"{op.name} {op.shape_text()} {op.dtype}{params} on {record.device}"


def by_workload(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Records grouped by workload key, each group in measurement (id) order."""
    groups: dict[str, list[Record]] = {}
    for r in sorted(records, key=lambda r: r.id or 0):
        groups.setdefault(r.workload_key, []).append(r)
    return groups


def best_so_far(records: Sequence[Record], objective: Objective) -> list[float | None]:
    """After each trial (record, in order), the objective's value of the kernel it would choose
    among the trials so far (None until a correct, fully measured one exists)."""
    curve = []
    for i in range(len(records)):
        chosen = objective.choose(list(records[:i + 1]))
        curve.append(None if chosen is None else objective.value(chosen.latency_s, chosen.energy_j))
    return curve


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=(5.5, 4))[1]


def tuning_curve(records: Sequence[Record], ax: Axes | None = None) -> Axes:
    """Best objective vs trial for each tune (objective) of one workload's records, as a fraction
    of the tune's final best (so tunes of different objectives share one axis), with each
    trial's own value as a dot."""
    ax = _axes(ax)
    tunes: dict[str, list[Record]] = {}
    for r in records:
        tunes.setdefault(r.objective, []).append(r)
    for key, tune in tunes.items():
        objective = Objective.from_key(key)
        curve = best_so_far(tune, objective)
        final = next((v for v in reversed(curve) if v is not None), None)
        if final is None:
            continue
        unit, scale = UNITS[objective.kind]
        trials = np.arange(1, len(tune) + 1)
        best = np.array([np.nan if v is None else v / final for v in curve])
        line, = ax.step(trials, best, where="post",
                        label=f"{objective.label} (best {final * scale:.4g} {unit})")
        own = [objective.value(r.latency_s, r.energy_j) if r.status == "ok" else None
               for r in tune]
        ax.plot(trials, [np.nan if v is None else v / final for v in own], ".",
                color=line.get_color(), alpha=0.35)
    ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective / final best (log)")
    _legend_or_note(ax, "no correct, fully measured kernel")
    return ax


def _legend_or_note(ax: Axes, note: str) -> None:
    """A legend, or `note` in the middle of an Axes that has nothing to label."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center")


def latency_energy(records: Sequence[Record], ax: Axes | None = None,
                   references: Sequence[Reference] = (), title: str | None = None,
                   zoom: float | None = None) -> Axes:
    """Latency vs energy per call of every correct kernel with measured energy, coloured by the
    objective of the tune that measured it, the Pareto front as a line, each tune's chosen kernel
    circled and library calls as stars; log axes, or with `zoom` linear axes up to `zoom` times
    the least latency and energy plotted (the region near the front)."""
    ax = _axes(ax)
    measured = [r for r in records if r.status == "ok" and r.energy_j is not None
                and r.latency_s is not None]
    for key in dict.fromkeys(r.objective for r in measured):
        pts = np.array([(r.latency_s, r.energy_j) for r in measured if r.objective == key]) * 1e3
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.6, label=f"tuned for {key}")
    front = np.array([(r.latency_s, r.energy_j) for r in pareto_front(measured)]) * 1e3
    if len(front):
        ax.step(front[:, 0], front[:, 1], where="post", color="black", lw=1,
                label=f"Pareto front ({len(front)})")
    for key in dict.fromkeys(r.objective for r in measured):
        chosen = Objective.from_key(key).choose(measured)
        if chosen is not None:
            ax.scatter([chosen.latency_s * 1e3], [chosen.energy_j * 1e3], s=90,
                       facecolors="none", edgecolors="black")
    for ref in references:
        ax.scatter([ref.latency_s * 1e3], [ref.energy_j * 1e3], marker="*", s=120,
                   label=ref.name)
    if zoom and measured:
        xs = [r.latency_s * 1e3 for r in measured] + [r.latency_s * 1e3 for r in references]
        ys = [r.energy_j * 1e3 for r in measured] + [r.energy_j * 1e3 for r in references]
        ax.set_xlim(min(xs) / 1.02, zoom * min(xs))
        ax.set_ylim(min(ys) / 1.02, zoom * min(ys))
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("energy per call (mJ)")
    if title:
        ax.set_title(title, fontsize="medium")
    _legend_or_note(ax, "no correct kernel with measured energy")
    return ax


def slug(text: str) -> str:
    """A file-name-safe version of `text`."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def write_report(records: Sequence[Record], out: Path, dpi: int = 100) -> list[Path]:
    """Per workload of `records`: `<label>_tuning_curve.png` and `<label>_latency_energy.png`
    (all kernels, and near the front: within 1.5x of the least latency and energy) in `out`;
    returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, group in by_workload(records).items():
        label = workload_label(group[0])
        name = slug(f"{label} {key}")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        tuning_curve(group, ax=ax)
        fig.suptitle(label, fontsize="medium")
        written.append(_save(fig, out / f"{name}_tuning_curve.png", dpi))
        fig, (full, near) = plt.subplots(1, 2, figsize=(10, 4))
        latency_energy(group, ax=full, title="all kernels")
        latency_energy(group, ax=near, title="near the front", zoom=1.5)
        fig.suptitle(label, fontsize="medium")
        written.append(_save(fig, out / f"{name}_latency_energy.png", dpi))
    return written


def _save(fig: plt.Figure, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def ratio_bars(labels: Sequence[str], series: dict[str, Sequence[float | None]],
               ax: Axes | None = None, baseline: str = "1 = reference") -> Axes:
    """Grouped horizontal bars of ratios (e.g. ours / cuBLAS latency and energy) per label; a
    missing value (None) is left out and marked "not measured"."""
    ax = _axes(ax)
    height = 0.8 / max(1, len(series))
    y = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        vals = np.array([np.nan if v is None else v for v in values], dtype=float)
        ax.barh(y + i * height, vals, height, label=name)
        for j, v in enumerate(vals):
            ax.text(0 if np.isnan(v) else v, y[j] + i * height,
                    " not measured" if np.isnan(v) else f" {v:.2f}", va="center",
                    fontsize="x-small")
    ax.axvline(1.0, color="black", lw=0.8, label=baseline)
    ax.set_yticks(y + height * (len(series) - 1) / 2, labels, fontsize="small")
    ax.invert_yaxis()
    ax.legend(fontsize="small")
    return ax


def error_bars(labels: Sequence[str], means: Sequence[float], stds: Sequence[float],
               ax: Axes | None = None, ylabel: str = "") -> Axes:
    """Means with ±1 standard deviation error bars, one per label."""
    ax = _axes(ax)
    x = np.arange(len(labels))
    ax.errorbar(x, means, yerr=stds, fmt="o", capsize=4)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel(ylabel)
    return ax


def predicted_vs_measured(measured: np.ndarray, predicted: np.ndarray, ax: Axes | None = None,
                          quantity: str = "", unit: str = "") -> Axes:
    """Predicted against measured values (log-log) with the identity line; the best quarter by
    measurement is highlighted."""
    ax = _axes(ax)
    measured, predicted = np.asarray(measured), np.asarray(predicted)
    top = measured <= np.quantile(measured, 0.25)
    ax.scatter(measured[~top], predicted[~top], s=12, alpha=0.6, label="other candidates")
    ax.scatter(measured[top], predicted[top], s=12, alpha=0.8, label="best quarter")
    lo = min(measured.min(), predicted.min())
    hi = max(measured.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"measured {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")
    ax.legend(fontsize="small")
    return ax
