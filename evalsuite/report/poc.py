"""The PoC report: ``reports/VISION_COMPRESSION_POC.md`` plus a Pareto plot beside it.

Reads one run (the latest by default) back from ClickHouse and writes:

- the recommendation: among candidates (model x non-``none`` method+params),
  the one with the largest token reduction whose *worst* case still saves
  ``>= min_reduction_pct`` tokens and whose *worst* measured OCR WER drift is
  ``<= max_wer_drift``; or "no candidate" with what failed for the best ones;
- a comparison table model x method x dataset, a breakdown by document type
  (from the sample rows), the Pareto plot (token reduction vs WER drift, one
  point per case), and the versions/seeds the rows recorded.

The limits are numbers the caller passes (:class:`Limits`, from its
thresholds table), including the datasets whose OCR drift is informational
only (``[dataset.photos] ocr_wer_drift = false``: OCR on pictures without
words is noise); those are neither judged nor plotted. A KPI missing for a
case shows as "-"; a candidate with no judged OCR WER drift at all cannot be
recommended, since the drift constraint cannot be checked.

Rows are dicts shaped like :func:`evalsuite.sinks.rows.to_rows` makes them, so
:func:`write_report` also works on rows that never went through a database.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable

from ..metrics.kpis import KPIS, ReductionPct

DEFAULT_OUT = Path("reports") / "VISION_COMPRESSION_POC.md"
DEFAULT_MIN_REDUCTION_PCT = 15.0
# Absolute WER difference, compressed minus uncompressed (the ocr_wer_drift KPI).
# A fallback only: callers pass the ceiling of their thresholds table.
DEFAULT_MAX_WER_DRIFT = 0.02
BASELINE = "none"

Row = dict[str, Any]


@dataclass(frozen=True)
class Limits:
    """What a recommended candidate must keep, in every one of its cases."""

    min_reduction_pct: float = DEFAULT_MIN_REDUCTION_PCT
    max_wer_drift: float = DEFAULT_MAX_WER_DRIFT  # absolute, as the ocr_wer_drift KPI
    drift_informational: Collection[str] = ()  # datasets whose OCR drift is not judged

    def judged_drift(self, row: Row) -> float | None:
        return None if row["dataset"] in self.drift_informational else kpi(row, "ocr_wer_drift")

    def __str__(self) -> str:
        return f">= {self.min_reduction_pct:g}% token savings with OCR WER drift <= {self.max_wer_drift:g}"


# --- reading rows -----------------------------------------------------------------

def kpi(row: Row, *names: str) -> float | None:
    """The first of ``names`` that ``row`` measured (finite), else None."""
    for name in names:
        value = (row.get("kpis") or {}).get(name)
        if value is not None and math.isfinite(float(value)):
            return float(value)
    return None


def token_reduction_pct(row: Row) -> float | None:
    value = kpi(row, "tokens_reduction_pct")
    if value is not None:
        return value
    before, after = kpi(row, "tokens_before"), kpi(row, "tokens_after")  # e.g. a sample row
    return ReductionPct.of(before, after) if before and after is not None else None


def method_label(row: Row) -> str:
    """``tome(r=8)``: the method with its parameters, ``none`` for the baseline."""
    params = row.get("method_params") or "{}"
    params = json.loads(params) if isinstance(params, str) else params
    inner = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{row['method']}({inner})" if inner else row["method"]


# --- the recommendation -----------------------------------------------------------

@dataclass
class Candidate:
    """One model x method+params, judged on all of its cases (datasets)."""

    model: str
    method: str
    label: str
    cases: list[Row] = field(default_factory=list)
    reduction_pct: float | None = None  # worst (lowest) over the cases
    wer_drift: float | None = None  # worst (highest) over the cases that ran OCR
    failures: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.label} on {self.model}"

    @property
    def eligible(self) -> bool:
        return not self.failures


@dataclass
class Recommendation:
    candidate: Candidate | None
    reason: str
    ranked: list[Candidate] = field(default_factory=list)  # best first
    operating_point: Any = None  # the evalsuite.search.OperatingPoint named, if any


def judge(case_rows: list[Row], limits: Limits) -> list[Candidate]:
    """Candidates ranked: eligible ones first, then by token reduction, then by drift."""
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in case_rows:
        if row["method"] != BASELINE:
            groups[(row["model"], row["method"], method_label(row))].append(row)
    candidates = []
    for (model, method, label), rows in groups.items():
        c = Candidate(model, method, label, rows)
        reductions = [token_reduction_pct(r) for r in rows]
        drifts = [d for d in map(limits.judged_drift, rows) if d is not None]
        errored = sum(1 for r in rows if r.get("error"))
        if errored:
            c.failures.append(f"{errored} case(s) errored")
        if None in reductions:
            c.failures.append("token counts missing")
        else:
            c.reduction_pct = min(reductions)
            if c.reduction_pct < limits.min_reduction_pct:
                c.failures.append(f"token reduction {c.reduction_pct:.1f}% < {limits.min_reduction_pct:g}%")
        if drifts:
            c.wer_drift = max(drifts)
            if c.wer_drift > limits.max_wer_drift:
                c.failures.append(f"OCR WER drift {c.wer_drift:+.4f} > {limits.max_wer_drift:g}")
        else:
            c.failures.append("no OCR WER drift measured")
        candidates.append(c)
    return sorted(candidates, key=lambda c: (not c.eligible, -_or(c.reduction_pct, -math.inf),
                                             _or(c.wer_drift, math.inf), c.name))


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def point_failures(point, limits: Limits) -> list[str]:
    """Why an operating point (:class:`evalsuite.search.OperatingPoint`) cannot be recommended; [] if it can."""
    if not point.found:
        return [f"no passing setting in [{point.lo:g}, {point.hi:g}]"]
    safe = point.probe(point.value)
    failures = []
    if safe.reduction_pct is None or safe.reduction_pct < limits.min_reduction_pct:
        failures.append(f"token reduction {_fmt(safe.reduction_pct, '.1f')}% < {limits.min_reduction_pct:g}%")
    if point.dataset not in limits.drift_informational:
        if safe.ocr_wer_drift is None:
            failures.append("no OCR WER drift measured")
        elif safe.ocr_wer_drift > limits.max_wer_drift:
            failures.append(f"OCR WER drift {safe.ocr_wer_drift:+.4f} > {limits.max_wer_drift:g}")
    return failures


def _point_text(point) -> str:
    safe = point.probe(point.value)
    interval = (f" [{point.reduction_interval[0]:.1f}, {point.reduction_interval[1]:.1f}]"
                if point.reduction_interval else "")
    return (f"{point.label} on {point.model} (the strongest setting passing every threshold on {point.dataset}, "
            f"n={safe.n}: {_fmt(safe.reduction_pct, '.1f')}%{interval} tokens saved)")


def recommend(case_rows: list[Row], limits: Limits = Limits(), points: Iterable = ()) -> Recommendation:
    """The best matrix candidate; with operating points from ``evalsuite search`` (``points``) the
    recommendation also names the setting to use: the candidate's method at its operating point,
    or, when no matrix point is eligible, the eligible operating point that saves the most."""
    ranked = judge(case_rows, limits)
    usable = sorted((p for p in points if not point_failures(p, limits)),
                    key=lambda p: -p.probe(p.value).reduction_pct)
    best = ranked[0] if ranked else None
    if best is not None and best.eligible:
        reason = (f"Recommended: {best.name}: worst-case token reduction {best.reduction_pct:.1f}% and worst OCR WER "
                  f"drift {best.wer_drift:+.4f} over {len(best.cases)} case(s) ({limits}).")
        own = next((p for p in usable if (p.model, p.method) == (best.model, best.method)), None)
        if own is not None:
            reason += f" Operating point: {_point_text(own)}."
        return Recommendation(best, reason, ranked, own)
    if usable:
        return Recommendation(None, f"Recommended: {_point_text(usable[0])}, which keeps {limits}; no matrix point "
                                    "did" + ("" if ranked else " (the run has no compression cases)") + ".",
                              ranked, usable[0])
    if not ranked:
        return Recommendation(None, "No candidate: the run has no compression cases (only the baseline).", ranked)
    closest = sorted(ranked, key=lambda c: -_or(c.reduction_pct, -math.inf))[:3]
    why = "; ".join(f"{c.name}: {', '.join(c.failures)}" for c in closest)
    return Recommendation(None, f"No candidate: none of {len(ranked)} candidate(s) keeps {limits}. "
                                f"Largest reductions: {why}.", ranked)


# --- the Pareto plot --------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when maximising x (reduction) and minimising y (drift).

    >>> pareto_front([(10, 0.0), (50, 0.05), (30, 0.06), (50, 0.01)])
    [0, 3]
    """
    return [
        i for i, (x, y) in enumerate(points)
        if not any(qx >= x and qy <= y and (qx, qy) != (x, y) for qx, qy in points)
    ]


