"""Run-to-run comparison: what changed between two runs in ClickHouse, and whether it regressed.

``evalsuite compare RUN_A RUN_B`` reads both runs (every shard that wrote under a run id is part
of it), pairs their cases by case id and, for every KPI of a common case, prints B - A. Where the
two runs measured the same samples (same sample ids), the delta of a per-sample KPI gets a 95%
interval from a *paired* bootstrap: one set of resampled sample indices serves both runs, so
what the two runs share (the same hard receipt in both) cancels out of the interval.

A delta is a regression when it moves a KPI the bad way (the KPI's declared direction, see
:mod:`evalsuite.metrics.kpis`) by more than its margin, or when a case that passed in A fails in B.
Informational KPIs are shown and never judged. Cases present in one run only are listed apart,
so runs over different matrices compare on what they share.

Numbers only, no database here: :func:`load_runs` reads rows through a sink, :func:`compare`
works on plain row dicts (the table's columns, see :mod:`evalsuite.sinks.rows`).
"""

from __future__ import annotations

import difflib
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..metrics.kpis import KPIS
from ..registry import UnknownNameError

Row = dict[str, Any]

# The KPIs shown by default: the gated ones and what a reviewer reads first.
DEFAULT_KPIS = (
    "tokens_reduction_pct", "feature_cosine_mean", "feature_cosine_p5", "emd", "ocr_wer_drift", "ocr_cer_drift",
    "sroie_fields_found", "retrieval_recall_at_1", "compression_latency_ms_p95", "encoder_ms_p50", "throughput_speedup",
)

# Case KPI -> (per-sample KPI it aggregates, weight in the sample's info or None for a plain mean).
# The OCR rates are corpus-level: per-sample rates weighted by reference words or characters
# (the CorpusRate declarations in evalsuite.metrics.kpis), so their resampled means are weighted the same way.
PER_SAMPLE: dict[str, tuple[str, str | None]] = {
    "feature_cosine_mean": ("feature_cosine", None),
    "emd": ("emd", None),
    "tokens_before": ("tokens_before", None),
    "tokens_after": ("tokens_after", None),
    "sroie_fields_found": ("sroie_fields_found", None),
    "retrieval_recall_at_1": ("retrieval_hit_at_1", None),
    "retrieval_recall_at_5": ("retrieval_hit_at_5", None),
    **{f"ocr_{rate}{part}": (f"ocr_{rate}{part}", "ocr_reference_words" if rate == "wer" else "ocr_reference_chars")
       for rate in ("wer", "cer") for part in ("", "_original", "_drift")},
}


class CompareError(LookupError):
    """A run that is not in the store, or nothing to compare; the message says which."""


@dataclass(frozen=True)
class Margin:
    """How far a KPI may move the bad way before it is a regression: absolute, or relative to A.

    >>> Margin.parse("0.01").allowed(0.9), Margin.parse("10%").allowed(20.0)
    (0.01, 2.0)
    """

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> "Margin":
        text = text.strip()
        relative = text.endswith("%")
        try:
            value = float(text.rstrip("%"))
        except ValueError:
            raise ValueError(f"margin {text!r} is not a number or a percentage (0.01, 10%)") from None
        if not value >= 0:
            raise ValueError(f"margin {text!r} must not be negative")
        return cls(value / 100 if relative else value, relative)

    def allowed(self, reference: float) -> float:
        return abs(reference) * self.value if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def default_margin(kpi: str) -> Margin:
    """Timings move with the host: relative; percentages in points; every other KPI 0.01 absolute."""
    unit = KPIS.get(kpi).unit if kpi in KPIS else ""
    if unit == "ms" or kpi == "throughput_speedup":
        return Margin(0.2, relative=True)
    if unit == "%":
        return Margin(1.0)
    return Margin(0.01)


