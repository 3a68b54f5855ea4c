"""The KPI table and the where-did-results-go lines at the end of a pytest run."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import time

from ..results import CaseResult

COLUMNS = [  # (header, kpi, format)
    ("tokens", "tokens_after", "{:.0f}"),
    ("saved%", "tokens_reduction_pct", "{:.1f}"),
    ("bill_qwen%", "billed_tokens_qwen2_vl_reduction_pct", "{:.1f}"),  # the image a hosted model is sent
    ("bill_4o%", "billed_tokens_gpt4o_reduction_pct", "{:.1f}"),
    ("cos", "feature_cosine_mean", "{:.4f}"),
    ("cos_p5", "feature_cosine_p5", "{:.4f}"),
    ("emd", "emd", "{:.4f}"),
    ("comp_p95ms", "compression_latency_ms_p95", "{:.2f}"),
    ("enc_p50ms", "encoder_ms_p50", "{:.1f}"),
    ("speedup", "throughput_speedup", "{:.2f}"),
    ("ideal", "ideal_speedup", "{:.2f}"),
    ("WER", "ocr_wer", "{:.3f}"),
    ("WERdrift", "ocr_wer_drift", "{:+.3f}"),
    ("CERdrift", "ocr_cer_drift", "{:+.3f}"),
]


def kpi_table(results: list[CaseResult]) -> list[str]:
    """Fixed-width table, one row per case, sorted by case id."""
    rows = [["case"] + [h for h, _, _ in COLUMNS] + ["result"]]
    for r in sorted(results, key=lambda r: r.case_id):
        cells = [r.case_id]
        for _, kpi, fmt in COLUMNS:
            value = r.kpis.get(kpi)
            cells.append("-" if value is None or math.isnan(value) else fmt.format(value))
        verdict = "ERROR" if r.error else ("PASS" if r.passed else f"FAIL({len(r.breaches)})")
        cells.append(verdict + (" [" + ",".join(r.labels) + "]" if r.labels else ""))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in rows]


def stage_breakdown(results: list[CaseResult]) -> list[str]:
    """Seconds per stage summed over cases (and workers), slowest first."""
    totals: dict[str, float] = {}
    for r in results:
        for stage, seconds in r.stage_seconds.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return [f"{stage:<20} {seconds:8.1f} s" for stage, seconds in sorted(totals.items(), key=lambda kv: -kv[1])]


# run_phases's line, read back from a run's log (evalsuite.bench.scaling): wall, before, cases, after
RUN_PHASES = re.compile(r"wall so far ([\d.]+) s: before the first case ([\d.]+) s, cases ([\d.]+) s, "
                        r"after the last case ([\d.]+) s")


def run_phases(process_start: float, first_start: float | None, last_stop: float | None, now: float) -> str:
    """Wall time of the run around its cases: what a second GPU cannot shorten (process start,
    imports, worker start-up before the first case; worker shutdown and sinks after the last).

    >>> line = run_phases(100.0, 107.1, 139.4, 141.8); line
    'wall so far 41.8 s: before the first case 7.1 s, cases 32.3 s, after the last case 2.4 s'
    >>> RUN_PHASES.search(line).groups()
    ('41.8', '7.1', '32.3', '2.4')
    """
    if first_start is None or last_stop is None:
        return f"wall so far {now - process_start:.1f} s"
    return (f"wall so far {now - process_start:.1f} s: before the first case {first_start - process_start:.1f} s, "
            f"cases {last_stop - first_start:.1f} s, after the last case {now - last_stop:.1f} s")


def uncompiled_imports(package: str = "torch") -> str | None:
    """A note when ``package`` has no compiled bytecode beside it, so that every process (each
    worker and each OCR reader) compiles it, and what it imports, from source. Measured on a
    two-H200 host whose Python set ``PYTHONDONTWRITEBYTECODE`` over a site-packages without
    ``__pycache__``: 5.7-6.0 s before the first case instead of 2.8 s, and a one-GPU run's model
    loads (imports) 7.7 s instead of 4.2 s. None where the bytecode is there (or ``package`` is not)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not (spec.origin or "").endswith(".py"):
        return None
    compiled = importlib.util.cache_from_source(spec.origin)
    if os.path.exists(compiled):
        return None
    why = "PYTHONDONTWRITEBYTECODE is set, " if sys.flags.dont_write_bytecode else ""
    return (f"{package} has no compiled bytecode ({compiled}): {why}every process compiles it and its imports "
            f"from source, seconds each; PYTHONPYCACHEPREFIX=<a writable folder> keeps what is compiled")


def write_summary(terminalreporter, session) -> None:
    if not session.is_controller or not session.results:
        return
    tr = terminalreporter
    tr.write_sep("=", f"evalsuite KPIs (run {session.run_id})")
    for line in kpi_table(session.results):
        tr.write_line(line)
    if any(r.labels for r in session.results):
        tr.write_line("[random-weights]: figures from randomly initialised weights measure speed only")
    tr.write_sep("-", "time per stage (all workers)")
    for line in stage_breakdown(session.results):
        tr.write_line(line)
    tr.write_line(run_phases(session.process_start, session.first_case_start, session.last_case_stop, time.time()))
    note = uncompiled_imports()
    if note:
        tr.write_line(note)
    for line in session.outcomes:
        tr.write_line(line)
