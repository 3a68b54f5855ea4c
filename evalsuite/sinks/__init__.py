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

SINKS: Registry = Registry("sink", "evalsuite.sinks")
for _scheme in ("chdb", "clickhouse", "clickhouses", "http", "https"):
    SINKS.register(_scheme, "evalsuite.sinks.clickhouse:ClickHouseSink")
SINKS.register("spool", "evalsuite.sinks.spool:SpoolSink")


def write_results(config: Any, run: RunInfo, results: list[CaseResult]) -> list[str]:
    """Controller only: store ``results`` (ClickHouse, else the spool) -> lines for the terminal summary.

    The target is ``--evalsuite-dsn`` / ini ``evalsuite_dsn``, else
    ``$EVALSUITE_CLICKHOUSE_DSN``, else chDB in ``<rootdir>/.evalsuite/chdb``;
    the spool is ``<rootdir>/.evalsuite/spool``. A DSN from the command line or
    the ini file must not carry a password (those end up in shell history and
    in git): such a run is spooled, with the reason.
    """
    from evalsuite.sinks.clickhouse import ClickHouseSink, redacted
    from evalsuite.sinks.spool import SpoolSink

    root = Path(config.rootpath) / ".evalsuite"
    dsn = config.getoption("evalsuite_dsn", None) or config.getini("evalsuite_dsn") or None
    try:
        if dsn and urlsplit(dsn).password is not None:
            raise ValueError(f"--evalsuite-dsn {redacted(dsn)} carries a password; "
                             "set EVALSUITE_CLICKHOUSE_PASSWORD or EVALSUITE_CLICKHOUSE_DSN instead")
        scheme = urlsplit(dsn).scheme if dsn else ""
        if scheme in SINKS and SINKS.get(scheme) is not ClickHouseSink:  # e.g. spool:///dir
            outcome = open_sink(dsn).write(run, results)
        else:
            outcome = ClickHouseSink(dsn, chdb_dir=root / "chdb", spool_dir=root / "spool").write(run, results)
    except ValueError as exc:  # no usable target: keep the results anyway
        outcome = replace(SpoolSink(root / "spool").write(run, results), reason=str(exc))
    hint = f"; load later with: evalsuite ingest {outcome.where}" if outcome.spooled else ""
    return [f"evalsuite results: {outcome}{hint}"]


def open_sink(url: str, **options: Any) -> Sink:
    """``chdb:///abs/dir``, ``clickhouse://host:8123/db``, ``https://...``, ``spool:///abs/dir``."""
    return SINKS.get(urlsplit(url).scheme)(url, **options)


__all__ = ["SINKS", "Sink", "WriteOutcome", "open_sink", "write_results"]
