"""Fixed-length feature vectors for schedule candidates.

TVM's PerStoreFeature gives one 164-wide row per buffer store of a candidate; rows are aggregated
by sum, max and mean into one vector so that candidates with different numbers of stores compare.
"""
from __future__ import annotations

import numpy as np
from tvm.s_tir import meta_schedule as ms

_EXTRACTOR = None


def _extractor() -> ms.feature_extractor.PerStoreFeature:
    global _EXTRACTOR
    if _EXTRACTOR is None:
        _EXTRACTOR = ms.feature_extractor.PerStoreFeature(extract_workload=True)
    return _EXTRACTOR


def aggregate(rows: np.ndarray) -> np.ndarray:
    """[n_stores, d] -> [3 d]: sum, max and mean over stores (zeros when there are none)."""
    if rows.shape[0] == 0:
        return np.zeros(3 * rows.shape[1], dtype=np.float32)
    return np.concatenate([rows.sum(0), rows.max(0), rows.mean(0)]).astype(np.float32)


def candidate_features(context: ms.TuneContext, candidates: list[ms.MeasureCandidate]) -> np.ndarray:
    """One row per candidate; extraction runs on the context's threads."""
    if not candidates:
        return np.zeros((0, 0), dtype=np.float32)
    matrices = _extractor().extract_from(context, candidates)
    return np.stack([aggregate(m.numpy()) for m in matrices])
