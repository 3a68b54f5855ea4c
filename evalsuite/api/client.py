"""The client every provider goes through: safe to point at a paid API.

``ApiClient.ask(prompt, png)`` returns an :class:`ApiReply` (answer, usage tokens, latency).
It looks the call up in the :class:`~evalsuite.api.cache.ResponseCache` first (a rerun costs
nothing), charges the run's :class:`Budget` before sending, and retries with exponential
backoff on 429, 5xx, timeouts and connection errors; a 401 raises :class:`ApiAuthError`, any
other failure (a malformed response, a refused image) :class:`ApiError`, both naming the
endpoint and the reason with the credential redacted. ``ask_many`` runs at most
``concurrency`` calls at once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

from .cache import ResponseCache, cache_key, image_hash
from .redact import REDACTOR, ApiAuthError, ApiError, BudgetExceeded, Redactor, install_log_filter

RETRY_STATUS = (429, 500, 502, 503, 504)


@dataclass
class ApiReply:
    answer: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_s: float  # of the call that produced it (0 for a cache hit's own lookup: see ``cached``)
    cached: bool = False


class Backend(Protocol):
    """One provider protocol: sends one prompt with one PNG image, returns an :class:`ApiReply`
    (``cached`` False) or raises the library's exception."""

    endpoint: str
    model: str

    def complete(self, prompt: str, png: bytes, timeout: float) -> ApiReply: ...


class Budget:
    """Requests and tokens a run may spend; shared by every case of the process.

    >>> b = Budget(max_requests=1)
    >>> b.charge_request()
    >>> b.charge_request()
    Traceback (most recent call last):
    ...
    evalsuite.api.redact.BudgetExceeded: API budget spent: 1 of 1 requests made (max_requests); no further call is made
    """

    def __init__(self, max_requests: int | None = None, max_tokens: int | None = None):
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.requests = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def charge_request(self) -> None:
        with self._lock:
            if self.max_requests is not None and self.requests >= self.max_requests:
                raise BudgetExceeded(f"API budget spent: {self.requests} of {self.max_requests} requests made "
                                     "(max_requests); no further call is made")
            if self.max_tokens is not None and self.tokens >= self.max_tokens:
                raise BudgetExceeded(f"API budget spent: {self.tokens} tokens used of {self.max_tokens} "
                                     "(max_tokens); no further call is made")
            self.requests += 1

    def charge_tokens(self, tokens: int) -> None:
        with self._lock:
            self.tokens += int(tokens)


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts and connection failures: worth another try."""
    status = _status(exc)
    if status is not None:
        return status in RETRY_STATUS
    import httpx

    transient: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx.TransportError, TimeoutError,
                                                   ConnectionError)
    try:
        import openai

        transient += (openai.APITimeoutError, openai.APIConnectionError)
    except ImportError:  # pragma: no cover - the openai package is a dependency
        pass
    return isinstance(exc, transient)


class ApiClient:
    def __init__(self, backend: Backend, *, cache: ResponseCache | None = None, budget: Budget | None = None,
                 retries: int = 4, backoff_s: float = 0.5, timeout_s: float = 60.0, concurrency: int = 4,
                 redactor: Redactor = REDACTOR, sleep: Callable[[float], None] = time.sleep):
        self.backend = backend
        self.cache = cache or ResponseCache(None)
        self.budget = budget or Budget()
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.concurrency = max(1, int(concurrency))
        self.redactor = redactor
        self._sleep = sleep
        self.requests_sent = 0  # calls that reached the endpoint, retries included
        install_log_filter()

    def _error(self, exc: BaseException, attempts: int) -> ApiError:
        status = _status(exc)
        kind = ApiAuthError if status == 401 else ApiError
        what = f"HTTP {status}" if status is not None else type(exc).__name__
        return kind(self.redactor.redact(
            f"{self.backend.endpoint} (model {self.backend.model}): {what} after {attempts} attempt(s): {exc}"))

    def ask(self, prompt: str, png: bytes) -> ApiReply:
        key = cache_key(self.backend.endpoint, self.backend.model, prompt, image_hash(png))
        hit = self.cache.get(key)
        if hit is not None:
            return ApiReply(**{**hit, "cached": True})
        attempt = 0
        while True:
            attempt += 1
            self.budget.charge_request()
            self.requests_sent += 1
            try:
                reply = self.backend.complete(prompt, png, self.timeout_s)
            except ApiError:
                raise
            except Exception as exc:  # the libraries' own exceptions, re-raised redacted and unchained
                if attempt <= self.retries and _is_transient(exc):
                    self._sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                raise self._error(exc, attempt) from None
            self.budget.charge_tokens(reply.total_tokens)
            self.cache.put(key, {k: v for k, v in asdict(reply).items() if k != "cached"})
            return reply

    def ask_many(self, items: list[tuple[str, bytes]]) -> list[ApiReply | ApiError]:
        """``ask`` on each (prompt, png), ``concurrency`` at a time, in order; a failed item is its
        :class:`ApiError` (a 401 or a spent budget included: the caller decides what stops)."""

        def one(item):
            try:
                return self.ask(*item)
            except ApiError as exc:
                return exc

        if self.concurrency == 1 or len(items) <= 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, items))
