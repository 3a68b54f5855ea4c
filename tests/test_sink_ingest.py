"""``evalsuite ingest`` / ``query`` against a real chDB directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalsuite.cli import main
from evalsuite.results import CaseResult, RunInfo, SampleRecord
from evalsuite.sinks.clickhouse import TABLE, ClickHouseSink

REPO = Path(__file__).resolve().parents[1]
RUN = RunInfo("run-9", "2026-11-22T12:00:00Z", "abc", "box", "H100", seed=3)
CASES = [CaseResult(f"c{i}", "vit", "tome", {"r": i}, "sroie", kpis={"tokens_before": 196.0},
                    samples=[SampleRecord(f"s{j}", "receipt", {"ocr_wer": 0.1 * j}) for j in range(3)])
         for i in range(2)]  # 2 cases + 6 samples = 8 rows


@pytest.fixture
def spooled(tmp_path) -> Path:
    """A spool file made the real way: a write to a server that is not there."""
    outcome = ClickHouseSink("clickhouse://127.0.0.1:1", spool_dir=tmp_path / "spool").write(RUN, CASES)
    assert outcome.spooled and outcome.rows == 8
    return Path(outcome.where)


def count(chdb: Path) -> int:
    return ClickHouseSink(chdb_dir=chdb).select(f"SELECT count() FROM {TABLE}")[1][0][0]  # no FINAL


def test_ingesting_a_spool_twice_counts_once(spooled, tmp_path, capsys):
    chdb = tmp_path / "chdb"
    assert main(["ingest", str(spooled), "--chdb-dir", str(chdb)]) == 0
    done = spooled.parent / "done" / spooled.name
    assert "8 rows written" in capsys.readouterr().out and done.exists() and not spooled.exists()
    assert count(chdb) == 8

    assert main(["ingest", str(done), "--chdb-dir", str(chdb)]) == 0  # the same file again
    assert "0 rows written" in capsys.readouterr().out and done.exists()
    shutil.copy(done, spooled)  # or the run spooled again
    assert main(["ingest", str(spooled.parent), "--chdb-dir", str(chdb)]) == 0
    assert "8 already present" in capsys.readouterr().out
    assert count(chdb) == 8


def test_a_failed_ingest_keeps_the_file(spooled, capsys):
    assert main(["ingest", str(spooled), "--dsn", "http://127.0.0.1:1"]) == 1
    assert "not ingested, kept" in capsys.readouterr().err and spooled.exists()


@pytest.mark.parametrize("dsn", ["clickhouse://u:hunter2@db:8123", "clickhouse://db:8123/evals?password=hunter2"])
def test_a_password_on_the_command_line_is_refused(spooled, capsys, dsn):
    with pytest.raises(SystemExit) as exit_:
        main(["ingest", str(spooled), "--dsn", dsn])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "EVALSUITE_CLICKHOUSE_PASSWORD" in err and "hunter2" not in err


def test_a_truncated_line_is_named_and_the_intact_lines_are_ingested(spooled, tmp_path, capsys):
    """The last line cut short, as a run killed while writing it leaves it: the other cases go in."""
    text = spooled.read_text()
    spooled.write_text(text[: len(text) - 40])  # the second case's line loses its end
    chdb = tmp_path / "chdb"
    assert main(["ingest", str(spooled), "--chdb-dir", str(chdb)]) == 1
    out, err = capsys.readouterr()
    assert f"{spooled}:3: not a spool line" in err and "left out" in err
    assert "4 rows written" in out and count(chdb) == 4  # the first case and its 3 samples


def test_an_empty_spool_folder_is_nothing_to_do(tmp_path, capsys):
    (tmp_path / "spool").mkdir()
    assert main(["ingest", str(tmp_path / "spool"), "--chdb-dir", str(tmp_path / "chdb")]) == 0
    assert "nothing to ingest" in capsys.readouterr().out
    assert main(["ingest", str(tmp_path / "absent"), "--chdb-dir", str(tmp_path / "chdb")]) == 1
    assert "no such spool file or folder" in capsys.readouterr().err


def test_another_process_can_query_after_the_sink_closed(tmp_path):
    chdb = tmp_path / "chdb"
    ClickHouseSink(chdb_dir=chdb).write(RUN, CASES)  # this process opens, writes, closes
    sql = f"SELECT row_kind, count() AS n FROM {TABLE} GROUP BY row_kind ORDER BY row_kind"
    done = subprocess.run([sys.executable, "-m", "evalsuite.cli", "query", sql, "--chdb-dir", str(chdb)],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[2:5] == ["case      2", "sample    6", "(2 rows)"]