# --- intervals from the sample rows -------------------------------------------------

def sample_count(case_row: Row, samples: dict[str, list[Row]]) -> int | None:
    """Samples a case measured (its sample rows without error); None when the run stored no sample rows."""
    rows = samples.get(case_row["case_id"])
    return None if rows is None else sum(1 for r in rows if not r.get("error"))


def interval(case_row: Row, kpi_name: str, samples: dict[str, list[Row]], seed: int = 0,
             resamples: int = 2000) -> tuple[float, float] | None:
    """95% interval of a case KPI: the one the case row carries (``KPI_lo``/``KPI_hi`` in its KPIs),
    else a seeded bootstrap over its sample rows (OCR rates weighted by reference words, as the case
    value is; the token saving per sample from its token counts); None below two samples."""
    import zlib

    import numpy as np

    from .compare import PER_SAMPLE, _info, bootstrap_interval

    lo, hi = kpi(case_row, f"{kpi_name}_lo"), kpi(case_row, f"{kpi_name}_hi")
    if lo is not None and hi is not None:
        return lo, hi
    rows = [r for r in samples.get(case_row["case_id"], []) if not r.get("error")]
    if kpi_name == "tokens_reduction_pct":
        values, weights = [token_reduction_pct(r) for r in rows], None
    elif kpi_name in PER_SAMPLE:
        key, weight_key = PER_SAMPLE[kpi_name]
        values = [kpi(r, key) for r in rows]
        weights = None if weight_key is None else [float(_info(r).get(weight_key) or 0.0) for r in rows]
    else:
        return None
    keep = [i for i, v in enumerate(values) if v is not None]
    return bootstrap_interval(np.array([values[i] for i in keep]),
                              None if weights is None else np.array([weights[i] for i in keep]),
                              resamples=resamples, seed=[seed, zlib.crc32(f"{case_row['case_id']}/{kpi_name}".encode())])


