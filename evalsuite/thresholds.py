"""``thresholds.toml`` -> check objects that explain every breach.

File layout (later tables override earlier ones, most specific last)::

    [defaults]                        # every candidate method
    tokens_reduction_pct = 15         # direction comes from the KPI registry:
    compression_latency_ms_p95 = 40   #   higher-is-better -> floor, else ceiling

    [reference]                       # the `none` method: its own rules
    feature_cosine_mean = 0.9999

    [model.dinov2_s14]                # per model id
    [method.tome]                     # per method name
    [dataset.sroie]                   # per dataset
    [case."dinov2_s14-tome_f0.5-sroie"]   # one case

    [timing_noise]                    # when a case's timing is flagged noisy (not a verdict)
    p95_over_p50 = 2.0                #   a latency p95 more than this factor above its p50
    speedup_margin = 0.25             #   a speedup more than 25% above its ideal (FLOP model)
    retime = false                    #   time a noisy case once more (--evalsuite-retime-noisy)

A value may also be a table ``{ min = .. }`` / ``{ max = .. }`` to state the
bound explicitly; it must agree with the KPI's direction.
``gate = "bound"`` in a table judges the limits in force with it (it cascades
like a limit) on the 95% bootstrap interval's bound instead of the mean: the
low end for a floor, the high end for a ceiling (``gate = "mean"``, the
default, restores it). ``[intervals]`` sets ``resamples`` and ``min_samples``.
A limit set to ``false`` removes an inherited limit.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .metrics.kpis import KPIS
from .registry import UnknownNameError
from .results import Breach

SCOPES = ("model", "method", "dataset", "case")


class ThresholdsError(ValueError):
    """A malformed thresholds file; the message names the file and key."""


GATES = ("mean", "bound")


@dataclass(frozen=True)
class Limit:
    kpi: str
    value: float
    op: str  # ">=" or "<="
    source: str  # e.g. "method.tome"
    gate: str = "mean"  # "bound": the interval's bound on the wrong side must clear the limit

    def check(self, measured: float | None, interval: tuple[float, float] | None = None) -> Breach | None:
        """``measured`` against the limit; with ``gate = "bound"`` and an ``interval``, the
        interval's low end for a floor (its high end for a ceiling) is what must clear it."""
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return Breach(self.kpi, None, self.value, self.op, self.source)
        judged, reason = measured, ""
        if self.gate == "bound" and interval is not None:
            judged = interval[0] if self.op == ">=" else interval[1]
            reason = (f"gate = bound: the 95% interval [{interval[0]:.4g}, {interval[1]:.4g}] must clear it "
                      f"(mean {measured:.4g})")
        ok = judged >= self.value if self.op == ">=" else judged <= self.value
        return None if ok else Breach(self.kpi, judged, self.value, self.op, self.source, reason)


