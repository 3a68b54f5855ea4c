"""Keep credentials out of every message, log record and stored row.

A credential comes from the environment (the matrix names the variable, never the value). Every
text this package emits (exception messages, log records, rows) passes :meth:`Redactor.redact`;
exceptions of the client libraries are re-raised as :class:`ApiError` with the redacted text and
no chained cause, since a library's exception may hold the request (headers included); log
records of every logger are redacted once a client is built (:func:`install_log_filter`).
"""

from __future__ import annotations

import base64
import logging
import threading

MASK = "***"


class Redactor:
    """Replaces each registered secret (and its base64 form, as in a Basic header) with ``***``.

    >>> r = Redactor(["sk-abc123"])
    >>> r.redact("401: bad key sk-abc123")
    '401: bad key ***'
    """

    def __init__(self, secrets=()):
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < 4:  # too short to hide without mangling ordinary text
            return
        with self._lock:
            self._secrets.add(secret)
            self._secrets.add(base64.b64encode(secret.encode()).decode())

    def redact(self, text: object) -> str:
        text = str(text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


REDACTOR = Redactor()  # process-wide: every secret any client read is hidden from every log line


_installed = False


def install_log_filter() -> None:
    """Redact every log record of the process from now on, whichever logger makes it (the HTTP
    libraries log from child loggers such as ``openai._base_client``, which a filter on a parent
    logger never sees): the record factory itself is wrapped, once per process."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args, **kwargs):
        record = make_record(*args, **kwargs)
        if REDACTOR._secrets:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record: leave it to logging's own error handling
                return record
            redacted = REDACTOR.redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return record

    logging.setLogRecordFactory(redacting_record)
    _installed = True


class ApiError(Exception):
    """A failed API call; the message names the endpoint and the reason, with credentials redacted."""


class ApiAuthError(ApiError):
    """The endpoint refused the credential (HTTP 401): every call of the case would fail the same way."""


class BudgetExceeded(ApiError):
    """The run's request or token budget is spent: no further call is made."""
