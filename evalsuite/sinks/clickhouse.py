"""The ClickHouse sink: an embedded chDB directory by default, any server by DSN.

Targets (``clickhouse_connect`` is imported only when one is opened):

- ``chdb:///abs/dir``: embedded chDB through clickhouse-connect's chdb DSN
  support. Default: ``<project root>/.evalsuite/chdb`` (the caller passes it).
  chDB lets one process at a time own a directory, and one process host one
  directory at a time, so the client is opened per call and closed after it:
  a later ``evalsuite ingest`` / ``report`` process can then open the same dir.
- ``clickhouse://host[:8123]/db`` or ``http(s)://host:port/db``: a server over
  HTTP(S) (``clickhouses://`` = HTTPS). ClickHouse's native TCP protocol is not
  spoken. Given as an argument or in ``EVALSUITE_CLICKHOUSE_DSN``; credentials
  come from that variable's DSN or from ``EVALSUITE_CLICKHOUSE_USER`` /
  ``EVALSUITE_CLICKHOUSE_PASSWORD``, and are never printed (:func:`redacted`).

:meth:`ClickHouseSink.write` never loses results: when the store fails for any
reason (server down, bad DSN, disk full, chDB directory owned by another
process, schema mismatch) the rows go to the JSONL spool and the outcome says
why. Ingestion is idempotent twice over: rows have deterministic ids and the
table is a ReplacingMergeTree keyed on them, and ids already in the table are
not inserted again, so ``count()`` is right even without ``FINAL``. A rerun
under the same run id replaces the earlier run's rows (:meth:`ClickHouseSink.insert`).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from evalsuite.results import CaseResult, RunInfo
from evalsuite.sinks import spool
from evalsuite.sinks.base import InsertCounts, WriteOutcome
from evalsuite.sinks.rows import SCHEMA_VERSION, parse_timestamp, to_rows

TABLE = "vision_compression_results"
DSN_ENV, USER_ENV, PASSWORD_ENV = "EVALSUITE_CLICKHOUSE_DSN", "EVALSUITE_CLICKHOUSE_USER", "EVALSUITE_CLICKHOUSE_PASSWORD"
DEFAULT_SPOOL_DIR = Path(".evalsuite") / "spool"
SERVER_SCHEMES = {"clickhouse", "clickhouses", "http", "https"}

# (name, type, comment); rows.to_rows builds dicts with exactly these keys.
COLUMNS: list[tuple[str, str, str]] = [
    ("row_id", "UInt64", "blake2b-64 of (run_id, case_id, sample_id, row_kind); duplicates collapse on it"),
    ("row_kind", "LowCardinality(String)", "'case' (aggregate KPIs, pass/fail) or 'sample' (one sample)"),
    ("schema_version", "UInt16", "layout version of this row"),
    ("tenant_id", "LowCardinality(String)", ""),
    ("run_id", "String", ""),
    ("case_id", "String", ""),
    ("model", "LowCardinality(String)", ""),
    ("method", "LowCardinality(String)", "compression method; 'none' is the uncompressed baseline"),
    ("method_params", "String", "method parameters as a JSON object"),
    ("dataset", "LowCardinality(String)", ""),
    ("doc_type", "LowCardinality(String)", "sample rows: the sample's type; case rows: the one type, 'mixed' or ''"),
    ("sample_id", "String", "'' on case rows"),
    ("kpis", "Map(String, Float64)", "every finite KPI; an absent key means not measured (m['k'] reads 0 then)"),
    ("tokens_before", "Nullable(Float64)", "visual tokens without compression"),
    ("tokens_after", "Nullable(Float64)", "visual tokens after compression"),
    ("ocr_wer", "Nullable(Float64)", "OCR word error rate on the compressed encoding; NULL without OCR"),
    ("clip_score", "Nullable(Float64)",
     "feature_cosine_mean: cosine of encoder features with vs without compression (not an image-text CLIP score)"),
    ("compression_latency_ms_p50", "Nullable(Float64)", ""),
    ("compression_latency_ms_p95", "Nullable(Float64)", ""),
    ("encoder_ms_p50", "Nullable(Float64)", ""),
    ("encoder_ms_p95", "Nullable(Float64)", ""),
    ("passed", "UInt8", "case rows: no breach and no error; sample rows: no error"),
    ("breaches", "String", "JSON list of {kpi, value, limit, op, source}"),
    ("error", "String", "infrastructure error, '' when none"),
    ("labels", "Array(String)", "e.g. 'random-weights'"),
    ("stage_seconds", "Map(String, Float64)", ""),
    ("info", "String", "sample rows: JSON (OCR texts, field hits ...)"),
    ("git_commit", "String", ""),
    ("host", "String", ""),
    ("gpu", "String", ""),
    ("versions", "Map(String, String)", "run versions (torch, timm, transformers, open_clip, OCR engine+models) + case env"),
    ("seed", "Int64", ""),
    ("timestamp", "DateTime64(3, 'UTC')", "run start"),
    ("ingested_at", "DateTime64(3, 'UTC')", "ReplacingMergeTree version: the latest copy of a row wins"),
]
COLUMN_NAMES = [name for name, _, _ in COLUMNS]


def create_table_sql(table: str = TABLE) -> str:
    columns = ",\n".join(
        f"    `{name}` {type_}" + (f" COMMENT {_quote(comment)}" if comment else "") for name, type_, comment in COLUMNS
    )
    # ORDER BY serves "this method over time"; row_id last makes it the dedup key.
    return (
        f"CREATE TABLE IF NOT EXISTS `{table}` (\n{columns},\n"
        "    INDEX run_id_idx run_id TYPE bloom_filter GRANULARITY 4\n)\n"
        "ENGINE = ReplacingMergeTree(ingested_at)\n"
        "PARTITION BY toYYYYMM(timestamp)\n"
        "ORDER BY (tenant_id, method, model, dataset, timestamp, row_id)\n"
        f"COMMENT 'schema_version={SCHEMA_VERSION}'"
    )


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ensure_schema(client: Any, table: str = TABLE) -> None:
    """Create the table if needed (idempotent) and refuse one of another schema version."""
    client.command(create_table_sql(table))
    comment = client.query(
        "SELECT comment FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    found = re.search(r"schema_version=(\d+)", comment[0][0] if comment else "")
    if found and int(found.group(1)) != SCHEMA_VERSION:
        raise RuntimeError(f"table {table} has schema_version={found.group(1)}, this evalsuite writes {SCHEMA_VERSION}")


def redacted(dsn: str) -> str:
    """``dsn`` with its password (and secret-looking query values) replaced by ``***``.

    >>> redacted("clickhouse://bob:s3cret@db:8123/evals?password=x&secure=1")
    'clickhouse://bob:***@db:8123/evals?password=***&secure=1'
    """
    parts = urlsplit(dsn)
    secret_keys = [k for k, _ in parse_qsl(parts.query) if re.search(r"pass|secret|token|key", k, re.I)]
    if parts.password is None and not secret_keys:
        return dsn
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urlencode([(k, "***" if k in secret_keys else v) for k, v in parse_qsl(parts.query)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def resolve_dsn(dsn: str | None = None, chdb_dir: str | os.PathLike | None = None) -> str:
    """``dsn``, else ``$EVALSUITE_CLICKHOUSE_DSN``, else ``chdb://`` on ``chdb_dir``."""
    dsn = dsn or os.environ.get(DSN_ENV)
    if dsn:
        scheme = urlsplit(dsn).scheme
        if scheme != "chdb" and scheme not in SERVER_SCHEMES:
            raise ValueError(f"unsupported ClickHouse DSN scheme {scheme!r} in {redacted(dsn)}")
        return dsn
    if chdb_dir is None:
        raise ValueError(f"no ClickHouse target: pass a DSN or a chDB directory, or set {DSN_ENV}")
    return "chdb://" + Path(chdb_dir).resolve().as_posix()


