"""Flatten a run's CaseResults into table rows (plain dicts, no database imports).

One ``case`` row per CaseResult (its aggregate KPIs, pass/fail, breaches) and
one ``sample`` row per SampleRecord (that sample's KPIs), told apart by
``row_kind``. The report reads rows of exactly this shape back from the store.

A few KPIs are promoted to columns of their own for quick SQL; every finite
KPI is also in the ``kpis`` map. A missing or NaN KPI is NULL in a promoted
column and absent from the map (beware: ``kpis['x']`` is 0 for an absent key
in ClickHouse; use ``mapContains`` or the NULLable columns).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from evalsuite.metrics.kpis import promoted_columns
from evalsuite.results import CaseResult, RunInfo, SampleRecord

SCHEMA_VERSION = 1

# column -> KPI key, from the KPI declarations (``db_column``). ``clip_score`` is the cosine
# similarity between the encoder's features with and without compression
# (``feature_cosine_mean``), not an image-text CLIP score; the name is the one dashboards ask for.
PROMOTED = promoted_columns()


def row_id(run_id: str, case_id: str, sample_id: str, row_kind: str) -> int:
    """Deterministic 64-bit id: the same result always maps to the same row."""
    key = "\x1f".join((run_id, case_id, sample_id, row_kind)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 -> aware UTC datetime (naive input is taken as UTC)."""
    stamp = datetime.fromisoformat(text)
    return stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp.astimezone(timezone.utc)


def finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _kpis(raw: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in ((k, finite(v)) for k, v in raw.items()) if v is not None}


def _doc_type(result: CaseResult) -> str:
    kinds = {s.doc_type for s in result.samples}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "")


def to_rows(run: RunInfo, results: list[CaseResult], ingested_at: datetime | None = None) -> list[dict[str, Any]]:
    """The table rows of ``results``: per case, its ``case`` row then its ``sample`` rows."""
    stamp = parse_timestamp(run.started_at)
    ingested_at = ingested_at or datetime.now(timezone.utc)
    rows = []
    for result in results:
        common = {
            "schema_version": SCHEMA_VERSION,
            "tenant_id": run.tenant_id,
            "run_id": run.run_id,
            "case_id": result.case_id,
            "model": result.model,
            "method": result.method,
            "method_params": json.dumps(result.params, sort_keys=True, default=str),
            "dataset": result.dataset,
            "labels": list(result.labels),
            "git_commit": run.git_commit,
            "host": run.host,
            "gpu": run.gpu,
            "versions": {str(k): str(v) for k, v in {**run.versions, **result.env}.items()},
            "seed": int(run.seed),
            "timestamp": stamp,
            "ingested_at": ingested_at,
        }
        rows.append(_row(common, "case", "", _doc_type(result), {**result.kpis, **_interval_keys(result)}, result.passed,
                         json.dumps([asdict(b) for b in result.breaches], default=float),
                         result.error, stage_seconds=result.stage_seconds))
        rows += [_sample_row(common, s) for s in result.samples]
    return rows


def _interval_keys(result: CaseResult) -> dict[str, float]:
    """The case's 95% intervals as ``kpis`` map entries ``ci_low.KPI`` / ``ci_high.KPI`` (the table's
    schema is unchanged: old tables stay readable; ``n`` is the ``samples_scored`` KPI)."""
    keys = {}
    for kpi, (low, high) in result.intervals.items():
        keys[f"ci_low.{kpi}"], keys[f"ci_high.{kpi}"] = low, high
    return keys


def _sample_row(common: dict[str, Any], sample: SampleRecord) -> dict[str, Any]:
    return _row(common, "sample", sample.sample_id, sample.doc_type, sample.kpis, sample.error is None,
                "[]", sample.error, info=json.dumps(sample.info, default=str))


def _row(common, kind, sample_id, doc_type, kpis, passed, breaches, error, stage_seconds=None, info="{}"):
    kpis = _kpis(kpis)
    return {
        "row_id": row_id(common["run_id"], common["case_id"], sample_id, kind),
        "row_kind": kind,
        **common,
        "sample_id": sample_id,
        "doc_type": doc_type,
        "kpis": kpis,
        **{column: kpis.get(key) for column, key in PROMOTED.items()},
        "passed": int(passed),
        "breaches": breaches,
        "error": error or "",
        "stage_seconds": _kpis(stage_seconds or {}),
        "info": info,
    }
