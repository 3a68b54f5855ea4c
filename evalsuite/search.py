"""The operating point of a method: its strongest setting that passes every threshold on a dataset.

Each method has one main knob (:data:`KNOBS`): ToMe's merge factor, the keep fraction of the
dropping methods and of downscaling, A-ViT's sparsity. :func:`search` bisects it, assuming that a
stronger setting never passes where a weaker one failed: the weakest end of the range is probed
first (when it fails, the range holds no passing setting), then the strongest (when it passes, that
is the answer), then the middle of the bracket between the strongest passing and the weakest failing
setting, ``steps`` times. Every probe is a case the :class:`~evalsuite.engine.Engine` evaluates in
this process, so the model, the samples and the uncompressed reference pass are loaded once for
every probe of every method, and OCR reads come from the on-disk cache after the first.

``evalsuite search`` (:mod:`evalsuite.cli`) prints each method's safe setting, writes every probe
to the store as one run, and the operating points to a JSON file the PoC report draws and names
(:func:`evalsuite.report.poc.load_operating_points`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .matrix import CaseSpec, DatasetSpec, ModelSpec
from .results import CaseResult
from .thresholds import Thresholds

DEFAULT_OUT = Path("reports") / "operating_points.json"
DEFAULT_STEPS = 5


@dataclass(frozen=True)
class Knob:
    """A method's main parameter: its name, which way is stronger, the range searched by default."""

    param: str
    stronger_is_higher: bool
    lo: float
    hi: float
    digits: int = 3  # probes are rounded to this many decimals (case ids, repeatable runs)

    def strength(self, value: float) -> float:
        return value if self.stronger_is_higher else -value

    def stronger(self, a: float, b: float) -> float:
        return max(a, b, key=self.strength)


KNOBS: dict[str, Knob] = {
    "tome": Knob("merge_factor", True, 0.0, 0.9),
    "v2drop": Knob("keep", False, 0.1, 1.0),
    "random": Knob("keep", False, 0.1, 1.0),
    "downscale": Knob("keep", False, 0.1, 1.0),
    "avit": Knob("sparsity", True, 0.0, 0.9),
}


@dataclass
class Probe:
    """One evaluated setting."""

    value: float
    passed: bool
    reduction_pct: float | None
    feature_cosine: float | None
    ocr_wer_drift: float | None
    breaches: list[str]
    n: int  # samples measured


@dataclass
class OperatingPoint:
    """The outcome of one method's search; ``value`` None: no setting in the range passes."""

    model: str
    dataset: str
    method: str
    param: str
    lo: float
    hi: float
    value: float | None
    fails_at: float | None  # the weakest failing setting probed (next stronger than ``value``); None: none failed
    probes: list[Probe] = field(default_factory=list)
    reduction_interval: tuple[float, float] | None = None  # 95% bootstrap over samples, at ``value``
    cosine_interval: tuple[float, float] | None = None

    @property
    def found(self) -> bool:
        return self.value is not None

    def probe(self, value: float | None) -> Probe | None:
        return next((p for p in self.probes if p.value == value), None)

    @property
    def label(self) -> str:
        return f"{self.method}({self.param}={self.value:g})" if self.found else self.method

    def describe(self) -> str:
        """One line for the terminal."""
        where = f"{self.model} / {self.dataset}"
        if not self.found:
            first = self.probes[0]
            return (f"{self.method} {self.param}: no passing setting in [{self.lo:g}, {self.hi:g}] on {where}; "
                    f"the weakest, {first.value:g}, fails: {'; '.join(first.breaches)}")
        safe = self.probe(self.value)
        saving = _pct(safe.reduction_pct) + (f" [{self.reduction_interval[0]:.1f}, {self.reduction_interval[1]:.1f}]"
                                              if self.reduction_interval else "")
        cosine = "-" if safe.feature_cosine is None else f"{safe.feature_cosine:.4f}" + (
            f" [{self.cosine_interval[0]:.4f}, {self.cosine_interval[1]:.4f}]" if self.cosine_interval else "")
        line = (f"{self.method} {self.param}={self.value:g}: saves {saving} of tokens, feature cosine {cosine}, "
                f"n={safe.n} on {where}")
        if self.fails_at is None:
            return line + f"; the strongest setting searched passes (widen the range beyond {self.hi:g})"
        return line + f"; {self.param}={self.fails_at:g} fails: {'; '.join(self.probe(self.fails_at).breaches)}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "found": self.found, "label": self.label}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "OperatingPoint":
        raw = {k: v for k, v in raw.items() if k not in ("found", "label")}
        raw["probes"] = [Probe(**p) for p in raw.get("probes", [])]
        for key in ("reduction_interval", "cosine_interval"):
            raw[key] = tuple(raw[key]) if raw.get(key) else None
        return cls(**raw)


