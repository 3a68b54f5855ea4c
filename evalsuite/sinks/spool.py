"""The JSONL spool: results that could not reach their store wait here.

One file per run, ``<spool dir>/<run_id>.jsonl`` (default dir
``.evalsuite/spool/`` under the project root; the caller passes it). Each write
appends one ``run`` line (the :class:`RunInfo`) and one ``case`` line per
:class:`CaseResult`, samples included, so nothing is flattened away: ingesting
rebuilds exactly the rows the store would have received, with the same row ids.

``evalsuite ingest`` moves a file it has fully ingested into ``done/`` beside
it, so a glob over ``*.jsonl`` only ever picks up work that is still pending.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from evalsuite.results import CaseResult, RunInfo
from evalsuite.sinks.base import WriteOutcome

FORMAT = 1
DONE_DIR = "done"


def spool_file(directory: str | os.PathLike, run_id: str) -> Path:
    """The spool file of ``run_id``; unsafe characters in the name become ``_``."""
    return Path(directory) / (re.sub(r"[^A-Za-z0-9._-]", "_", run_id) + ".jsonl")


def row_count(results: list[CaseResult]) -> int:
    """Table rows these results make: one per case plus one per sample."""
    return sum(1 + len(r.samples) for r in results)


def append(path: str | os.PathLike, run: RunInfo, results: list[CaseResult]) -> Path:
    """Append ``run`` and ``results`` to ``path`` and fsync it; checked: an error while writing or
    syncing (a full or read-only disk, a file size limit), or a file that did not grow by what was
    written, raises :class:`OSError` after cutting the file back to its size before, so a failed
    append leaves no half line behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"type": "run", "format": FORMAT, "run": asdict(run)})]
    lines += [json.dumps({"type": "case", "run_id": run.run_id, "case": asdict(r)}, default=float) for r in results]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):  # a short write is what a nearly full disk does first
                written += os.write(fd, data[written:])
            os.fsync(fd)
            size = os.fstat(fd).st_size
            if size != start + len(data):
                raise OSError(errno.EIO, f"{path} holds {size} bytes after appending {len(data)} to {start}")
        except BaseException:  # a disk error, or Ctrl-C/SIGTERM between a short write and the rest
            try:
                os.ftruncate(fd, start)
            except OSError:  # the file may keep a partial last line: load names it
                pass
            raise
    finally:
        os.close(fd)
    return path


def load(path: str | os.PathLike) -> list[tuple[RunInfo, list[CaseResult]]]:
    """Every run in a spool file with its cases, in file order. A line that is not a spool line raises
    :class:`ValueError` naming the file and line (:func:`load_intact` skips it).

    A run is told apart by its id, start, host and shard: the controller writes its ``run`` line again
    with every case (the latest wins: its GPU summary grows), and shards of one run (pytest-split on
    several machines, one run id) each write their own, so spools concatenated into one file keep each
    shard's host and start. A case belongs to the last ``run`` line of its run id before it."""
    runs, bad = load_intact(path)
    if bad:
        raise ValueError(bad[0])
    return runs


def load_intact(path: str | os.PathLike) -> tuple[list[tuple[RunInfo, list[CaseResult]]], list[str]]:
    """:func:`load`'s runs from the lines that parse, and ``"<file>:<line>: not a spool line (why)"``
    for each that does not (a truncated last line, say, of a run killed while writing it)."""
    runs: dict[tuple, tuple[RunInfo, list[CaseResult]]] = {}  # run identity -> run and its cases
    current: dict[str, tuple] = {}  # run id -> the identity of its latest run line
    bad = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if entry["type"] == "run":
                    run = RunInfo(**entry["run"])
                    key = current[run.run_id] = (run.run_id, run.started_at, run.host, run.versions.get("shard"))
                    runs[key] = (run, runs[key][1] if key in runs else [])
                elif entry["type"] == "case":
                    runs[current[entry["run_id"]]][1].append(CaseResult.from_json(json.dumps(entry["case"])))
                else:
                    raise ValueError(f"unknown line type {entry['type']!r}")
            except (ValueError, KeyError, TypeError) as exc:
                bad.append(f"{path}:{lineno}: not a spool line ({exc})")
    return list(runs.values()), bad


def mark_done(path: str | os.PathLike) -> Path:
    """Move an ingested spool file into ``done/`` beside it, never overwriting one there."""
    path = Path(path)
    done = path.parent / DONE_DIR
    done.mkdir(exist_ok=True)
    target, n = done / path.name, 1
    while target.exists():
        target, n = done / f"{path.stem}.{n}{path.suffix}", n + 1
    return path.replace(target)


class SpoolSink:
    """A sink that only spools: ``spool:///abs/dir`` or a plain directory."""

    def __init__(self, url: str | os.PathLike):
        text = os.fspath(url)
        self.directory = Path(urlsplit(text).path if text.startswith("spool:") else text)

    def write(self, run: RunInfo, results: list[CaseResult]) -> WriteOutcome:
        path = append(spool_file(self.directory, run.run_id), run, results)
        return WriteOutcome(rows=row_count(results), where=str(path), spooled=True)