def samples_by_case(sample_rows: Iterable[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for r in sample_rows:
        grouped[r["case_id"]].append(r)
    return dict(grouped)


@dataclass
class PlotPoint:
    """A point of the Pareto plot: x token reduction (%), y judged OCR WER drift, their 95% intervals."""

    label: str
    x: float
    y: float | None  # None: an operating point searched without OCR (drawn as a vertical line)
    x_interval: tuple[float, float] | None = None
    y_interval: tuple[float, float] | None = None
    row: Row | None = None  # the case row; None for an operating point


def case_points(case_rows: list[Row], sample_rows: Iterable[Row] = (), limits: Limits = Limits(),
                seed: int = 0) -> list[PlotPoint]:
    """The cases the plot can place (both KPIs measured and judged), with their intervals."""
    samples = samples_by_case(sample_rows)
    out = []
    for r in case_rows:
        x, y = token_reduction_pct(r), limits.judged_drift(r)
        if x is not None and y is not None:
            out.append(PlotPoint(method_label(r), x, y, interval(r, "tokens_reduction_pct", samples, seed),
                                 interval(r, "ocr_wer_drift", samples, seed), r))
    return out


def operating_points(points: Iterable, limits: Limits = Limits()) -> list[PlotPoint]:
    """The found operating points of ``evalsuite search`` as plot points (drift: None if not measured
    or informational on that dataset)."""
    out = []
    for p in points:
        if not p.found:
            continue
        safe = p.probe(p.value)
        if safe.reduction_pct is None:
            continue
        drift = None if p.dataset in limits.drift_informational else safe.ocr_wer_drift
        out.append(PlotPoint(f"{p.label} / {p.model} / {p.dataset}", safe.reduction_pct, drift, p.reduction_interval))
    return out


def _bar(value: float, bounds: tuple[float, float] | None) -> list[list[float]] | None:
    """matplotlib's [[below], [above]] of an interval around ``value`` (a case value computed otherwise
    than its resampled mean, e.g. over all tokens, may sit just outside it: no negative bar then)."""
    if bounds is None:
        return None
    return [[max(0.0, value - bounds[0])], [max(0.0, bounds[1] - value)]]


def plot_pareto(case_rows: list[Row], path: Path, limits: Limits = Limits(), sample_rows: Iterable[Row] = (),
                points: Iterable = ()) -> int:
    """Write the PNG; returns how many cases it could place (both KPIs measured and judged).

    Error bars: the 95% intervals of :func:`interval`; operating points (``points``, from
    ``evalsuite search``) are stars, or dash-dotted vertical lines when searched without OCR."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plotted = case_points(case_rows, sample_rows, limits)
    placed = [(p.row, p.x, p.y) for p in plotted]
    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.axvline(limits.min_reduction_pct, color="grey", ls="--", lw=1, label=f"{limits.min_reduction_pct:g}% savings")
    ax.axhline(limits.max_wer_drift, color="grey", ls=":", lw=1, label=f"WER drift {limits.max_wer_drift:g}")
    for i, op in enumerate(operating_points(points, limits)):
        colour = f"C{(i + 3) % 10}"
        if op.y is None:
            ax.axvline(op.x, color=colour, ls="-.", lw=1.2, label=f"operating point {op.label} (no OCR drift)")
            continue
        ax.scatter([op.x], [op.y], marker="*", s=180, color=colour, edgecolors="black", zorder=5,
                   label=f"operating point {op.label}")
        if op.x_interval:
            ax.errorbar([op.x], [op.y], xerr=_bar(op.x, op.x_interval), fmt="none", ecolor=colour, capsize=3, lw=1)
    if placed:
        front = set(pareto_front([(x, y) for _, x, y in placed]))
        colours = {m: f"C{i % 10}" for i, m in enumerate(sorted({method_label(r) for r, _, _ in placed}))}
        for p in plotted:
            xerr, yerr = _bar(p.x, p.x_interval), _bar(p.y, p.y_interval)
            if xerr or yerr:
                ax.errorbar([p.x], [p.y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colours[p.label], alpha=0.6,
                            capsize=2, lw=1)
        for label, colour in colours.items():
            pts = [(x, y) for r, x, y in placed if method_label(r) == label]
            ax.scatter(*zip(*pts), color=colour, s=28, alpha=0.8, label=label)
        best = sorted((placed[i] for i in front), key=lambda p: p[1])
        ax.step([x for _, x, _ in best], [y for _, _, y in best], where="post", color="black", lw=1.2)
        ax.scatter([x for _, x, _ in best], [y for _, _, y in best], s=110, facecolors="none",
                   edgecolors="black", lw=1.5, label="Pareto front")
        for r, x, y in best:
            ax.annotate(f"{method_label(r)} / {r['model']} / {r['dataset']}", (x, y), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    else:
        ax.text(0.5, 0.5, "no case has both token reduction and OCR WER drift", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("token reduction (%)  ->  better")
    ax.set_ylabel("OCR WER drift of the masked image sent (compressed - baseline)  <-  better")
    ax.set_title("Token reduction vs OCR WER drift (one point per case, bars: 95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return len(placed)


# --- markdown ---------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _when(stamp: Any) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M:%S") if hasattr(stamp, "strftime") else str(stamp)


def _started(rows: list[Row]) -> Any:
    """The earliest start: shards of a run each record their own."""
    return min((r["timestamp"] for r in rows), key=lambda t: (str(type(t)), t))


def _shards(rows: list[Row]) -> str:
    """`` in 2 shards (1/2, 2/2)`` when the run was split over machines (pytest-split), else ''."""
    shards = sorted({(r.get("versions") or {}).get("shard") for r in rows} - {None})
    return f" in {len(shards)} shard{'s' * (len(shards) != 1)} ({', '.join(shards)})" if shards else ""


def _interval(row: Row, name: str) -> str:
    """`` (0.955-0.981)``: the case's 95% bootstrap interval of ``name``, stored as ``ci_low.NAME`` /
    ``ci_high.NAME`` in its ``kpis``; empty when the run recorded none."""
    low, high = kpi(row, f"ci_low.{name}"), kpi(row, f"ci_high.{name}")
    return f" ({low:.4f}-{high:.4f})" if low is not None and high is not None else ""


def _status(row: Row) -> str:
    """``pass``, ``FAIL`` or ``ERROR``, with ``(noisy timing)`` where the run flagged the case's timing."""
    status = "ERROR" if row.get("error") else ("pass" if row.get("passed") else "FAIL")
    return status + (" (noisy timing)" if "noisy" in (row.get("labels") or []) else "")


def _distinct(rows: list[Row], key: str) -> str:
    return ", ".join(sorted({str(r.get(key)) for r in rows if r.get(key) not in (None, "")})) or "-"


def render(case_rows: list[Row], sample_rows: list[Row], recommendation: Recommendation, *, plot_name: str,
           plotted: int, limits: Limits = Limits(), points: list | tuple = ()) -> str:
    """The markdown text of the report."""
    first = case_rows[0]
    n_pass = sum(1 for r in case_rows if r.get("passed"))
    n_err = sum(1 for r in case_rows if r.get("error"))
    out = [
        "# Vision token compression PoC",
        "",
        f"Run `{first['run_id']}` (tenant `{first['tenant_id']}`), started {_when(_started(case_rows))} UTC"
        f"{_shards(case_rows)}, commit `{_distinct(case_rows, 'git_commit')}`, host {_distinct(case_rows, 'host')}, "
        f"GPU {_distinct(case_rows, 'gpu')}.",
        f"{len(case_rows)} cases: {n_pass} passed, {len(case_rows) - n_pass - n_err} breached a threshold, "
        f"{n_err} errored.",
        "",
        "## Recommendation",
        "",
        f"**{recommendation.reason}**",
        "",
        f"Limits: token reduction >= {limits.min_reduction_pct:g}% in every case of a candidate; OCR WER drift "
        f"(compressed minus uncompressed WER) <= {limits.max_wer_drift:g} in every case that ran OCR"
        + (f" (informational only on {', '.join(sorted(limits.drift_informational))})"
           if limits.drift_informational else "") + ". The OCR WER is PP-OCR's reading of the masked image "
        "that would be sent (dropped patches blank, merged groups one flat colour): what a model receives only "
        "when that image itself is sent, not what a VLM reads from its compressed tokens; VLM cases are judged "
        "by the VLM's own answers (answer_* KPIs).",
        "",
    ]
    if any("random-weights" in (r.get("labels") or []) for r in case_rows):
        out += ["> Warning: some cases ran with random weights (label `random-weights`); their quality "
                "KPIs say nothing about real models.", ""]
    out += ["### Candidates", ""]
    samples = samples_by_case(sample_rows)

    def n(rows: list[Row]) -> str:
        counts = [sample_count(r, samples) for r in rows]
        return "-" if None in counts else str(sum(counts))

    out += _table(
        ["candidate", "model", "cases", "n", "min token reduction %", "max WER drift", "verdict"],
        ([c.label, c.model, str(len(c.cases)), n(c.cases), _fmt(c.reduction_pct, ".1f"), _fmt(c.wer_drift, "+.4f"),
          "eligible" if c.eligible else "; ".join(c.failures)] for c in recommendation.ranked),
    ) if recommendation.ranked else ["(none)"]
    if points:
        out += ["", "### Operating points (`evalsuite search`)", ""]
        out += _points_table(points, limits)
    out += ["", "## Comparison: model x method x dataset", ""]
    ordered = sorted(case_rows, key=lambda r: (r["model"], r["method"] != BASELINE, method_label(r), r["dataset"]))
    out += _table(
        ["model", "method", "dataset", "token reduction %", "WER drift", "feature cosine (95% interval)", "EMD",
         "compression p95 ms", "n", "result"],
        ([r["model"], method_label(r), r["dataset"], _fmt(token_reduction_pct(r), ".1f"),
          _fmt(kpi(r, "ocr_wer_drift"), "+.4f") + (" (info)" if r["dataset"] in limits.drift_informational
                                                    and kpi(r, "ocr_wer_drift") is not None else ""),
          _fmt(kpi(r, "feature_cosine_mean"), ".4f") + _interval(r, "feature_cosine_mean"),
          _fmt(kpi(r, "emd"), ".4g"), _fmt(kpi(r, "compression_latency_ms_p95"), ".2f"), n([r]), _status(r)]
         for r in ordered),
    )
    out += ["", "Feature cosine: mean cosine similarity between encoder features with and without compression "
                "(stored as `clip_score`). EMD: earth mover's distance between those feature distributions.",
            "", "## By document type", ""]
    out += _doc_type_table(sample_rows) or ["No per-sample rows were recorded."]
    out += ["", "## Pareto plot", "", f"![token reduction vs OCR WER drift]({plot_name})", "",
            f"{plotted} of {len(case_rows)} cases have both token reduction and judged OCR WER drift and are plotted; "
            "circled points form the Pareto front (no other case saves more tokens with less drift). Error bars: "
            "95% intervals, a seeded bootstrap over each case's samples (n in the comparison table)"
            + (f"; stars: the {len(operating_points(points, limits))} operating point(s) of `evalsuite search`"
               if points else "") + ".", ""]
    failed = [r for r in ordered if not r.get("passed")]
    if failed:
        out += ["## Breaches and errors", ""]
        for r in failed:
            what = [r["error"]] if r.get("error") else [
                f"{b['kpi']} = {_fmt(b['value'], '.4g')}, limit {b['op']} {b['limit']:g} (from [{b['source']}])"
                for b in json.loads(r.get("breaches") or "[]")]
            out.append(f"- `{r['case_id']}`: " + "; ".join(what))
        out.append("")
    out += _environment(case_rows)
    return "\n".join(out) + "\n"


def _points_table(points, limits: Limits) -> list[str]:
    def interval(pair, spec):
        return f" [{format(pair[0], spec)}, {format(pair[1], spec)}]" if pair else ""

    rows = []
    for p in points:
        safe = p.probe(p.value) if p.found else None
        failing = p.probe(p.fails_at)
        rows.append([
            p.method, p.model, p.dataset, f"{p.param} in [{p.lo:g}, {p.hi:g}]", "none" if safe is None else f"{p.value:g}",
            "-" if safe is None else _fmt(safe.reduction_pct, ".1f") + interval(p.reduction_interval, ".1f"),
            "-" if safe is None else _fmt(safe.feature_cosine, ".4f") + interval(p.cosine_interval, ".4f"),
            "-" if safe is None else _fmt(safe.ocr_wer_drift, "+.4f"), "-" if safe is None else str(safe.n),
            "-" if failing is None else f"{p.fails_at:g}: " + "; ".join(failing.breaches),
            "; ".join(point_failures(p, limits)) or "eligible",
        ])
    return _table(["method", "model", "dataset", "searched", "safe setting", "token reduction % [95%]",
                   "feature cosine [95%]", "WER drift", "n", "fails at", "verdict"], rows)


def _doc_type_table(sample_rows: list[Row]) -> list[str]:
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in sample_rows:
        groups[(r["model"], method_label(r), r.get("doc_type") or "-")].append(r)
    if not groups:
        return []
    return _table(
        ["model", "method", "doc type", "samples", "token reduction %", "OCR WER", "WER drift", "feature cosine"],
        ([model, label, doc_type, str(len(rows)), _fmt(_mean(token_reduction_pct(r) for r in rows), ".1f"),
          _fmt(_mean(kpi(r, "ocr_wer") for r in rows), ".4f"),
          _fmt(_mean(kpi(r, "ocr_wer_drift") for r in rows), "+.4f"),
          _fmt(_mean(kpi(r, "feature_cosine_mean", KPIS.get("feature_cosine_mean").sample_key) for r in rows),
               ".4f")]
         for (model, label, doc_type), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != BASELINE, kv[0][1:]))),
    )