def _epoch_ms(stamp) -> int:
    """Milliseconds since the epoch of an aware datetime, as ``toUnixTimestamp64Milli`` gives them."""
    return round(stamp.timestamp() * 1000)


class ChdbFolderError(OSError):
    """The chDB folder cannot be opened, for the reason the message gives (read-only, in use)."""


def chdb_folder_problem(folder: Path) -> str | None:
    """Why chDB cannot open ``folder``, told apart: a folder that cannot be made or written (a
    read-only or full disk) or one another process holds (chDB lets one process open a folder at
    a time, and locks its ``status`` file); None when neither is found."""
    import fcntl
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"chDB folder {folder} cannot be written ({exc.strerror or exc}): a read-only or full disk?"
    try:
        with open(folder / "status", "a") as status:
            fcntl.flock(status, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(status, fcntl.LOCK_UN)
    except BlockingIOError:
        return (f"chDB folder {folder} is in use by another process (chDB lets one process open a folder "
                "at a time): wait for it to end, or point --evalsuite-dsn at another folder")
    except OSError as exc:
        return f"chDB folder {folder}: its status file cannot be opened ({exc.strerror or exc})"
    return None


def is_store_error(exc: BaseException) -> bool:
    """Raised by the client or the engine (as opposed to a bug in evalsuite)."""
    return type(exc).__module__.split(".")[0] in ("clickhouse_connect", "chdb", "urllib3") or isinstance(exc, OSError)


class ClickHouseSink:
    """Writes CaseResults to ClickHouse, spooling them when it cannot."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        chdb_dir: str | os.PathLike | None = None,
        spool_dir: str | os.PathLike = DEFAULT_SPOOL_DIR,
        table: str = TABLE,
        connect_timeout: float = 2.0,
        send_receive_timeout: float = 120.0,
    ):
        self.dsn = resolve_dsn(dsn, chdb_dir)
        self.spool_dir = Path(spool_dir)
        self.table = table
        self.connect_timeout = connect_timeout
        self.send_receive_timeout = send_receive_timeout

    @property
    def is_chdb(self) -> bool:
        return self.dsn.startswith("chdb:")

    @property
    def where(self) -> str:
        return redacted(self.dsn) + ("" if self.table == TABLE else f" table {self.table}")

    def write(self, run: RunInfo, results: list[CaseResult]) -> WriteOutcome:
        """Insert the rows of ``results``; on any failure spool them instead.

        Raises only when the spool cannot be written either (the caller still holds the results).
        """
        try:
            counts = self.insert(run, results)
        except Exception as exc:  # whatever went wrong, the results must survive
            path = spool.append(spool.spool_file(self.spool_dir, run.run_id), run, results)
            return WriteOutcome(spool.row_count(results), str(path), spooled=True,
                                reason=f"{self.where} failed: {self.explain(exc)}")
        return WriteOutcome(counts.written, self.where, skipped=counts.skipped, replaced=counts.replaced,
                            superseded=counts.superseded)

    def insert(self, run: RunInfo, results: list[CaseResult]) -> InsertCounts:
        """Insert the rows of ``results``, one run's, so that the table holds each case of a run id
        from the latest run that measured it, and from it alone. Raises on failure.

        A run is told from another with the same id by its start (``run.started_at``, the rows'
        ``timestamp``), case by case: rows of the same run already held are skipped (ingesting twice
        is harmless); a case's rows from an earlier run with this id are deleted first (a rerun
        replaces it: the table never keeps the verdict the terminal no longer shows); and a case that
        a later run already holds is left out (an old spool ingested late does not undo a rerun).
        Per case, not per run id: shards of one run (pytest-split, one run id on several machines)
        start at different times and hold different cases, and must not replace each other.
        """
        rows = {r["row_id"]: r for r in to_rows(run, results)}
        total = len(rows)
        started = _epoch_ms(parse_timestamp(run.started_at))
        cases = sorted({r["case_id"] for r in rows.values()})
        with self.client() as client:
            held = client.query(
                f"SELECT case_id, toUnixTimestamp64Milli(timestamp) AS started, count(), groupArray(row_id) "
                f"FROM `{self.table}` WHERE run_id = {{run:String}} AND has({{cases:Array(String)}}, case_id) "
                f"GROUP BY case_id, started",
                parameters={"run": run.run_id, "cases": cases},
            ).result_rows
            newer = {case for case, other, _, _ in held if other > started}
            older = sorted({case for case, other, _, _ in held if other < started} - newer)
            replaced = sum(n for case, other, n, _ in held if other < started and case in older)
            if older:
                client.command(
                    f"ALTER TABLE `{self.table}` DELETE WHERE run_id = {{run:String}} "
                    f"AND has({{cases:Array(String)}}, case_id) "
                    f"AND toUnixTimestamp64Milli(timestamp) < {{started:Int64}}",
                    parameters={"run": run.run_id, "cases": older, "started": started},
                    settings={"mutations_sync": 2})
            held_ids = {row_id for case, other, _, ids in held if other == started for row_id in ids}
            rows = {k: r for k, r in rows.items() if k not in held_ids and r["case_id"] not in newer}
            if rows:
                client.insert(self.table, [[r[c] for c in COLUMN_NAMES] for r in rows.values()],
                              column_names=COLUMN_NAMES)
        return InsertCounts(len(rows), total - len(rows), replaced, superseded=bool(newer) and not rows)

    def select(self, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run ``sql`` -> (column names, rows)."""
        with self.client() as client:
            result = client.query(sql, parameters=parameters)
            return list(result.column_names), [tuple(r) for r in result.result_rows]

    def select_dicts(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        names, rows = self.select(sql, parameters)
        return [dict(zip(names, row)) for row in rows]

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A connected client with the schema in place, closed on exit (chDB frees its directory)."""
        client = self._connect()
        try:
            ensure_schema(client, self.table)
            yield client
        finally:
            client.close()

    def _connect(self) -> Any:
        import clickhouse_connect

        if self.is_chdb:
            folder = Path(urlsplit(self.dsn).path)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                return clickhouse_connect.get_client(dsn=self.dsn)
            except Exception as exc:
                reason = chdb_folder_problem(folder)
                if reason is None:
                    raise
                raise ChdbFolderError(reason) from exc
        parts = urlsplit(self.dsn)
        interface = {"https": "https", "clickhouses": "https", "http": "http"}.get(parts.scheme)
        return clickhouse_connect.get_client(
            dsn=self.dsn,
            interface=interface,
            username=None if parts.username else os.environ.get(USER_ENV),
            password="" if parts.password else os.environ.get(PASSWORD_ENV, ""),
            connect_timeout=self.connect_timeout,
            send_receive_timeout=self.send_receive_timeout,
            query_retries=1,
            dedicated_pool=True,
        )

    def explain(self, exc: BaseException) -> str:
        """``exc`` as one line without credentials (the DSN redacted, passwords masked)."""
        text = " ".join(f"{type(exc).__name__}: {exc}".split()).replace(self.dsn, self.where)
        password = urlsplit(self.dsn).password
        for secret in (password, password and unquote(password), os.environ.get(PASSWORD_ENV)):
            if secret:
                text = text.replace(secret, "***")
        return text if len(text) <= 400 else text[:400] + " ..."
