"""What one evaluated case produces: plain, JSON-serialisable records.

Workers build :class:`CaseResult` objects and ship them to the controller as
JSON (pytest-xdist serialises reports); only the controller writes them to
sinks (ClickHouse, Allure, the terminal table, the spool).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Breach:
    """A KPI that missed its limit; ``source`` names the thresholds table."""

    kpi: str
    value: float | None
    limit: float
    op: str  # ">=" or "<="
    source: str
    reason: str = ""  # why, where the value alone does not say (e.g. no sample could be scored)

    def __str__(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        why = f": {self.reason}" if self.reason else ""
        return f"{self.kpi} = {shown}, limit {self.op} {self.limit:g} (from [{self.source}]){why}"


@dataclass
class SampleRecord:
    """Per-sample KPIs (tokens, cosine, EMD, OCR WER/CER ...) of one case."""

    sample_id: str
    doc_type: str
    kpis: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # OCR texts, field hits ...
    error: str | None = None


@dataclass
class CaseResult:
    """The outcome of one model x method(+params) x dataset case."""

    case_id: str
    model: str
    method: str
    params: dict[str, Any]
    dataset: str
    kpis: dict[str, float] = field(default_factory=dict)
    breaches: list[Breach] = field(default_factory=list)
    samples: list[SampleRecord] = field(default_factory=list)
    intervals: dict[str, list[float]] = field(default_factory=dict)  # KPI -> [low, high], 95% bootstrap
    stage_seconds: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # versions, device, seeds, OCR engine
    labels: list[str] = field(default_factory=list)  # e.g. "random-weights"
    error: str | None = None  # infrastructure error (not a KPI breach)

    @property
    def passed(self) -> bool:
        return self.error is None and not self.breaches

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=float)

    @classmethod
    def from_json(cls, text: str) -> "CaseResult":
        raw = json.loads(text)
        raw["breaches"] = [Breach(**b) for b in raw.get("breaches", [])]
        raw["samples"] = [SampleRecord(**s) for s in raw.get("samples", [])]
        return cls(**raw)


@dataclass
class RunInfo:
    """Run-level metadata recorded with every row."""

    run_id: str
    started_at: str  # ISO 8601, UTC
    git_commit: str
    host: str
    gpu: str
    tenant_id: str = "default"
    versions: dict[str, str] = field(default_factory=dict)
    seed: int = 0