@dataclass(frozen=True)
class KpiDelta:
    """One KPI of one common case: A, B, B - A, its paired interval, and the verdict on it."""

    case_id: str
    kpi: str
    a: float | None
    b: float | None
    interval: tuple[float, float] | None  # 95% paired bootstrap interval of B - A
    paired: int  # samples measured in both runs (0: no interval)
    margin: Margin | None  # None: informational KPI, never judged
    regressed: bool

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass
class Comparison:
    run_a: str
    run_b: str
    deltas: list[KpiDelta]
    verdicts: dict[str, tuple[bool, bool]]  # common case -> (passed in A, passed in B)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[KpiDelta]:
        return [d for d in self.deltas if d.regressed]

    @property
    def newly_failing(self) -> list[str]:
        return [case for case, (a, b) in self.verdicts.items() if a and not b]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions or self.newly_failing)

    def summary(self) -> str:
        cases = len(self.verdicts)
        if not self.regressed:
            return f"no regression in {cases} common case{'s' * (cases != 1)}"
        hit = {d.case_id for d in self.regressions} | set(self.newly_failing)
        return (f"REGRESSION: {len(self.regressions)} KPI(s) beyond their margin, {len(self.newly_failing)} case(s) "
                f"newly failing, in {len(hit)} of {cases} common cases")

    # -- rendering ---------------------------------------------------------------------------
    def table(self, changed_only: bool = False) -> list[list[str]]:
        header = ["case", "kpi", "A", "B", "B-A", "95% interval", "n", "margin", ""]
        rows = [header]
        for d in self.deltas:
            if changed_only and not d.regressed and (d.delta is None or d.delta == 0):
                continue
            rows.append([d.case_id, d.kpi, _num(d.a), _num(d.b), _num(d.delta, signed=True),
                         "-" if d.interval is None else f"[{_num(d.interval[0], True)}, {_num(d.interval[1], True)}]",
                         str(d.paired or "-"), "-" if d.margin is None else str(d.margin),
                         "REGRESSION" if d.regressed else ""])
        return rows

    def text(self, every_kpi: bool = False) -> str:
        """The summary and a table of the KPIs that moved (every KPI with ``every_kpi``)."""
        lines = [f"evalsuite compare: {self.run_a} -> {self.run_b}: {self.summary()}"]
        table = self.table(changed_only=not every_kpi)
        if not every_kpi and len(table) - 1 < len(self.deltas):
            lines.append(f"({len(self.deltas) - len(table) + 1} unchanged KPI values not shown; --all shows them)")
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
        lines += [f"case {case}: PASS in A, FAIL in B" for case in self.newly_failing]
        lines += _others(self)
        return "\n".join(lines)

    def markdown(self) -> str:
        icon = ":x:" if self.regressed else ":white_check_mark:"
        lines = [f"### evalsuite: `{self.run_b}` against `{self.run_a}`", "", f"{icon} {self.summary()}", ""]
        if self.newly_failing:
            lines += ["Newly failing: " + ", ".join(f"`{c}`" for c in self.newly_failing), ""]
        if self.regressions:
            lines += ["| " + " | ".join(r) + " |" for r in _md([self.table()[0]] + [
                row for row, d in zip(self.table()[1:], self.deltas) if d.regressed])] + [""]
        changed = self.table(changed_only=True)
        lines += ["<details><summary>Every KPI that moved (B - A; interval: paired bootstrap over the samples "
                  "both runs measured)</summary>", ""]
        lines += ["| " + " | ".join(r) + " |" for r in _md(changed)] if len(changed) > 1 else ["No KPI moved."]
        lines += ["", "</details>"]
        others = _others(self)
        return "\n".join(lines + ([""] + [f"- {line}" for line in others] if others else [])) + "\n"


def _others(comparison: Comparison) -> list[str]:
    out = []
    if comparison.only_in_a:
        out.append(f"only in {comparison.run_a} (not compared): {', '.join(comparison.only_in_a)}")
    if comparison.only_in_b:
        out.append(f"only in {comparison.run_b} (not compared): {', '.join(comparison.only_in_b)}")
    return out


def _md(rows: list[list[str]]) -> list[list[str]]:
    """A markdown table body: header, separator, rows (pipes escaped)."""
    cells = [[c.replace("|", "\\|") for c in r] for r in rows]
    return [cells[0], ["---"] * len(cells[0]), *cells[1:]]


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