@dataclass(frozen=True)
class TimingNoise:
    """When a case's timing is too noisy to trust: a flag on the result, not a verdict.

    >>> noise = TimingNoise(p95_over_p50=2.0, speedup_margin=0.25)
    >>> noise.reasons({"encoder_ms_p50": 10.0, "encoder_ms_p95": 35.0, "throughput_speedup": 5.98,
    ...                "ideal_speedup": 1.2})
    ['encoder_ms_p95 3.5x its p50 (> 2)', 'throughput_speedup 5.98 above its ideal 1.2 (by > 25%)']
    >>> noise.reasons({"encoder_ms_p50": 10.0, "encoder_ms_p95": 12.0, "throughput_speedup": 1.1,
    ...                "ideal_speedup": 1.2})
    []
    """

    p95_over_p50: float = 2.0
    speedup_margin: float = 0.25
    retime: bool = False
    LATENCIES = ("compression_latency_ms", "encoder_ms")

    def reasons(self, kpis: dict[str, float]) -> list[str]:
        """Why ``kpis`` look noisy; empty when they do not (or were not measured)."""
        found = []
        for name in self.LATENCIES:
            p50, p95 = kpis.get(f"{name}_p50"), kpis.get(f"{name}_p95")
            if _finite(p50) and _finite(p95) and p50 > 0 and p95 > self.p95_over_p50 * p50:
                found.append(f"{name}_p95 {p95 / p50:.1f}x its p50 (> {self.p95_over_p50:g})")
        speedup, ideal = kpis.get("throughput_speedup"), kpis.get("ideal_speedup")
        if _finite(speedup) and _finite(ideal) and speedup > ideal * (1 + self.speedup_margin):
            found.append(f"throughput_speedup {speedup:.3g} above its ideal {ideal:.3g} "
                         f"(by > {self.speedup_margin:.0%})")
        return found


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class Thresholds:
    path: Path
    tables: dict[str, dict[str, Limit | None]]  # source name -> kpi -> limit (None = removed)
    timing_noise: TimingNoise = TimingNoise()
    intervals: IntervalSettings = field(default_factory=lambda: IntervalSettings())
    gates: dict[str, str] = field(default_factory=dict)  # source name -> "mean" | "bound"

    @classmethod
    def load(cls, path: str | Path) -> "Thresholds":
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ThresholdsError(f"{path}: thresholds file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ThresholdsError(f"{path}: malformed TOML: {exc}") from None
        tables: dict[str, dict[str, Limit | None]] = {}
        gates: dict[str, str] = {}
        noise, interval_settings = TimingNoise(), IntervalSettings()
        for key, value in raw.items():
            if key == "timing_noise":
                noise = _parse_noise(path, value)
            elif key == "intervals":
                interval_settings = _parse_intervals(path, value)
            elif key in ("defaults", "reference"):
                tables[key] = _parse_table(path, key, value, gates)
            elif key in SCOPES:
                if not isinstance(value, dict):
                    raise ThresholdsError(f"{path}: [{key}] must hold tables like [{key}.NAME]")
                for name, table in value.items():
                    tables[f"{key}.{name}"] = _parse_table(path, f"{key}.{name}", table, gates)
            else:
                raise ThresholdsError(f"{path}: unknown table [{key}]; expected defaults, reference, "
                                      f"{', '.join(SCOPES)}, timing_noise, intervals")
        return cls(path, tables, noise, interval_settings, gates)

    def limits_for(self, model: str, method: str, dataset: str, case_id: str) -> list[Limit]:
        """The limits in force for one case, with the table each came from. A table's ``gate``
        (``"mean"`` or ``"bound"``) cascades like a limit and applies to every limit in force."""
        base = "reference" if method == "none" else "defaults"
        order = [base, f"model.{model}", f"method.{method}", f"dataset.{dataset}", f"case.{case_id}"]
        merged: dict[str, Limit | None] = {}
        gate = "mean"
        for source in order:
            merged.update(self.tables.get(source, {}))
            gate = self.gates.get(source, gate)
        return [replace(limit, gate=gate) for limit in merged.values() if limit is not None]

    def check(self, kpis: dict[str, float], model: str, method: str, dataset: str, case_id: str,
              not_applicable: set[str] = frozenset(),
              intervals: dict[str, list[float]] | None = None) -> list[Breach]:
        """Every breached limit; KPIs in ``not_applicable`` (e.g. OCR on photos) are not checked;
        ``intervals`` (KPI -> [low, high]) are used where the gate is ``"bound"``."""
        breaches = []
        intervals = intervals or {}
        for limit in self.limits_for(model, method, dataset, case_id):
            if limit.kpi in not_applicable:
                continue
            interval = intervals.get(limit.kpi)
            breach = limit.check(kpis.get(limit.kpi), tuple(interval) if interval else None)
            if breach is not None:
                breaches.append(breach)
        return breaches

    def validate_names(self, models: set[str], methods: set[str], datasets: set[str]) -> None:
        """Refuse per-scope tables naming no known model, method or dataset (typos)."""
        known = {"model": models, "method": methods, "dataset": datasets}
        for source in self.tables:
            scope, _, name = source.partition(".")
            if scope in known and name not in known[scope]:
                hint = UnknownNameError(scope, name, sorted(known[scope])).args[0]
                raise ThresholdsError(f"{self.path}: table [{source}]: {hint}")


def _parse_noise(path: Path, table: Any) -> TimingNoise:
    if not isinstance(table, dict):
        raise ThresholdsError(f"{path}: [timing_noise] must be a table")
    values = {}
    for key, value in table.items():
        where = f"{path}: [timing_noise] {key}"
        if key == "retime":
            if not isinstance(value, bool):
                raise ThresholdsError(f"{where}: expected true or false, got {value!r}")
        elif key in ("p95_over_p50", "speedup_margin"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ThresholdsError(f"{where}: expected a number, got {value!r}")
            if key == "p95_over_p50" and value < 1 or key == "speedup_margin" and value < 0:
                raise ThresholdsError(f"{where}: {value!r} is out of range "
                                      f"({'>= 1' if key == 'p95_over_p50' else '>= 0'})")
            value = float(value)
        else:
            hint = UnknownNameError("timing_noise key", key, ["p95_over_p50", "speedup_margin", "retime"]).args[0]
            raise ThresholdsError(f"{where}: {hint}")
        values[key] = value
    return TimingNoise(**values)


@dataclass(frozen=True)
class IntervalSettings:
    """``[intervals]``: bootstrap draws per case, and the fewest scored samples a case should have
    (below it the case is labelled ``few-samples``: its intervals are wide, its verdict partly luck)."""

    resamples: int = 1000
    min_samples: int = 10


def _parse_intervals(path: Path, table: Any) -> IntervalSettings:
    if not isinstance(table, dict):
        raise ThresholdsError(f"{path}: [intervals] must be a table")
    values = {}
    for key, value in table.items():
        where = f"{path}: [intervals] {key}"
        if key not in ("resamples", "min_samples"):
            hint = UnknownNameError("intervals key", key, ["resamples", "min_samples"]).args[0]
            raise ThresholdsError(f"{where}: {hint}")
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "resamples" else 0):
            raise ThresholdsError(f"{where}: expected a {'positive' if key == 'resamples' else 'non-negative'} "
                                  f"integer, got {value!r}")
        values[key] = value
    return IntervalSettings(**values)


def _parse_table(path: Path, source: str, table: Any, gates: dict[str, str] | None = None) -> dict[str, Limit | None]:
    if not isinstance(table, dict):
        raise ThresholdsError(f"{path}: [{source}] must be a table of KPI limits")
    limits: dict[str, Limit | None] = {}
    for kpi_name, value in table.items():
        where = f"{path}: [{source}] {kpi_name}"
        if kpi_name == "gate":  # how this table's (and more specific tables') limits are judged
            if value not in GATES:
                raise ThresholdsError(f"{where}: expected one of {', '.join(repr(g) for g in GATES)}, got {value!r}")
            if gates is not None:
                gates[source] = value
            continue
        try:
            kpi = KPIS.get(kpi_name)
        except UnknownNameError as exc:
            raise ThresholdsError(f"{where}: {exc}") from None
        if kpi.higher_is_better is None:
            raise ThresholdsError(f"{where}: KPI is informational and cannot have a limit")
        if value is False:
            limits[kpi_name] = None
            continue
        if isinstance(value, dict):
            if set(value) not in ({"min"}, {"max"}):
                raise ThresholdsError(f"{where}: use a number, {{ min = N }} or {{ max = N }}")
            (bound, value), = value.items()
            if (bound == "min") != kpi.higher_is_better:
                raise ThresholdsError(
                    f"{where}: {bound} contradicts the KPI's direction "
                    f"({'higher' if kpi.higher_is_better else 'lower'} is better)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ThresholdsError(f"{where}: limit must be a number, got {value!r}")
        limits[kpi_name] = Limit(kpi_name, float(value), kpi.op, source)
    return limits
