"""The PoC report: recommendation, tables, Pareto plot; and `evalsuite report` on chDB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from evalsuite.report.poc import Limits, pareto_front, recommend, write_report
from evalsuite.results import Breach, CaseResult, RunInfo, SampleRecord
from evalsuite.sinks.clickhouse import ClickHouseSink
from evalsuite.sinks.rows import to_rows

REPO = Path(__file__).resolve().parents[1]
RUN = RunInfo("run-poc", "2026-11-22T09:00:00Z", "f00dbabe", "box", "1x H100", tenant_id="lab",
              versions={"torch": "2.13.0", "rapidocr": "3.10.1"}, seed=1234)


def case(model: str, method: str, dataset: str, reduction: float, drift: float | None, params=None, **kpis):
    """A fabricated case; OCR drift on photos (no words) is noise."""
    doc_type = "receipt" if dataset == "sroie" else "photo"
    kpis = {"tokens_before": 196.0, "tokens_after": 196.0 * (1 - reduction / 100),
            "tokens_reduction_pct": reduction, "feature_cosine_mean": 1 - reduction / 1000, "emd": reduction / 1e4,
            "compression_latency_ms_p95": 1.5, **({} if drift is None else {"ocr_wer_drift": drift}), **kpis}
    label = "_".join(f"{k}{v}" for k, v in (params or {}).items())
    sample_kpis = {k: v for k, v in kpis.items() if k in ("tokens_before", "tokens_after", "ocr_wer_drift")}
    return CaseResult(f"{model}-{method}{label}-{dataset}", model, method, params or {}, dataset, kpis=kpis,
                      samples=[SampleRecord(f"{dataset}-{i}", doc_type, sample_kpis) for i in range(2)],
                      env={"ocr_engine": "rapidocr PP-OCRv4"})


def matrix() -> list[CaseResult]:
    return [
        case("vit_b16", "none", "sroie", 0.0, 0.0),
        case("vit_b16", "none", "photos", 0.0, None),
        case("vit_b16", "tome", "sroie", 40.0, 0.01, {"r": 8}),
        case("vit_b16", "tome", "photos", 38.0, 0.3, {"r": 8}),  # noise: informational
        case("vit_b16", "tome", "sroie", 62.0, 0.05, {"r": 16}),  # saves more, but breaks OCR
        case("vit_b16", "pool", "sroie", 10.0, 0.0, {"k": 2}),  # safe but saves too little
        case("vit_b16", "crop", "photos", 70.0, 0.2),  # only photos: drift cannot be judged
    ]


PHOTOS_INFO = Limits(15, 0.02, {"photos"})


def split(results: list[CaseResult]) -> tuple[list[dict], list[dict]]:
    rows = to_rows(RUN, results)
    return [r for r in rows if r["row_kind"] == "case"], [r for r in rows if r["row_kind"] == "sample"]


def test_recommends_the_largest_reduction_within_both_limits(tmp_path):
    results = matrix()
    results[4].breaches = [Breach("ocr_wer_drift", 0.05, 0.02, "<=", "defaults")]
    report = write_report(*split(results), tmp_path / "reports" / "POC.md", PHOTOS_INFO)

    rec = report.recommendation
    assert rec.candidate is not None and rec.candidate.name == "tome(r=8) on vit_b16"
    assert rec.candidate.reduction_pct == 38.0  # worst case over sroie and photos
    verdicts = {c.label: c.failures for c in rec.ranked}
    assert verdicts["tome(r=16)"] == ["OCR WER drift +0.0500 > 0.02"]
    assert verdicts["pool(k=2)"] == ["token reduction 10.0% < 15%"]
    assert verdicts["crop"] == ["no OCR WER drift measured"]
    assert "none" not in verdicts

    md = report.path.read_text()
    assert "**Recommended: tome(r=8) on vit_b16: worst-case token reduction 38.0%" in md
    assert "| vit_b16 | tome(r=8) | photos | 38.0 | +0.3000 (info) | 0.9620 |" in md
    assert "| vit_b16 | none | photos | 0.0 | - | 1.0000 |" in md  # a KPI not measured: "-"
    assert "| vit_b16 | tome(r=8) | receipt | 2 | 40.0 | - | +0.0100 | - |" in md  # by document type
    assert "ocr_wer_drift = 0.05, limit <= 0.02 (from [defaults])" in md
    assert "Seeds: 1234." in md and "| torch | 2.13.0 |" in md and "| ocr_engine | rapidocr PP-OCRv4 |" in md
    assert "commit `f00dbabe`" in md and "1x H100" in md
    assert report.plot == tmp_path / "reports" / "POC_pareto.png"
    assert report.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](POC_pareto.png)" in md and "4 of 7 cases" in md


def test_no_candidate_when_every_one_breaches(tmp_path):
    report = write_report(*split(matrix()), tmp_path / "POC.md", Limits(15, 0.001, {"photos"}))
    rec = report.recommendation
    assert rec.candidate is None
    assert rec.reason.startswith("No candidate: none of 4 candidate(s) keeps >= 15% token savings with "
                                 "OCR WER drift <= 0.001.")
    assert "crop on vit_b16: no OCR WER drift measured" in rec.reason  # the largest reductions first
    assert "tome(r=16) on vit_b16: OCR WER drift +0.0500 > 0.001" in rec.reason
    assert "**No candidate" in report.path.read_text() and report.plot.exists()


def test_drift_on_informational_datasets_is_judged_only_when_asked():
    rec = recommend(split(matrix())[0], Limits(15, 0.02))  # photos drift now counts
    assert rec.candidate is None
    assert {c.label: c.failures for c in rec.ranked}["tome(r=8)"] == ["OCR WER drift +0.3000 > 0.02"]


def test_an_errored_case_disqualifies_and_the_baseline_alone_is_no_candidate():
    results = matrix()[:4]
    results[2].error, results[2].kpis = "CUDA out of memory", {}
    rec = recommend(split(results)[0], PHOTOS_INFO)
    assert rec.candidate is None and "1 case(s) errored, token counts missing" in rec.reason
    assert recommend(split(matrix()[:2])[0]).reason.startswith("No candidate: the run has no compression cases")


def test_random_weights_are_flagged(tmp_path):
    results = matrix()
    for r in results:
        r.labels = ["random-weights"]
    md = write_report(*split(results), tmp_path / "POC.md", PHOTOS_INFO).path.read_text()
    assert "random weights" in md


def test_pareto_front():
    assert pareto_front([(40, 0.01), (62, 0.05), (10, 0.0), (0, 0.0), (30, 0.02)]) == [0, 1, 2]
    assert pareto_front([]) == []


def test_report_command_reads_the_latest_run_from_chdb(tmp_path):
    chdb = tmp_path / "chdb"
    older = RunInfo("run-old", "2026-11-01T09:00:00Z", "0ld", "box", "1x H100", seed=1)
    sink = ClickHouseSink(chdb_dir=chdb)
    assert not sink.write(older, [case("vit_b16", "tome", "sroie", 20.0, 0.5, {"r": 2})]).spooled
    assert not sink.write(RUN, matrix()).spooled  # closed again: the subprocess below can open it

    def report(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "evalsuite.cli", "report", "--chdb-dir", str(chdb), *args],
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=120)

    latest = report("--drift-informational", "photos")
    assert latest.returncode == 0, latest.stderr
    out = tmp_path / "reports" / "VISION_COMPRESSION_POC.md"
    assert "(run run-poc" in latest.stdout and "Recommended: tome(r=8) on vit_b16" in latest.stdout
    assert "`run-poc`" in out.read_text() and (tmp_path / "reports" / "VISION_COMPRESSION_POC_pareto.png").exists()

    old = report("--run-id", "run-old", "--out", "old/POC.md", "--drift-informational", "photos")
    assert old.returncode == 0, old.stderr
    assert "No candidate" in old.stdout and "`run-old`" in (tmp_path / "old" / "POC.md").read_text()
    assert report("--run-id", "nope").returncode == 1