def case_spec(model: ModelSpec, dataset: DatasetSpec, method: str, params: dict[str, Any],
              settings: dict[str, int] | None = None, source: str = "evalsuite search") -> CaseSpec:
    """The case of one setting, built as :func:`evalsuite.matrix.expand` builds matrix cases."""
    from .methods import spec_of

    return CaseSpec(model, method, dict(params), spec_of(method, params).id_part, dataset, dict(settings or {}), source)


def check(thresholds: Thresholds, result: CaseResult) -> CaseResult:
    """Set ``result.breaches`` as the gate does (:meth:`EvalSession.evaluate`)."""
    from .metrics.kpis import not_applicable

    result.breaches = thresholds.check(result.kpis, result.model, result.method, result.dataset, result.case_id,
                                       not_applicable(result.kpis), result.intervals)
    return result


def search(evaluate: Callable[[CaseSpec], CaseResult], thresholds: Thresholds, model: ModelSpec,
           dataset: DatasetSpec, method: str, lo: float | None = None, hi: float | None = None,
           steps: int = DEFAULT_STEPS, settings: dict[str, int] | None = None,
           on_result: Callable[[CaseResult], None] | None = None) -> OperatingPoint:
    """Bisect ``method``'s knob over [``lo``, ``hi``] (its default range where None).

    ``evaluate`` runs one case (:meth:`Engine.evaluate`); ``on_result`` sees every probe's result
    with its breaches (to store it). ``steps`` bisection steps follow the two ends; a probe that
    rounds to a setting already probed ends the search. An end the method refuses (``keep = 0``)
    is a ValueError before anything runs; a probe that raises fails, with its error.
    """
    if method not in KNOBS:
        raise ValueError(f"search: method {method!r} has no knob to search; one of {', '.join(KNOBS)}")
    knob = KNOBS[method]
    lo = knob.lo if lo is None else lo
    hi = knob.hi if hi is None else hi
    weak, strong = sorted((round(lo, knob.digits), round(hi, knob.digits)), key=knob.strength)
    point = OperatingPoint(model.id, dataset.id, method, knob.param, min(lo, hi), max(lo, hi), None, None)
    samples: dict[float, CaseResult] = {}

    from .data.datasets import DatasetUnavailable

    specs = {value: case_spec(model, dataset, method, {knob.param: value}, settings) for value in (weak, strong)}

    def probe(value: float) -> bool:
        spec = specs.get(value) or case_spec(model, dataset, method, {knob.param: value}, settings)
        try:
            result = check(thresholds, evaluate(spec))
        except DatasetUnavailable:
            raise
        except Exception as exc:  # a setting the model cannot run fails like an errored case of the gate
            result = CaseResult(spec.id, model.id, method, dict(spec.params), dataset.id,
                                error=f"{type(exc).__name__}: {exc}")
        if on_result is not None:
            on_result(result)
        samples[value] = result
        point.probes.append(_probe(value, result))
        return point.probes[-1].passed

    if not probe(weak):
        point.fails_at = weak
        return point
    passing, failing = weak, None
    if strong != weak:
        if probe(strong):
            passing = strong
        else:
            failing = strong
            for _ in range(steps):
                middle = round((passing + failing) / 2, knob.digits)
                if middle in (passing, failing):
                    break
                if probe(middle):
                    passing = middle
                else:
                    failing = middle
    point.value, point.fails_at = passing, failing
    point.reduction_interval, point.cosine_interval = _intervals(samples[passing])
    return point


def _probe(value: float, result: CaseResult) -> Probe:
    kpis = result.kpis
    finite = lambda k: kpis[k] if k in kpis and math.isfinite(kpis[k]) else None  # noqa: E731
    breaches = [str(b) for b in result.breaches] + ([f"error: {result.error}"] if result.error else [])
    return Probe(value, result.passed, finite("tokens_reduction_pct"), finite("feature_cosine_mean"),
                 finite("ocr_wer_drift"), breaches, sum(1 for s in result.samples if s.error is None))


def _intervals(result: CaseResult) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """95% bootstrap intervals over the samples of the token saving (%) and of the feature cosine."""
    from .report.compare import bootstrap_interval

    ok = [s.kpis for s in result.samples if s.error is None]
    saving = np.array([100.0 * (1 - k["tokens_after"] / k["tokens_before"]) for k in ok
                       if k.get("tokens_before") and "tokens_after" in k])
    cosine = np.array([k["feature_cosine"] for k in ok if "feature_cosine" in k])
    return bootstrap_interval(saving), bootstrap_interval(cosine)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def write_points(path: str | Path, points: list[OperatingPoint], run_id: str) -> Path:
    """``{"run_id": ..., "points": [...]}``: what the PoC report reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id, "points": [p.to_json() for p in points]}, indent=2) + "\n",
                    encoding="utf-8")
    return path


def read_points(path: str | Path) -> list[OperatingPoint]:
    """The operating points of a :func:`write_points` file; a malformed file is a ValueError naming it."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return [OperatingPoint.from_json(p) for p in raw["points"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an operating points file ({exc})") from None
