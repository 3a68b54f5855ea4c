"""``evalsuite compare``: two runs written to a real chDB folder, their deltas, intervals and exit codes.

chDB lets one process open a data directory at a time; the sink closes its client after each
call, so writing the runs and comparing them here, one after the other, shares the folder.
"""

from __future__ import annotations

import numpy as np
import pytest

from evalsuite import cli
from evalsuite.report import compare
from evalsuite.results import CaseResult, RunInfo, SampleRecord
from evalsuite.sinks.clickhouse import ClickHouseSink

COS_A = [0.95, 0.90, 0.97, 0.85]
COS_DROP = [0.02, 0.04, 0.06, 0.08]  # B loses 0.05 of cosine on average on tome's samples
WORDS = [10, 30, 50, 10]  # reference words per sample: the weights of the OCR rates


def run(run_id: str, started: str) -> RunInfo:
    return RunInfo(run_id, started, "abc1234", "box", "", tenant_id="lab")


def case(case_id: str, method: str, cosines: list[float], drifts: list[float], sample_ids: list[str]) -> CaseResult:
    samples = [SampleRecord(sid, "receipt", {"feature_cosine": c, "ocr_wer_drift": d, "tokens_after": 98.0},
                            {"ocr_reference_words": WORDS[i % len(WORDS)]})
               for i, (sid, c, d) in enumerate(zip(sample_ids, cosines, drifts))]
    total = sum(WORDS[i % len(WORDS)] for i in range(len(sample_ids)))
    drift = sum(d * WORDS[i % len(WORDS)] for i, d in enumerate(drifts)) / total
    kpis = {"tokens_reduction_pct": 50.0, "feature_cosine_mean": float(np.mean(cosines)), "ocr_wer_drift": drift,
            "encoder_ms_p50": 10.0, "ideal_speedup": 1.8}
    return CaseResult(case_id, "vit", method, {}, "sroie", kpis=kpis, samples=samples)


