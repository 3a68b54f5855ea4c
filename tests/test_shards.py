"""One run split over machines: pytest-split shards under one run id, spooled apart, ingested into
one store, read back by the report and ``compare`` as one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalsuite.cli import main
from evalsuite.report import compare, poc
from evalsuite.results import CaseResult, RunInfo, SampleRecord
from evalsuite.sinks import spool
from evalsuite.sinks.clickhouse import TABLE, ClickHouseSink

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "sharded-run"
MATRIX = """
timing_repeats = 2
timing_warmup = 1
[models.dinov2_s14]
image_size = 56
[methods.none]
[methods.tome]
merge_factor = 0.5
[datasets.synthetic]
limit = 1
"""
CASES = {"dinov2_s14-none-synthetic", "dinov2_s14-tome_f0.5-synthetic"}


def start_shard(machine: Path, group: int, splits: int = 2) -> subprocess.Popen:
    """One shard as a machine of its own would run it: its own checkout folder and spool."""
    machine.mkdir()
    (machine / "test_cases.py").write_text((REPO / "cases" / "test_compression.py").read_text())
    (machine / "matrix.toml").write_text(MATRIX)
    (machine / "thresholds.toml").write_text("")  # verdicts are not what this test is about
    command = [sys.executable, "-m", "pytest", "test_cases.py", "-p", "no:cacheprovider", "--rootdir", str(machine),
               "-c", os.devnull, "--evalsuite-matrix", "matrix.toml", "--evalsuite-thresholds", "thresholds.toml",
               "--evalsuite-no-ocr", "--evalsuite-run-id", RUN_ID, "--evalsuite-dsn", f"spool://{machine / 'spool'}",
               "--splits", str(splits), "--group", str(group), "-q"]
    return subprocess.Popen(command, cwd=machine, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_shards_are_one_run_in_the_report_and_compare(tmp_path):
    shards = [start_shard(tmp_path / f"machine{group}", group) for group in (1, 2)]
    outputs = [shard.communicate(timeout=300)[0] for shard in shards]
    for shard, out in zip(shards, outputs):
        assert shard.returncode == 0, out
        assert "1 passed" in out and "1 deselected" in out, out  # each shard ran one of the two cases

    chdb = tmp_path / "chdb"
    for group in (1, 2):
        assert main(["ingest", str(tmp_path / f"machine{group}" / "spool"), "--chdb-dir", str(chdb)]) == 0
    sink = ClickHouseSink(chdb_dir=chdb)
    _, stored = sink.select(f"SELECT case_id, row_kind, versions['shard'] FROM {TABLE} ORDER BY case_id, row_kind")
    shard_of = {case: shard for case, kind, shard in stored if kind == "case"}
    assert set(shard_of) == CASES and sorted(shard_of.values()) == ["1/2", "2/2"]
    assert len(stored) == 4  # a case row and a sample row per case, none written twice

    rows_a, rows_b = compare.load_runs(sink, RUN_ID, RUN_ID)
    assert sorted(r["case_id"] for r in rows_a if r["row_kind"] == "case") == sorted(CASES)
    result = compare.compare(rows_a, rows_b, RUN_ID, RUN_ID)
    assert set(result.verdicts) == CASES and not result.regressed and not result.only_in_a

    report = poc.generate(sink, tmp_path / "POC.md", run_id=RUN_ID)
    text = report.path.read_text()
    assert "in 2 shards (1/2, 2/2)" in text
    assert "| dinov2_s14 | none | synthetic |" in text and "| dinov2_s14 | tome(merge_factor=0.5) | synthetic |" in text

    # a shard ingested again (a retried upload) adds nothing and leaves the other shard's rows
    again = tmp_path / "again"
    again.mkdir()
    for path in (tmp_path / "machine1" / "spool" / "done").glob("*.jsonl"):
        (again / path.name).write_text(path.read_text())
    assert main(["ingest", str(again), "--chdb-dir", str(chdb)]) == 0
    assert sink.select(f"SELECT count() FROM {TABLE}")[1][0][0] == 4


def result(case_id: str) -> CaseResult:
    return CaseResult(case_id, "m", "tome", {}, "d", kpis={"tokens_reduction_pct": 50.0},
                      samples=[SampleRecord(f"{case_id}/s", "document", {"feature_cosine": 0.9})])


def test_shards_concatenated_into_one_spool_keep_their_own_host(tmp_path):
    """Two shards' spools joined into one file (or appended to one shared folder): each case keeps the
    run line of its shard, not the first shard's."""
    joined = tmp_path / f"{RUN_ID}.jsonl"
    for host, shard in (("box-a", "1/2"), ("box-b", "2/2")):
        run = RunInfo(RUN_ID, f"2026-12-03T0{shard[0]}:00:00Z", "c0ffee", host, "none", versions={"shard": shard})
        spool.append(joined, run, [result(f"case-{host}")])
    loaded = spool.load(joined)
    assert [(run.host, [c.case_id for c in cases]) for run, cases in loaded] == [
        ("box-a", ["case-box-a"]), ("box-b", ["case-box-b"])]

    chdb = tmp_path / "chdb"
    assert main(["ingest", str(joined), "--chdb-dir", str(chdb)]) == 0
    rows = ClickHouseSink(chdb_dir=chdb).select_dicts(
        f"SELECT case_id, host, versions FROM {TABLE} WHERE row_kind = 'case' ORDER BY case_id")
    assert [(r["case_id"], r["host"], r["versions"]["shard"]) for r in rows] == [
        ("case-box-a", "box-a", "1/2"), ("case-box-b", "box-b", "2/2")]
    assert json.loads(joined.with_name("done").joinpath(joined.name).read_text().splitlines()[0])["type"] == "run"
