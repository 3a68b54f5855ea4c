"""Results written as cases finish: a run cut short (SIGTERM, a killed controller) keeps its
finished cases, a spool that cannot be written moves elsewhere and says where."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalsuite.results import CaseResult, RunInfo, SampleRecord
from evalsuite.sinks import spool
from evalsuite.sinks.clickhouse import TABLE, ClickHouseSink

REPO = Path(__file__).resolve().parents[1]

MATRIX = """
timing_repeats = 1
timing_warmup = 0
[models.dinov2_s14]
image_size = 56
[methods.none]
[methods.tome]
merge_factor = [0.25, 0.5, 0.75]
[datasets.synthetic]
limit = 1
"""

# A plugin for the nested run: every case after the first waits a minute before it runs, so the
# signal comes while the second case is in flight, whatever the machine's speed.
SLOW_AFTER_FIRST = """
import time

import pytest

SEEN = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    SEEN.append(item.nodeid)
    if len(SEEN) > 1:
        time.sleep(60)
"""


def start_run(tmp_path: Path, *args: str) -> subprocess.Popen:
    (tmp_path / "test_cases.py").write_text((REPO / "cases" / "test_compression.py").read_text())
    (tmp_path / "matrix.toml").write_text(MATRIX)
    (tmp_path / "slow_after_first.py").write_text(SLOW_AFTER_FIRST)
    command = [sys.executable, "-m", "pytest", str(tmp_path / "test_cases.py"), "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), "-c", os.devnull, "--evalsuite-matrix", str(tmp_path / "matrix.toml"),
               "--evalsuite-thresholds", str(REPO / "thresholds.toml"), "--evalsuite-no-ocr",
               "--evalsuite-run-id", "cut-short", "-p", "slow_after_first", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSUITE_CLICKHOUSE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def journaled_cases(folder: Path) -> list[str]:
    """Case ids in the spool files of ``folder`` (done/ included), as far as they are written."""
    ids = []
    for path in sorted(folder.glob("**/*.jsonl")):
        for line in path.read_text().splitlines():
            if line.endswith("}") and '"type": "case"' in line:
                ids.append(json.loads(line)["case"]["case_id"])
    return ids


def wait_for_first_case(run: subprocess.Popen, folder: Path, timeout: float = 240) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        ids = journaled_cases(folder)
        if ids:
            return ids
        time.sleep(0.2)
    run.kill()
    pytest.fail(f"no case journaled in {folder}: {run.communicate()[0][-3000:]}")


def test_sigterm_keeps_the_finished_cases_and_prints_the_table(tmp_path):
    """SIGTERM after the first case: the run ends as after Ctrl-C (exit 2, the KPI table), and the
    finished case's rows are in chDB, the journal moved to done/."""
    run = start_run(tmp_path)
    spool_dir = tmp_path / ".evalsuite" / "spool"
    [first] = wait_for_first_case(run, spool_dir)
    run.send_signal(signal.SIGTERM)
    out = run.communicate(timeout=120)[0]
    assert run.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    assert "evalsuite KPIs (run cut-short)" in out and first in out
    assert "2 rows written to chdb://" in out, out[-2000:]  # one case row, one sample row
    assert not list(spool_dir.glob("*.jsonl")) and journaled_cases(spool_dir / "done") == [first]
    rows = ClickHouseSink(chdb_dir=tmp_path / ".evalsuite" / "chdb").select(
        f"SELECT case_id, row_kind FROM {TABLE} WHERE run_id = 'cut-short' ORDER BY row_kind")[1]
    assert rows == [(first, "case"), (first, "sample")]


def test_a_killed_controller_leaves_its_finished_cases_to_ingest(tmp_path):
    """kill -9 of the controller runs no clean-up: the finished case is in the spool already, and
    ``evalsuite ingest`` loads it."""
    from evalsuite.cli import main

    run = start_run(tmp_path)
    spool_dir = tmp_path / ".evalsuite" / "spool"
    [first] = wait_for_first_case(run, spool_dir)
    run.kill()
    run.communicate(timeout=60)
    chdb = tmp_path / "chdb"
    assert main(["ingest", str(spool_dir), "--chdb-dir", str(chdb)]) == 0
    rows = ClickHouseSink(chdb_dir=chdb).select(f"SELECT case_id FROM {TABLE} WHERE row_kind = 'case'")[1]
    assert rows == [(first,)]


RUN = RunInfo("run-j", "2026-11-22T12:00:00.000+00:00", "abc", "box", "cpu")


