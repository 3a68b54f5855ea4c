"""The run's journal: each case's result is appended to the spool as the case finishes.

The controller writes here, per case, before anything else sees the result; at the
end of the run the journal is loaded into the store (ClickHouse, chDB by default)
and moved to ``done/``. So a run that ends early (Ctrl-C, SIGTERM, a killed
controller, a store that is down) loses at most the case in flight: what is in the
journal is ingested by the end of the run or, after a kill, by ``evalsuite ingest``.

Why a spool file first and not a database insert per case: the spool is a local
append with ``fsync`` (milliseconds), works whatever the store's state, and is what a
failed store already falls back to; chDB lets one process own its directory, and
opening it per case would cost every case the engine's start-up. The journal is
a plain spool file, so ``evalsuite ingest`` reads it like any other.

A write that fails (a full or read-only disk: :func:`evalsuite.sinks.spool.append`
checks it) moves the journal to the next folder, the configured fallbacks then the
system's temporary folder, where it is written again whole; where it is, or that it
could not be kept anywhere, is said at the end of the run (:meth:`Journal.note`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from evalsuite.results import CaseResult, RunInfo
from evalsuite.sinks import spool

FALLBACK_ENV = "EVALSUITE_SPOOL_FALLBACK"  # folders (os.pathsep-separated) for the spool when its own fails


def temporary_spool() -> Path:
    """The last resort for a spool that cannot be written where it belongs."""
    return Path(tempfile.gettempdir()) / "evalsuite-spool"


class Journal:
    """The spool file of one run, written case by case into the first folder of ``folders`` that
    takes it."""

    def __init__(self, folders: list[Path], run_id: str):
        self.folders = list(dict.fromkeys(Path(f) for f in folders))  # in order, without repeats
        self.run_id = run_id
        self.path: Path | None = None  # the file the journal is in now (None: not started, or lost)
        self.results: list[CaseResult] = []  # every result journaled, to write again elsewhere
        self.failures: list[str] = []  # "<file or folder>: <error>", one per folder given up
        self._next = 0  # index in ``folders`` of the next folder to try

    @property
    def started(self) -> bool:
        return bool(self.results)

    @property
    def kept(self) -> bool:
        """Whether every result journaled so far is on disk (in :attr:`path`)."""
        return self.path is not None

    @property
    def moved(self) -> bool:
        """Whether the journal is not in its first folder (that one failed)."""
        return bool(self.failures)

    def append(self, run: RunInfo, result: CaseResult) -> None:
        """Journal ``result`` (``run``: the run's info as known now); never raises for the disk."""
        self.results.append(result)
        if self.path is not None:
            try:
                spool.append(self.path, run, [result])
                return
            except OSError as exc:
                self._give_up(self.path, exc)
        while self._next < len(self.folders):  # start, or start again elsewhere with everything so far
            folder = self.folders[self._next]
            self._next += 1
            try:
                path = self._new_file(folder)
                spool.append(path, run, self.results)
            except OSError as exc:
                self._give_up(folder, exc)
                continue
            self.path = path
            return

    def _give_up(self, where: Path, exc: OSError) -> None:
        self.failures.append(f"{where}: {type(exc).__name__}: {exc.strerror or exc}")
        self.path = None

    def _new_file(self, folder: Path) -> Path:
        """A spool file of this run in ``folder`` that holds nothing yet: a rerun of a run id whose
        earlier spool is still pending gets a file of its own, ingested after it."""
        path = spool.spool_file(folder, self.run_id)
        n = 1
        while path.exists():
            path = spool.spool_file(folder, f"{self.run_id}.{n}")
            n += 1
        return path

    def note(self) -> str | None:
        """Where the journal is, when that is not where it belongs; or that it is lost. None when all is well."""
        if not self.started or not self.failures:
            return None
        failed = "; ".join(self.failures)
        if self.kept:
            return f"the spool could not be written where it belongs ({failed}); it is in {self.path}"
        return f"the spool could not be written anywhere ({failed})"


def fallback_folders(configured: str | None) -> list[Path]:
    """The folders a journal may move to: ``$EVALSUITE_SPOOL_FALLBACK``, else ``configured`` (the
    ini value), both os.pathsep-separated; then :func:`temporary_spool`."""
    text = os.environ.get(FALLBACK_ENV) or configured or ""
    return [Path(p).expanduser() for p in text.split(os.pathsep) if p.strip()] + [temporary_spool()]
