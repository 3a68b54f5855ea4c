"""The ClickHouse sink against a real embedded chDB engine (no mocks).

chDB hosts one data directory per process at a time and one process per
directory; the sink closes its client after every call, so these tests open a
fresh directory each (sequentially, in this process) and a subprocess can
hold one to play "another process owns it".
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from evalsuite.registry import UnknownNameError
from evalsuite.results import Breach, CaseResult, RunInfo, SampleRecord
from evalsuite.sinks import open_sink, spool, write_results
from evalsuite.sinks.clickhouse import (
    COLUMN_NAMES, DSN_ENV, PASSWORD_ENV, TABLE, USER_ENV, ClickHouseSink, ensure_schema, redacted,
)
from evalsuite.sinks.rows import to_rows
from evalsuite.sinks.spool import SpoolSink

RUN = RunInfo("run-7", "2026-11-22T10:00:00+00:00", "abc123", "box", "H100", tenant_id="lab",
              versions={"torch": "2.13.0", "timm": "1.0.15"}, seed=7)


def results() -> list[CaseResult]:
    """2 cases + 3 samples = 5 rows; one NaN KPI, one breach, one sample error."""
    return [
        CaseResult(
            "vit-tome-sroie", "vit_b16", "tome", {"r": 8}, "sroie",
            kpis={"tokens_before": 196, "tokens_after": 98, "tokens_reduction_pct": 50.0,
                  "feature_cosine_mean": 0.97, "ocr_wer": 0.12, "ocr_wer_drift": 0.01,
                  "compression_latency_ms_p50": 0.4, "compression_latency_ms_p95": 0.9},
            breaches=[Breach("emd", 0.5, 0.3, "<=", "thresholds.default")],
            samples=[SampleRecord("s1", "receipt", {"tokens_before": 196, "ocr_wer": 0.1}, {"text": "TOTAL 9.99"}),
                     SampleRecord("s2", "receipt", {}, error="decode failed")],
            env={"ocr_engine": "tesseract 5.3"},
        ),
        CaseResult("vit-none-photos", "vit_b16", "none", {}, "photos",
                   kpis={"tokens_before": 196, "tokens_after": 196, "ocr_wer": float("nan")},
                   samples=[SampleRecord("p1", "photo", {"feature_cosine_mean": 1.0})]),
    ]


@pytest.fixture
def sink(tmp_path) -> ClickHouseSink:
    return ClickHouseSink(chdb_dir=tmp_path / "chdb", spool_dir=tmp_path / "spool")


def test_schema_is_created_idempotently(sink):
    with sink.client() as client:
        ensure_schema(client)  # a second time, on a table that exists
        ddl = client.query(f"SHOW CREATE TABLE {TABLE}").result_rows[0][0]
        assert client.query(f"SELECT count() FROM {TABLE}").result_rows == [(0,)]
    with sink.client():  # and again in a new client on the same directory
        pass
    assert "ReplacingMergeTree(ingested_at)" in ddl
    assert "ORDER BY (tenant_id, method, model, dataset, timestamp, row_id)" in ddl
    assert "schema_version=1" in ddl


def test_write_then_read_back(sink, tmp_path):
    outcome = sink.write(RUN, results())
    assert (outcome.rows, outcome.spooled, outcome.skipped) == (5, False, 0)
    assert outcome.where == "chdb://" + str((tmp_path / "chdb").resolve())
    assert not (tmp_path / "spool").exists()

    rows = {(r["row_kind"], r["sample_id"] or r["case_id"]): r
            for r in sink.select_dicts(f"SELECT * FROM {TABLE} ORDER BY row_kind")}
    assert len(rows) == 5
    tome = rows[("case", "vit-tome-sroie")]
    assert (tome["tenant_id"], tome["method"], tome["model"], tome["dataset"]) == ("lab", "tome", "vit_b16", "sroie")
    assert (tome["tokens_before"], tome["tokens_after"], tome["ocr_wer"]) == (196, 98, 0.12)
    assert tome["clip_score"] == tome["kpis"]["feature_cosine_mean"] == 0.97
    assert tome["compression_latency_ms_p95"] == 0.9
    assert json.loads(tome["method_params"]) == {"r": 8}
    assert tome["passed"] == 0 and json.loads(tome["breaches"])[0]["kpi"] == "emd"
    assert tome["versions"] == {"torch": "2.13.0", "timm": "1.0.15", "ocr_engine": "tesseract 5.3"}
    assert (tome["seed"], tome["git_commit"], tome["gpu"], tome["doc_type"]) == (7, "abc123", "H100", "receipt")
    assert tome["timestamp"].isoformat().startswith("2026-11-22T10:00:00")

    baseline = rows[("case", "vit-none-photos")]
    assert baseline["ocr_wer"] is None and "ocr_wer" not in baseline["kpis"]  # NaN = not measured
    assert baseline["clip_score"] is None and baseline["passed"] == 1

    assert rows[("sample", "s1")]["info"] == '{"text": "TOTAL 9.99"}'
    assert (rows[("sample", "s2")]["error"], rows[("sample", "s2")]["passed"]) == ("decode failed", 0)


def test_writing_twice_adds_no_rows(sink):
    sink.write(RUN, results())
    again = sink.write(RUN, results())
    assert (again.rows, again.skipped, again.spooled) == (0, 5, False)
    assert sink.select(f"SELECT count() FROM {TABLE}")[1] == [(5,)]  # without FINAL

    # Bypass the existence check: the engine key alone still collapses duplicates.
    with sink.client() as client:
        client.insert(TABLE, [[r[c] for c in COLUMN_NAMES] for r in to_rows(RUN, results())],
                      column_names=COLUMN_NAMES)
        assert client.query(f"SELECT count() FROM {TABLE} FINAL").result_rows == [(5,)]
        client.command(f"OPTIMIZE TABLE {TABLE} FINAL")
        assert client.query(f"SELECT count() FROM {TABLE}").result_rows == [(5,)]


def test_unreachable_server_spools_every_row_and_hides_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv(DSN_ENV, "clickhouse://evals:hunter2@127.0.0.1:1/evals")  # closed loopback port
    sink = ClickHouseSink(spool_dir=tmp_path / "spool")
    started = time.monotonic()
    outcome = sink.write(RUN, results())
    assert time.monotonic() - started < 10
    assert outcome.spooled and outcome.rows == 5
    assert outcome.where == str(tmp_path / "spool" / "run-7.jsonl")
    assert "hunter2" not in str(outcome) and "clickhouse://evals:***@127.0.0.1:1/evals" in outcome.reason
    [(run, cases)] = spool.load(outcome.where)
    assert run == RUN and spool.row_count(cases) == 5
    assert [c.case_id for c in cases] == [c.case_id for c in results()]
    assert math.isnan(cases[1].kpis["ocr_wer"])


def test_password_from_env_var_never_shows(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "hunter2")
    monkeypatch.setenv(USER_ENV, "evals")
    sink = ClickHouseSink("http://127.0.0.1:1", spool_dir=tmp_path / "spool")
    outcome = sink.write(RUN, results())
    assert outcome.spooled and "hunter2" not in str(outcome)
    assert "hunter2" not in sink.explain(RuntimeError("auth failed for evals:hunter2"))


def test_redacted():
    assert redacted("https://u:p%40ss@db.example:8443/x?access_token=t&secure=1") == \
        "https://u:***@db.example:8443/x?access_token=***&secure=1"
    assert redacted("chdb:///data/chdb") == "chdb:///data/chdb"


def test_chdb_dir_owned_by_another_process_spools(sink, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, clickhouse_connect as cc\n"
         f"c = cc.get_client(dsn={sink.dsn!r}); print('held', flush=True); sys.stdin.read(); c.close()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        outcome = sink.write(RUN, results())
    finally:
        holder.communicate("", timeout=30)
    assert outcome.spooled and outcome.rows == 5 and sink.where in outcome.reason
    assert "is in use by another process" in outcome.reason and "cannot be written" not in outcome.reason
    assert (tmp_path / "spool" / "run-7.jsonl").exists()
    assert not sink.write(RUN, results()).spooled  # free again: this process opens it


def test_open_sink_picks_the_backend_by_scheme(tmp_path):
    assert isinstance(open_sink("chdb://" + str(tmp_path / "db")), ClickHouseSink)
    assert isinstance(open_sink("clickhouse://127.0.0.1:8123/evals"), ClickHouseSink)
    assert isinstance(open_sink("spool://" + str(tmp_path)), SpoolSink)
    with pytest.raises(UnknownNameError):
        open_sink("postgres://db/evals")


def test_no_target_is_an_error():
    with pytest.raises(ValueError, match=DSN_ENV):
        ClickHouseSink()


def test_row_ids_are_deterministic_and_distinct():
    ids = [r["row_id"] for r in to_rows(RUN, results())]
    assert ids == [r["row_id"] for r in to_rows(RUN, results())]
    assert len(set(ids)) == len(ids) == 5
    assert set(COLUMN_NAMES) == set(to_rows(RUN, results())[0])


class _Config:
    """What write_results reads from a pytest config."""

    def __init__(self, rootpath, dsn=""):
        self.rootpath, self._dsn = rootpath, dsn

    def getoption(self, name, default=None):
        return self._dsn or default

    def getini(self, name):
        return ""


def test_write_results_defaults_to_chdb_under_the_rootdir(tmp_path):
    [line] = write_results(_Config(tmp_path), RUN, results())
    assert line == f"evalsuite results: 5 rows written to chdb://{tmp_path.resolve()}/.evalsuite/chdb"


def test_write_results_spools_when_the_option_carries_a_password(tmp_path):
    [line] = write_results(_Config(tmp_path, "clickhouse://u:hunter2@db:8123"), RUN, results())
    spooled = tmp_path / ".evalsuite" / "spool" / "run-7.jsonl"
    assert "hunter2" not in line and "u:***@db" in line and PASSWORD_ENV in line
    assert line.endswith(f"load later with: evalsuite ingest {spooled}") and spooled.exists()


def test_a_rerun_of_a_run_id_replaces_its_rows_and_an_older_spool_does_not_undo_it(sink, tmp_path):
    """The same run id run twice, the second time with the opposite verdict: the table then holds
    the second run's rows only (what the terminal said last); ingesting the first run's spool
    afterwards changes nothing; writing the second run again adds nothing."""
    from dataclasses import replace as copy

    first_run, second_run = RUN, copy(RUN, started_at="2026-11-22T10:05:00.250+00:00")
    passed = [CaseResult("c", "vit_b16", "none", {}, "photos", kpis={"tokens_before": 196.0},
                         samples=[SampleRecord("p1", "photo", {})])]
    failed = [copy(passed[0], breaches=[Breach("emd", 0.5, 0.3, "<=", "t")], samples=[
        SampleRecord("p1", "photo", {}), SampleRecord("p2", "photo", {})])]
    assert str(sink.write(first_run, passed)).startswith("2 rows written")
    again = sink.write(second_run, failed)
    assert again.rows == 3 and again.replaced == 2 and "replacing 2 rows of an earlier run" in str(again)

    def table():
        return sink.select(f"SELECT row_kind, sample_id, passed FROM {TABLE} WHERE run_id = 'run-7' "
                           "ORDER BY row_kind, sample_id")[1]

    assert table() == [("case", "", 0), ("sample", "p1", 1), ("sample", "p2", 1)]
    late = sink.write(first_run, passed)  # the first run's spool, ingested late
    assert late.superseded and late.rows == 0 and "holds a later run" in str(late)
    assert sink.write(second_run, failed).skipped == 3
    assert table() == [("case", "", 0), ("sample", "p1", 1), ("sample", "p2", 1)]
    assert sink.select(f"SELECT count() FROM {TABLE}")[1] == [(3,)]  # no FINAL needed


def test_a_read_only_chdb_folder_is_told_from_a_locked_one(tmp_path):
    """A chDB folder on a read-only disk (a tmpfs remounted read-only: chmod does not stop root)
    spools with that reason, not "in use"."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        (disk / "chdb").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        outcome = ClickHouseSink(chdb_dir=disk / "chdb", spool_dir=tmp_path / "spool").write(RUN, results())
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert outcome.spooled and "cannot be written (Read-only file system)" in outcome.reason
    assert "in use" not in outcome.reason


def test_write_results_refuses_a_password_in_the_dsn_query(tmp_path):
    [line] = write_results(_Config(tmp_path, "clickhouse://db:8123/evals?password=hunter2"), RUN, results())
    assert "hunter2" not in line and "password=***" in line and "carries a password" in line and "spooled" in line