def case(i: int, text_bytes: int = 0) -> CaseResult:
    return CaseResult(f"c{i}", "vit", "tome", {"r": i}, "d", kpis={"tokens_before": 196.0},
                      samples=[SampleRecord("s", "receipt", {"ocr_wer": 0.1}, {"ocr_text": "x" * text_bytes})])


def test_a_spool_folder_that_cannot_be_made_moves_the_journal_to_the_fallback(tmp_path):
    """A folder under a file cannot be made, whoever runs (root included): the journal goes to the
    configured fallback with every case, and the note says where and why."""
    from evalsuite.sinks import Journal

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    journal = Journal([blocker / "spool", tmp_path / "fallback"], RUN.run_id)
    for i in range(3):
        journal.append(RUN, case(i))
    assert journal.kept and journal.path.parent == tmp_path / "fallback"
    [(_, cases)] = spool.load(journal.path)
    assert [c.case_id for c in cases] == ["c0", "c1", "c2"]
    assert f"{blocker / 'spool'}: NotADirectoryError" in journal.note() and str(journal.path) in journal.note()


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


def test_a_full_disk_moves_the_journal_with_every_case_and_leaves_no_half_line(tmp_path):
    """The spool folder on a tiny tmpfs: the case that does not fit fails its write, which is cut
    back (no half line on the full disk), and the journal, all of it, moves to the fallback."""
    from evalsuite.sinks import Journal

    disk = tmp_path / "disk"
    _tmpfs(disk, "64k")
    try:
        journal = Journal([disk / "spool", tmp_path / "fallback"], RUN.run_id)
        journal.append(RUN, case(0))
        on_disk = journal.path
        assert on_disk.parent == disk / "spool"
        journal.append(RUN, case(1, text_bytes=200_000))  # more than the disk holds
        assert journal.kept and journal.path.parent == tmp_path / "fallback"
        assert "No space left on device" in journal.note()
        [(_, cases)] = spool.load(journal.path)
        assert [c.case_id for c in cases] == ["c0", "c1"]
        [(_, cases)] = spool.load(on_disk)  # what stayed on the full disk is whole lines only
        assert [c.case_id for c in cases] == ["c0"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


NOWHERE = """
import resource, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_sink_journal import RUN, case
from evalsuite.sinks import Journal

resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))  # every file of this process: 4000 bytes at most
journal = Journal([Path({a!r}), Path({b!r})], RUN.run_id)
journal.append(RUN, case(0))
journal.append(RUN, case(1, text_bytes=5000))
print(journal.kept, journal.note())
"""


def test_rows_that_fit_nowhere_are_said_to_be_lost_and_no_file_keeps_a_half_line(tmp_path):
    """A file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk) for every
    folder: the journal says it could not be kept and names each folder's error; the first file
    keeps its whole lines."""
    script = NOWHERE.format(tests=str(Path(__file__).parent), a=str(tmp_path / "a"), b=str(tmp_path / "b"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False the spool could not be written anywhere")
    assert out.stdout.count("File too large") == 2 and str(tmp_path / "a") in out.stdout
    [(_, cases)] = spool.load(next((tmp_path / "a").glob("*.jsonl")))
    assert [c.case_id for c in cases] == ["c0"]


class _Config:
    def __init__(self, root: Path, dsn: str):
        self.rootpath, self.dsn = root, dsn

    def getoption(self, name, default=None):
        return self.dsn if name == "evalsuite_dsn" else default

    def getini(self, name):
        return ""


def test_write_results_says_where_the_rows_are_or_that_they_are_lost(tmp_path):
    """The store is down: the rows are where the journal is (its fallback, said so); with no
    journal either, the line says they could NOT be kept, and why."""
    from evalsuite.sinks import ROWS_LOST, Journal, write_results

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    results = [case(0)]
    journal = Journal([blocker / "spool", tmp_path / "fallback"], RUN.run_id)
    journal.append(RUN, results[0])
    lines = write_results(_Config(tmp_path, "clickhouse://127.0.0.1:1"), RUN, results, journal)
    assert lines[0].startswith(f"evalsuite results: 2 rows spooled to {journal.path}")
    assert "127.0.0.1:1 failed" in lines[0] and f"it is in {journal.path}" in lines[1]

    lost = Journal([blocker / "spool"], RUN.run_id)
    lost.append(RUN, results[0])
    [line] = write_results(_Config(tmp_path, "clickhouse://127.0.0.1:1"), RUN, results, lost)
    assert ROWS_LOST in line and "127.0.0.1:1 failed" in line and "NotADirectoryError" in line
