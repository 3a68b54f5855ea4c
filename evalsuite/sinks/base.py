"""What every sink returns, and the one method a sink has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from evalsuite.results import CaseResult, RunInfo


@dataclass(frozen=True)
class WriteOutcome:
    """How many rows went where.

    ``rows`` counts table rows (one per case plus one per sample) whether they
    reached the store or the spool; ``skipped`` counts rows the store already
    held. ``where`` and ``reason`` never contain credentials.
    """

    rows: int
    where: str
    spooled: bool = False
    reason: str | None = None
    skipped: int = 0

    def __str__(self) -> str:
        if self.spooled:
            why = f" ({self.reason})" if self.reason else ""
            return f"{self.rows} rows spooled to {self.where}{why}"
        dup = f", {self.skipped} already present" if self.skipped else ""
        return f"{self.rows} rows written to {self.where}{dup}"


class Sink(Protocol):
    def write(self, run: RunInfo, results: list[CaseResult]) -> WriteOutcome: ...
