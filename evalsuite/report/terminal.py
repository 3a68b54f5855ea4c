"""The KPI table and the where-did-results-go lines at the end of a pytest run."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import time

from .. import runlog
from ..metrics.kpis import sample_counts, table_columns
from ..results import CaseResult

def kpi_table(results: list[CaseResult]) -> list[str]:
    """Fixed-width table, one row per case, sorted by case id; a column per KPI declared with one."""
    columns = table_columns()
    rows = [["case", "n", "skip", "fail"] + [h for h, _, _ in columns] + ["cos_ci95", "result"]]
    for r in sorted(results, key=lambda r: r.case_id):
        counts = sample_counts(r.samples)  # n: samples scored
        cells = [r.case_id, str(counts.scored), str(counts.skipped), str(len(counts.failed))]
        for _, kpi, fmt in columns:
            value = r.kpis.get(kpi)
            cells.append("-" if value is None or math.isnan(value) else fmt.format(value))
        interval = r.intervals.get("feature_cosine_mean")
        cells.append(f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "-")
        verdict = "ERROR" if r.error else ("PASS" if r.passed else f"FAIL({len(r.breaches)})")
        cells.append(verdict + (" [" + ",".join(r.labels) + "]" if r.labels else ""))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in rows]


def failed_samples(results: list[CaseResult], shown: int = 5) -> list[str]:
    """One line per case with samples that could not be scored, naming them and why."""
    lines = []
    for r in sorted(results, key=lambda r: r.case_id):
        counts = sample_counts(r.samples)
        if counts.failed:
            lines.append(f"{r.case_id}: {counts.failed_text(shown)}")
    return lines


def noisy_timing(results: list[CaseResult]) -> list[str]:
    """One line per case whose timing was flagged noisy (``env["noisy"]``) or timed again (``env["retimed"]``).

    >>> noisy_timing([CaseResult("a", "m", "tome", {}, "d", env={"noisy": "encoder_ms_p95 3.5x its p50 (> 2)"}),
    ...               CaseResult("b", "m", "tome", {}, "d", env={"retimed": "x"})])
    ['a: encoder_ms_p95 3.5x its p50 (> 2)', 'b: timed twice, the first timing was noisy (x)']
    """
    lines = []
    for r in sorted(results, key=lambda r: r.case_id):
        if "noisy" in r.env:
            lines.append(f"{r.case_id}: {r.env['noisy']}" + (" (timed twice)" if "retimed" in r.env else ""))
        elif "retimed" in r.env:
            lines.append(f"{r.case_id}: timed twice, the first timing was noisy ({r.env['retimed']})")
    return lines


def stage_breakdown(results: list[CaseResult]) -> list[str]:
    """Seconds per stage summed over cases (and workers), slowest first."""
    totals: dict[str, float] = {}
    for r in results:
        for stage, seconds in r.stage_seconds.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return [f"{stage:<20} {seconds:8.1f} s" for stage, seconds in sorted(totals.items(), key=lambda kv: -kv[1])]


# run_phases's line, read back from a run's log (benchmarks.scaling): wall, before, cases, after
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
    worker and each OCR reader) compiles it, and what it imports, from source: a Python that sets
    ``PYTHONDONTWRITEBYTECODE`` over a site-packages without ``__pycache__`` slows every process's
    start and model loads (docs/performance.md, "GPU gate"). None where the bytecode is there (or
    ``package`` is not)."""
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
    if not session.is_controller:
        return
    tr = terminalreporter
    logged = runlog.summary(session.run_log, session.rootdir)
    if not session.results:
        if logged:
            tr.write_line(logged)
        return
    tr.write_sep("=", f"evalsuite KPIs (run {session.run_id})")
    for line in kpi_table(session.results):
        tr.write_line(line)
    tr.write_line("n, skip, fail: samples scored; skipped by a KPI that does not apply to them "
                  "(OCR: no text); that could not be scored. cos_ci95: 95% paired bootstrap interval of cos")
    # the pixel reading is of the masked image a team would send, not of what a model reads inside
    # itself: a merged token is a mean of features, not of pixels (issue: ToMe keeps cosine 0.999)
    tr.write_line("WER, WERdrift, CERdrift: PP-OCR of the masked image that would be sent (dropped patches "
                  "blank, merged groups one colour), not what a VLM reads; VLM cases gate on answer_* KPIs")
    if any("random-weights" in r.labels for r in session.results):
        tr.write_line("[random-weights]: figures from randomly initialised weights measure speed only")
    few = [f"{r.case_id}: {r.env['few_samples']}" for r in sorted(session.results, key=lambda r: r.case_id)
           if "few_samples" in r.env]
    if few:
        tr.write_sep("-", "cases with few samples")
        for line in few:
            tr.write_line(line)
    noisy = noisy_timing(session.results)
    if noisy:
        tr.write_sep("-", "noisy timing (flagged, not judged differently)")
        for line in noisy:
            tr.write_line(line)
    failed = failed_samples(session.results)
    if failed:
        tr.write_sep("-", "samples that could not be scored")
        for line in failed:
            tr.write_line(line)
    tr.write_sep("-", "time per stage (all workers)")
    for line in stage_breakdown(session.results):
        tr.write_line(line)
    tr.write_line(run_phases(session.process_start, session.first_case_start, session.last_case_stop, time.time()))
    note = uncompiled_imports()
    if note:
        tr.write_line(note)
    for line in session.outcomes:
        tr.write_line(line)
    if logged:
        tr.write_line(logged)