def _environment(case_rows: list[Row]) -> list[str]:
    versions: dict[str, set[str]] = defaultdict(set)
    for r in case_rows:
        for k, v in (r.get("versions") or {}).items():
            versions[k].add(v)
    out = ["## Environment", "", f"Seeds: {_distinct(case_rows, 'seed')}.", ""]
    out += _table(["component", "version(s)"], ([k, ", ".join(sorted(v))] for k, v in sorted(versions.items())))
    return out + [""]


# --- entry points -----------------------------------------------------------------

@dataclass
class PocReport:
    path: Path
    plot: Path
    run_id: str
    recommendation: Recommendation


def write_report(case_rows: list[Row], sample_rows: list[Row], out: str | Path = DEFAULT_OUT,
                 limits: Limits = Limits(), points: Iterable = ()) -> PocReport:
    """Write the markdown and ``<stem>_pareto.png`` beside it from rows of one run (and
    ``<stem>_text_pixels.png`` when the run has ``text_pixels`` pages); ``points`` are the
    operating points of ``evalsuite search`` (:func:`load_operating_points`)."""
    if not case_rows:
        raise ValueError("no case rows to report on")
    points = list(points)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = out.with_name(out.stem + "_pareto.png")
    plotted = plot_pareto(case_rows, plot, limits, sample_rows, points)
    rec = recommend(case_rows, limits, points)
    from .text_pixels import section as text_pixels_section  # "" unless the run drew text_pixels pages

    out.write_text(render(case_rows, sample_rows, rec, plot_name=plot.name, plotted=plotted, limits=limits,
                          points=points)
                   + text_pixels_section(sample_rows, out.with_name(out.stem + "_text_pixels.png")),
                   encoding="utf-8")
    return PocReport(out, plot, case_rows[0]["run_id"], rec)