# -- statistics ---------------------------------------------------------------------------------
def paired_bootstrap(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None, *, resamples: int = 2000,
                     seed: int | Iterable[int] = 0, confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of ``mean(b) - mean(a)`` over paired samples; None below two pairs.

    ``a`` and ``b`` [n] hold one KPI per sample in each run, aligned by sample; ``weights`` [n]
    (reference words for an OCR rate) make both means weighted ones. Every resample draws one set
    of sample indices for both runs (the pairing).

    >>> a = np.array([0.90, 0.80, 0.95, 0.70]); b = a - np.array([0.02, 0.04, 0.06, 0.08])
    >>> lo, hi = paired_bootstrap(a, b, seed=1)
    >>> -0.08 <= lo < -0.05 < hi <= -0.02
    True
    """
    if len(a) != len(b) or (weights is not None and len(weights) != len(a)):
        raise ValueError("paired_bootstrap: a, b and weights need one value per sample")
    if len(a) < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if weights is None:
        stats = diff[idx].mean(axis=1)
    else:
        w = np.asarray(weights, dtype=np.float64)[idx]
        total = w.sum(axis=1)
        stats = np.where(total > 0, (w * diff[idx]).sum(axis=1) / np.where(total > 0, total, 1), diff[idx].mean(axis=1))
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_interval(values: np.ndarray, weights: np.ndarray | None = None, *, resamples: int = 2000,
                       seed: int | Iterable[int] = 0, confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the (weighted) mean of ``values`` [n] over resampled samples; None below two.

    The one-run variant of :func:`paired_bootstrap` (the same resamples as a pair whose ``a`` is zero).

    >>> lo, hi = bootstrap_interval(np.array([0.90, 0.80, 0.95, 0.70]), seed=1)
    >>> 0.70 <= lo < 0.84 < hi <= 0.95
    True
    """
    values = np.asarray(values, dtype=np.float64)
    return paired_bootstrap(np.zeros_like(values), values, weights, resamples=resamples, seed=seed,
                            confidence=confidence)


# -- comparing rows -----------------------------------------------------------------------------
def compare(rows_a: list[Row], rows_b: list[Row], run_a: str = "A", run_b: str = "B", *,
            kpis: Iterable[str] = DEFAULT_KPIS, margins: dict[str, Margin] | None = None,
            resamples: int = 2000, seed: int = 0) -> Comparison:
    """Compare two runs given as table rows (``row_kind`` 'case' and 'sample')."""
    margins = dict(margins or {})
    kpis = list(kpis)
    for name in [*kpis, *margins]:
        if name not in KPIS:
            raise UnknownNameError("KPI", name, KPIS.names())
    cases_a, samples_a = _split(rows_a)
    cases_b, samples_b = _split(rows_b)
    common = [case for case in cases_a if case in cases_b]
    comparison = Comparison(run_a, run_b, [], {},
                            only_in_a=sorted(set(cases_a) - set(cases_b)), only_in_b=sorted(set(cases_b) - set(cases_a)))
    for case in sorted(common):
        row_a, row_b = cases_a[case], cases_b[case]
        comparison.verdicts[case] = (_passed(row_a), _passed(row_b))
        for kpi in kpis:
            a, b = _finite(row_a["kpis"].get(kpi)), _finite(row_b["kpis"].get(kpi))
            if a is None and b is None:
                continue
            interval, paired = _interval(kpi, samples_a.get(case, {}), samples_b.get(case, {}), resamples,
                                         [seed, zlib.crc32(f"{case}\x1f{kpi}".encode())])
            direction = KPIS.get(kpi).higher_is_better
            margin = None if direction is None else margins.get(kpi, default_margin(kpi))
            regressed = False
            if margin is not None and a is not None and b is not None:
                worse = (a - b) if direction else (b - a)
                regressed = worse > margin.allowed(a) + 1e-12
            comparison.deltas.append(KpiDelta(case, kpi, a, b, interval, paired, margin, regressed))
    return comparison


def _split(rows: list[Row]) -> tuple[dict[str, Row], dict[str, dict[str, Row]]]:
    cases: dict[str, Row] = {}
    samples: dict[str, dict[str, Row]] = {}
    for row in rows:
        if row["row_kind"] == "case":
            cases[row["case_id"]] = row
        elif not row.get("error"):
            samples.setdefault(row["case_id"], {})[row["sample_id"]] = row
    return cases, samples


def _passed(row: Row) -> bool:
    return bool(row.get("passed")) and not row.get("error")


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _interval(kpi: str, samples_a: dict[str, Row], samples_b: dict[str, Row], resamples: int,
              seed: list[int]) -> tuple[tuple[float, float] | None, int]:
    if kpi not in PER_SAMPLE:
        return None, 0
    key, weight_key = PER_SAMPLE[kpi]
    a, b, w = [], [], []
    for sample_id in sorted(set(samples_a) & set(samples_b)):
        va, vb = _finite(samples_a[sample_id]["kpis"].get(key)), _finite(samples_b[sample_id]["kpis"].get(key))
        if va is None or vb is None:
            continue
        a.append(va)
        b.append(vb)
        if weight_key is not None:
            w.append(_finite(_info(samples_a[sample_id]).get(weight_key)) or 0.0)
    weights = np.array(w) if weight_key is not None else None
    return paired_bootstrap(np.array(a), np.array(b), weights, resamples=resamples, seed=seed), len(a)


def _info(row: Row) -> dict[str, Any]:
    info = row.get("info") or "{}"
    try:
        return json.loads(info) if isinstance(info, str) else dict(info)
    except ValueError:
        return {}


# -- reading runs -------------------------------------------------------------------------------
COLUMNS = "run_id, row_kind, case_id, sample_id, passed, error, kpis, info"


def load_runs(sink: Any, run_a: str, run_b: str) -> tuple[list[Row], list[Row]]:
    """Both runs' rows from a :class:`~evalsuite.sinks.clickhouse.ClickHouseSink`; every shard written
    under a run id belongs to it. :class:`CompareError` names a run id the store does not hold and
    the latest ones it does."""
    rows = sink.select_dicts(f"SELECT {COLUMNS} FROM `{sink.table}` FINAL WHERE run_id IN {{runs:Array(String)}}",
                             {"runs": [run_a, run_b]})
    by_run: dict[str, list[Row]] = {run_a: [], run_b: []}
    for row in rows:
        by_run[row["run_id"]].append(row)
    missing = [run for run in dict.fromkeys((run_a, run_b)) if not any(r["row_kind"] == "case" for r in by_run[run])]
    if missing:
        _, known = sink.select(f"SELECT run_id FROM `{sink.table}` WHERE row_kind = 'case' GROUP BY run_id "
                               "ORDER BY max(timestamp) DESC LIMIT 20")
        known_ids = [r[0] for r in known]
        hints = []
        for run in missing:
            close = difflib.get_close_matches(run, known_ids, n=1, cutoff=0.6)
            hints.append(f"no run {run!r} in {sink.where}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        latest = f"; latest runs: {', '.join(known_ids[:5])}" if known_ids else "; the store holds no runs"
        raise CompareError("; ".join(hints) + latest)
    return by_run[run_a], by_run[run_b]