SIDS = ["r0", "r1", "r2", "r3"]
RUN_A = [
    case("vit-tome_f0.5-sroie", "tome", COS_A, [0.01, 0.0, 0.02, 0.01], SIDS),
    case("vit-none-sroie", "none", [1.0] * 4, [0.0] * 4, SIDS),
    case("vit-avit_s0.3-sroie", "avit", COS_A, [0.0] * 4, SIDS),  # only in A
]
RUN_B = [
    # same samples plus one A never saw; cosine down 0.02-0.08 per sample, OCR drift unchanged
    case("vit-tome_f0.5-sroie", "tome", [c - d for c, d in zip(COS_A, COS_DROP)] + [0.85],
         [0.01, 0.0, 0.02, 0.01, 0.01], SIDS + ["r9"]),
    case("vit-none-sroie", "none", [1.0] * 4, [0.0] * 4, SIDS),
    case("vit-random_k0.7-sroie", "random", COS_A, [0.0] * 4, SIDS),  # only in B
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A chDB folder holding runs 'main-1' (A) and 'pr-2' (B)."""
    folder = tmp_path_factory.mktemp("compare")
    sink = ClickHouseSink(chdb_dir=folder / "chdb", spool_dir=folder / "spool")
    assert sink.insert(run("main-1", "2026-12-01T10:00:00+00:00"), RUN_A).written == 3 + 12
    assert sink.insert(run("pr-2", "2026-12-02T10:00:00+00:00"), RUN_B).written == 3 + 13
    return sink


@pytest.fixture(scope="module")
def rows(store):
    return compare.load_runs(store, "main-1", "pr-2")


def delta(comparison: compare.Comparison, case_id: str, kpi: str) -> compare.KpiDelta:
    return next(d for d in comparison.deltas if d.case_id == case_id and d.kpi == kpi)


def test_both_runs_are_read_back_by_run_id(rows):
    rows_a, rows_b = rows
    assert sorted(r["case_id"] for r in rows_a if r["row_kind"] == "case") == [
        "vit-avit_s0.3-sroie", "vit-none-sroie", "vit-tome_f0.5-sroie"]
    assert sum(r["row_kind"] == "sample" for r in rows_b) == 13


def test_common_cases_are_compared_and_the_rest_listed(rows):
    result = compare.compare(*rows, "main-1", "pr-2")
    assert sorted(result.verdicts) == ["vit-none-sroie", "vit-tome_f0.5-sroie"]
    assert result.only_in_a == ["vit-avit_s0.3-sroie"] and result.only_in_b == ["vit-random_k0.7-sroie"]
    text = result.text()
    assert "only in main-1 (not compared): vit-avit_s0.3-sroie" in text
    assert "only in pr-2 (not compared): vit-random_k0.7-sroie" in text


def test_deltas_and_paired_intervals_over_the_shared_samples(rows):
    result = compare.compare(*rows, "main-1", "pr-2", seed=3)
    cos = delta(result, "vit-tome_f0.5-sroie", "feature_cosine_mean")
    # the case means are over every sample of each run (r9 counts in B's), the interval over the pairs
    assert cos.a == pytest.approx(np.mean(COS_A))
    assert cos.delta == pytest.approx(np.mean([c - d for c, d in zip(COS_A, COS_DROP)] + [0.85]) - np.mean(COS_A))
    assert cos.paired == 4  # r9 is in B only
    lo, hi = cos.interval
    assert -0.08 <= lo < -0.05 < hi <= -0.02  # the paired drops are 0.02-0.08, mean 0.05
    assert cos.regressed and cos.margin == compare.Margin(0.01)
    # an unchanged KPI: zero delta, an interval of exactly zero, no flag
    drift = delta(result, "vit-tome_f0.5-sroie", "ocr_wer_drift")
    assert drift.paired == 4 and drift.interval == (0.0, 0.0) and not drift.regressed
    # the same seed gives the same interval; a KPI with no per-sample values gets none
    assert compare.compare(*rows, "main-1", "pr-2", seed=3).deltas == result.deltas
    latency = delta(result, "vit-tome_f0.5-sroie", "encoder_ms_p50")
    assert latency.interval is None and latency.paired == 0 and latency.delta == 0.0
    # informational KPIs are never judged
    assert delta(compare.compare(*rows, kpis=["ideal_speedup"]), "vit-none-sroie", "ideal_speedup").margin is None


def test_weighted_interval_follows_the_reference_words():
    """OCR rates are corpus-level: a long page's change weighs more than a short one's."""
    a, b = np.zeros(20), np.array([1.0] * 10 + [0.0] * 10)
    plain = compare.paired_bootstrap(a, b, resamples=4000, seed=0)
    weighted = compare.paired_bootstrap(a, b, np.array([10.0] * 10 + [1.0] * 10), resamples=4000, seed=0)
    assert plain[0] < 0.5 < plain[1]
    assert plain[1] < weighted[0] < 10 / 11 < weighted[1] <= 1.0  # the weighted mean is 100/110
    assert compare.paired_bootstrap(a[:1], b[:1]) is None  # one pair: no interval


def test_a_wider_margin_clears_the_regression(rows):
    loose = compare.compare(*rows, "main-1", "pr-2", margins={"feature_cosine_mean": compare.Margin.parse("0.1")})
    assert not loose.regressed and "no regression in 2 common cases" in loose.summary()
    relative = compare.compare(*rows, margins={"feature_cosine_mean": compare.Margin.parse("1%")})
    assert relative.regressed  # 1% of 0.9175 is 0.009: the 0.054 drop is beyond it


def test_a_case_that_starts_failing_is_a_regression():
    rows_a = [{"row_kind": "case", "case_id": "c", "sample_id": "", "passed": 1, "error": "", "kpis": {}}]
    rows_b = [dict(rows_a[0], passed=0)]
    result = compare.compare(rows_a, rows_b)
    assert result.newly_failing == ["c"] and result.regressed
    assert "c: PASS in A, FAIL in B" in result.text()
    assert not compare.compare(rows_b, rows_a).regressed  # FAIL -> PASS is not


def test_cli_exit_codes_and_markdown(store, tmp_path, capsys):
    where = ["--chdb-dir", store.dsn.removeprefix("chdb://")]
    md = tmp_path / "pr" / "comment.md"
    assert cli.main(["compare", "main-1", "pr-2", *where, "--markdown", str(md)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: 1 KPI(s) beyond their margin, 0 case(s) newly failing, in 1 of 2 common cases" in out
    assert "feature_cosine_mean" in out and "encoder_ms_p50" not in out  # unchanged: left out unless --all
    assert cli.main(["compare", "main-1", "pr-2", *where, "--all"]) == 1
    assert "encoder_ms_p50" in capsys.readouterr().out
    text = md.read_text()
    assert text.startswith("### evalsuite: `pr-2` against `main-1`")
    assert "| vit-tome_f0.5-sroie | feature_cosine_mean |" in text and "REGRESSION |" in text
    assert "- only in main-1 (not compared): vit-avit_s0.3-sroie" in text

    assert cli.main(["compare", "main-1", "pr-2", *where, "--margin", "feature_cosine_mean=0.1"]) == 0
    assert cli.main(["compare", "main-1", "main-1", *where]) == 0
    assert "no regression in 3 common cases" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["main-1", "pr-3"], "no run 'pr-3' in chdb://"),
    (["main-1", "pr-3"], "(did you mean 'pr-2'?); latest runs: pr-2, main-1"),
    (["main-1", "pr-2", "--margin", "feature_cosine_mean"], "expected KPI=VALUE"),
    (["main-1", "pr-2", "--margin", "feature_cosine_man=0.1"], "did you mean 'feature_cosine_mean'?"),
    (["main-1", "pr-2", "--margin", "emd=lots"], "margin 'lots' is not a number"),
])
def test_cli_refuses_unknown_runs_and_bad_margins_with_exit_2(store, capsys, argv, message):
    assert cli.main(["compare", *argv, "--chdb-dir", store.dsn.removeprefix("chdb://")]) == 2
    assert message in capsys.readouterr().err