def latest_run_id(sink: Any, tenant_id: str | None = None) -> str | None:
    where = "row_kind = 'case'" + (" AND tenant_id = {tenant:String}" if tenant_id else "")
    _, rows = sink.select(f"SELECT run_id FROM `{sink.table}` WHERE {where} "
                          "ORDER BY timestamp DESC, ingested_at DESC LIMIT 1", {"tenant": tenant_id})
    return rows[0][0] if rows else None


def load_operating_points(path: str | Path | None) -> list:
    """The operating points ``evalsuite search`` wrote to ``path``; [] when there is no such file."""
    from ..search import read_points

    return read_points(path) if path is not None and Path(path).exists() else []


def generate(sink: Any, out: str | Path = DEFAULT_OUT, limits: Limits = Limits(), *, run_id: str | None = None,
             tenant_id: str | None = None, points: Iterable = ()) -> PocReport:
    """Read one run (latest by default) from a :class:`~evalsuite.sinks.clickhouse.ClickHouseSink` and report."""
    run_id = run_id or latest_run_id(sink, tenant_id)
    if run_id is None:
        raise LookupError(f"no runs in {sink.where}")
    rows = sink.select_dicts(f"SELECT * FROM `{sink.table}` FINAL WHERE run_id = {{run:String}}", {"run": run_id})
    if not any(r["row_kind"] == "case" for r in rows):
        raise LookupError(f"no results for run {run_id!r} in {sink.where}")
    return write_report([r for r in rows if r["row_kind"] == "case"], [r for r in rows if r["row_kind"] == "sample"],
                        out, limits, points)
