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
    replaced: int = 0  # rows of an earlier run with the same run id, deleted for these
    superseded: bool = False  # the store holds a later run with this run id: nothing was written

    def __str__(self) -> str:
        if self.spooled:
            why = f" ({self.reason})" if self.reason else ""
            return f"{self.rows} rows spooled to {self.where}{why}"
        if self.superseded:
            return (f"0 rows written to {self.where}: it holds a later run with this run id "
                    f"({self.skipped} rows of this one left out)")
        dup = f", {self.skipped} already present" if self.skipped else ""
        again = f", replacing {self.replaced} rows of an earlier run with this run id" if self.replaced else ""
        return f"{self.rows} rows written to {self.where}{dup}{again}"


@dataclass(frozen=True)
class InsertCounts:
    """What an insert did: rows ``written``, ``skipped`` (held already, or superseded), and
    ``replaced`` (an earlier run's rows with the same run id, deleted)."""

    written: int
    skipped: int = 0
    replaced: int = 0
    superseded: bool = False


class Sink(Protocol):
    def write(self, run: RunInfo, results: list[CaseResult]) -> WriteOutcome: ...
