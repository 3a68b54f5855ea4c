"""Paired, seeded bootstrap intervals of a case's per-sample KPIs.

Every KPI aggregated from per-sample values (a :class:`~evalsuite.metrics.kpis.KPI` whose
aggregation has ``sample_keys``: means, percentiles, corpus-level rates, the token
reduction) gets a percentile interval from the same ``resamples`` draws of the case's
scored samples, with replacement. One draw picks whole samples, so every value of a
sample travels together: the OCR drift of a draw is that draw's error on the
reconstruction minus *the same samples'* error on the original (a paired interval),
and the cosine of a method is drawn over the samples its reference was drawn over.
The seed makes a case's intervals the same on every run and worker.

>>> from evalsuite.results import SampleRecord
>>> from evalsuite.metrics.kpis import CaseData
>>> data = CaseData([SampleRecord(str(i), "d", {"feature_cosine": c}) for i, c in enumerate([.9, .8, .95, .85])])
>>> low, high = intervals(data, seed=0)["feature_cosine_mean"]
>>> bool(0.8 <= low < 0.875 < high <= 0.95)
True
"""

from __future__ import annotations

import warnings

import numpy as np

from . import kpis as declarations
from .kpis import CaseData, CorpusRate, Mean, Percentile, ReductionPct

RESAMPLES = 1000
CONFIDENCE = 0.95


def intervals(data: CaseData, resamples: int = RESAMPLES, seed: int = 0,
              confidence: float = CONFIDENCE) -> dict[str, tuple[float, float]]:
    """KPI name -> (low, high) of its ``confidence`` interval, for every declared per-sample KPI the
    case measured; empty for a case with fewer than two scored samples (no spread to resample)."""
    n = len(data.records)
    if n < 2:
        return {}
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # [R, n] sample indices
    tail = (1.0 - confidence) / 2 * 100
    out = {}
    for kpi in declarations.declared():
        values = _resampled(kpi.aggregate, data, draws)
        if values is None:
            continue
        values = values[np.isfinite(values)]
        if len(values):
            low, high = np.percentile(values, [tail, 100 - tail])
            out[kpi.name] = (float(low), float(high))
    return out


def _column(data: CaseData, key: str) -> np.ndarray:
    """[n] values of ``key`` per scored sample, NaN where a sample has none."""
    return np.array([r.kpis.get(key, np.nan) for r in data.records], dtype=np.float64)


def _resampled(aggregate, data: CaseData, draws: np.ndarray) -> np.ndarray | None:
    """[R] values of ``aggregate`` over each draw; None for aggregations that are not per sample
    or for a KPI no sample has."""
    if isinstance(aggregate, (Mean, Percentile, CorpusRate)):
        column = _column(data, aggregate.key)
        if np.isnan(column).all():
            return None
        picked = column[draws]  # [R, n]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN draw of a KPI only some samples have: NaN, dropped
            if isinstance(aggregate, Mean):
                return np.nanmean(picked, axis=1)
            if isinstance(aggregate, Percentile):
                return np.nanpercentile(picked, aggregate.q, axis=1)
            weights = np.array([r.info.get(aggregate.weight, 0) for r in data.records], dtype=np.float64)
            weights = np.where(np.isnan(column), 0.0, weights)[draws]
            present = ~np.isnan(picked)
            total = weights.sum(axis=1)
            weighted = np.nansum(np.where(present, picked, 0.0) * weights, axis=1) / np.where(total > 0, total, 1)
            return np.where(total > 0, weighted, np.nanmean(picked, axis=1))
    if isinstance(aggregate, ReductionPct):
        before, after = _column(data, aggregate.before)[draws], _column(data, aggregate.after)[draws]
        if np.isnan(before).all():
            return None
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN draw of a KPI only some samples have: NaN, dropped
            return 100.0 * (1.0 - np.nanmean(after, axis=1) / np.nanmean(before, axis=1))
    return None
