"""Where results go. A sink is picked by the scheme of its URL and imported lazily.

>>> SINKS.names()
['chdb', 'clickhouse', 'clickhouses', 'http', 'https', 'spool']

Only the controller process writes to sinks; workers ship CaseResults to it.
A third-party sink registers a scheme through the entry point group
``evalsuite.sinks``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evalsuite.registry import Registry
from evalsuite.results import CaseResult, RunInfo
from evalsuite.sinks.base import Sink, WriteOutcome
from evalsuite.sinks.journal import Journal

SINKS: Registry = Registry("sink", "evalsuite.sinks")
ROWS_LOST = "could NOT be kept"  # in write_results' line when neither the store nor any spool folder took the rows
for _scheme in ("chdb", "clickhouse", "clickhouses", "http", "https"):
    SINKS.register(_scheme, "evalsuite.sinks.clickhouse:ClickHouseSink")
SINKS.register("spool", "evalsuite.sinks.spool:SpoolSink")


def spool_folder(config: Any) -> Path:
    """The run's spool folder: a ``spool:///dir`` DSN's, else ``<rootdir>/.evalsuite/spool``."""
    dsn = _dsn(config)
    if dsn and urlsplit(dsn).scheme == "spool":
        return SINKS.get("spool")(dsn).directory
    return Path(config.rootpath) / ".evalsuite" / "spool"


def _dsn(config: Any) -> str | None:
    return config.getoption("evalsuite_dsn", None) or config.getini("evalsuite_dsn") or None


def write_results(config: Any, run: RunInfo, results: list[CaseResult], journal: Journal | None = None) -> list[str]:
    """Controller only: store ``results`` (ClickHouse, else the spool) -> lines for the terminal summary.

    The target is ``--evalsuite-dsn`` / ini ``evalsuite_dsn``, else
    ``$EVALSUITE_CLICKHOUSE_DSN``, else chDB in ``<rootdir>/.evalsuite/chdb``;
    the spool is ``<rootdir>/.evalsuite/spool``. A DSN from the command line or
    the ini file must not carry a password (those end up in shell history and
    in git): such a run is spooled, with the reason.

    With ``journal`` (the run's results spooled case by case: :mod:`evalsuite.sinks.journal`),
    the rows already are in the spool: they are loaded into the store and the journal moved
    to ``done/``; where the store fails they stay in the journal. The lines say where the rows
    are, or that they could not be kept.
    """
    from evalsuite.sinks.clickhouse import ClickHouseSink, redacted
    from evalsuite.sinks.spool import SpoolSink, mark_done, row_count

    root = Path(config.rootpath) / ".evalsuite"
    dsn = _dsn(config)
    outcome, lost = None, None
    try:
        if dsn and has_password(dsn):
            raise ValueError(f"--evalsuite-dsn {redacted(dsn)} carries a password; "
                             "set EVALSUITE_CLICKHOUSE_PASSWORD or EVALSUITE_CLICKHOUSE_DSN instead")
        scheme = urlsplit(dsn).scheme if dsn else ""
        if journal is not None and scheme == "spool":
            outcome = _journal_outcome(journal, results, None)
        elif scheme in SINKS and SINKS.get(scheme) is not ClickHouseSink:  # e.g. a third-party sink
            outcome = open_sink(dsn).write(run, results)
            if journal is not None and journal.kept:  # the rows are in: the journal is not pending
                mark_done(journal.path)
        elif journal is not None:
            sink = ClickHouseSink(dsn, chdb_dir=root / "chdb", spool_dir=root / "spool")
            try:
                counts = sink.insert(run, results)
            except Exception as exc:  # the rows stay in the journal
                outcome = _journal_outcome(journal, results, f"{sink.where} failed: {sink.explain(exc)}")
                if not journal.kept:
                    lost = outcome.reason
            else:
                outcome = WriteOutcome(counts.written, sink.where, skipped=counts.skipped, replaced=counts.replaced,
                                       superseded=counts.superseded)
                if journal.kept:
                    mark_done(journal.path)
        else:
            outcome = ClickHouseSink(dsn, chdb_dir=root / "chdb", spool_dir=root / "spool").write(run, results)
    except ValueError as exc:  # no usable target: keep the results anyway
        if journal is not None:
            outcome = _journal_outcome(journal, results, str(exc))
            lost = None if journal.kept else str(exc)
        else:
            outcome = replace(SpoolSink(root / "spool").write(run, results), reason=str(exc))
    if lost is not None:
        return [f"evalsuite results: {row_count(results)} rows {ROWS_LOST}: {lost}; {journal.note()}"]
    hint = f"; load later with: evalsuite ingest {outcome.where}" if outcome.spooled else ""
    note = journal.note() if journal is not None else None
    return [f"evalsuite results: {outcome}{hint}"] + ([f"evalsuite results: {note}"] if note else [])


def _journal_outcome(journal: Journal, results: list[CaseResult], reason: str | None) -> WriteOutcome:
    from evalsuite.sinks.spool import row_count

    return WriteOutcome(row_count(results), str(journal.path) if journal.kept else "nowhere", spooled=True,
                        reason=reason)


def has_password(dsn: str) -> bool:
    """Whether ``dsn`` carries a secret: ``user:password@`` or a query value such as ``?password=``.

    >>> has_password("clickhouse://db:8123/x?password=s"), has_password("clickhouse://u@db/x?secure=1")
    (True, False)
    """
    from evalsuite.sinks.clickhouse import redacted

    return urlsplit(dsn).password is not None or redacted(dsn) != dsn


def open_sink(url: str, **options: Any) -> Sink:
    """``chdb:///abs/dir``, ``clickhouse://host:8123/db``, ``https://...``, ``spool:///abs/dir``."""
    return SINKS.get(urlsplit(url).scheme)(url, **options)


__all__ = ["ROWS_LOST", "SINKS", "Journal", "Sink", "WriteOutcome", "has_password", "open_sink", "spool_folder", "write_results"]
