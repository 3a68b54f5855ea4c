"""Allure results for evaluation cases: what a person opens when a gate fails.

Active only when allure-pytest is (``pytest --alluredir DIR``). Two halves:

* :func:`annotate`, on the worker inside the test body, turns one
  :class:`~evalsuite.results.CaseResult` into the case's Allure page: suites
  model > method > dataset, one step per KPI (failed where the KPI breached
  its limit, titled with value, limit and the thresholds table it came from),
  and, for the case's worst samples, the original image, the token-plan
  overlay, the reconstruction and the sample's metrics;
* :func:`write_environment`, on the controller at the end of the session,
  writes the run's ``environment.properties`` and ``categories.json`` (KPI
  breach / infrastructure error / missing dataset) into the results folder.

Build the HTML report with ``allure generate DIR -o allure-report``.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

import allure
import pytest
from PIL import Image

from ..data.sample import Sample, SampleError
from ..metrics.kpis import KPIS, sample_counts
from ..ocr.reconstruct import overlay, reconstruct
from ..plan import TokenPlan
from ..results import Breach, CaseResult, RunInfo, SampleRecord
from ..thresholds import Limit

MAX_SIDE = 800  # px, long side of attached images: enough to read a receipt, small enough to keep results light

# Allure applies the first category whose statuses and message match (Java regex, whole message).
# pytest's message is "evalsuite.session.KPIBreachError: KPI breach in CASE (N):\n  - ..." or
# "Skipped: dataset 'sroie' unavailable: ...".
CATEGORIES = [
    {"name": "KPI breach", "matchedStatuses": ["failed"], "messageRegex": r"(?s).*KPI breach in .*"},
    {"name": "Infrastructure error", "matchedStatuses": ["broken", "failed"]},
    {"name": "Missing dataset", "matchedStatuses": ["skipped"], "messageRegex": r"(?s).*dataset '.*' unavailable.*"},
]


def enabled(config: pytest.Config) -> bool:
    """True when allure-pytest writes results in this run (``--alluredir`` given)."""
    return bool(getattr(config.option, "allure_report_dir", None))


# -- worker: one case's page ------------------------------------------------------------

def annotate(result: CaseResult, limits: list[Limit], artifacts: list[tuple[Sample, TokenPlan]],
             worst: int = 3) -> None:
    """Describe ``result`` on the running test's Allure page.

    ``limits`` are the limits in force for the case (``Thresholds.limits_for``),
    ``result.breaches`` the ones it missed; ``artifacts`` pairs every evaluated
    sample with its token plan. Images are attached for the ``worst`` samples.
    """
    _labels(result)
    limit_of = {limit.kpi: limit for limit in limits}
    n = sample_counts(result.samples).scored
    breach_of = {breach.kpi: breach for breach in result.breaches}
    for kpi, value in result.kpis.items():
        _closed_step(kpi_title(kpi, value, limit_of.get(kpi), result.intervals.get(kpi), n),
                     _breach_error(breach_of.get(kpi)))
    for breach in result.breaches:  # a limited KPI the case did not produce at all
        if breach.kpi not in result.kpis:
            _closed_step(kpi_title(breach.kpi, None, limit_of.get(breach.kpi)), _breach_error(breach))
    for limit in limits if result.error is None else []:  # e.g. OCR KPIs under --evalsuite-no-ocr
        if limit.kpi not in result.kpis and limit.kpi not in breach_of:
            _closed_step(f"{limit.kpi} not measured ({_limit_text(limit)}): not checked",
                         pytest.skip.Exception("not measured in this run"))

    plans = {sample.sample_id: (sample, plan) for sample, plan in artifacts}
    for record in worst_samples(result.samples, worst):
        if record.sample_id in plans:
            _attach_sample(record, *plans[record.sample_id], method=(result.method, result.params))


def kpi_title(kpi: str, value: float | None, limit: Limit | None, interval: list[float] | None = None,
              n: int | None = None) -> str:
    """``tokens_reduction_pct = 46.88 (limit >= 15 from [defaults])``, with the 95% interval and
    the number of samples where the KPI has one.

    >>> kpi_title("emd", 0.0123456, None)
    'emd = 0.01235 (no limit)'
    >>> kpi_title("tokens_reduction_pct", 46.875, Limit("tokens_reduction_pct", 15.0, ">=", "defaults"))
    'tokens_reduction_pct = 46.88 (limit >= 15 from [defaults])'
    >>> kpi_title("feature_cosine_mean", 0.97, None, [0.955, 0.981], 14)
    'feature_cosine_mean = 0.97, 95% interval 0.955-0.981, n = 14 (no limit)'
    """
    spread = f", 95% interval {_number(interval[0])}-{_number(interval[1])}, n = {n}" if interval else ""
    return f"{kpi} = {_number(value)}{spread} ({_limit_text(limit) if limit else 'no limit'})"


def worst_samples(samples: Iterable[SampleRecord], n: int) -> list[SampleRecord]:
    """The ``n`` samples that suffered most: highest ``ocr_wer_drift`` where the case has
    OCR drift, else lowest ``feature_cosine``. Samples that errored are left out.

    >>> recs = [SampleRecord(f"s{i}", "photo", {"feature_cosine": c}) for i, c in enumerate([.9, .5, .7])]
    >>> [r.sample_id for r in worst_samples(recs, 2)]
    ['s1', 's2']
    """
    usable = [s for s in samples if s.error is None]
    drift_key, cosine_key = _sample_key("ocr_wer_drift"), _sample_key("feature_cosine_mean")
    if any(_finite(s.kpis.get(drift_key)) is not None for s in usable):
        def badness(s: SampleRecord) -> float:
            drift = _finite(s.kpis.get(drift_key))
            return -math.inf if drift is None else drift
    else:
        def badness(s: SampleRecord) -> float:
            cosine = _finite(s.kpis.get(cosine_key))
            return -math.inf if cosine is None else -cosine
    return sorted(usable, key=badness, reverse=True)[:max(n, 0)]


def _sample_key(kpi: str) -> str:
    """The per-sample value a case KPI is aggregated from (its declaration in evalsuite.metrics.kpis)."""
    return KPIS.get(kpi).sample_key or kpi


def _labels(result: CaseResult) -> None:
    dynamic = allure.dynamic
    dynamic.title(result.case_id)
    dynamic.parent_suite(result.model)
    dynamic.suite(result.method)
    dynamic.sub_suite(result.dataset)
    for name in ("model", "method", "dataset"):
        dynamic.label(name, getattr(result, name))
    for tag in result.labels:
        dynamic.tag(tag)
    dynamic.parameter("case", result.case_id)  # instead of the CaseSpec's long repr
    dynamic.parameter("model", result.model)
    dynamic.parameter("dataset", result.dataset)
    for name, value in result.params.items():
        dynamic.parameter(name, value)
    dynamic.description_html(_description(result))


def _description(result: CaseResult) -> str:
    """HTML: verdict, environment, time per stage (Allure's markdown tables render unstyled)."""
    params = ", ".join(f"{k}={v}" for k, v in result.params.items())
    parts = [f"<p><b>{_h(result.model)}</b> &times; <b>{_h(result.method)}</b>"
             f"{_h(f'({params})') if params else ''} &times; <b>{_h(result.dataset)}</b></p>"]
    if result.error:
        parts.append(f"<p><b>Infrastructure error:</b> <code>{_h(result.error)}</code></p>")
    elif result.breaches:
        items = "".join(f"<li><code>{_h(str(b))}</code></li>" for b in result.breaches)
        parts.append(f"<p><b>KPI breach ({len(result.breaches)}):</b></p><ul>{items}</ul>")
    else:
        parts.append("<p><b>All KPI limits met.</b></p>")
    if "random-weights" in result.labels:
        parts.append("<p><i>random-weights: figures from randomly initialised weights measure speed only.</i></p>")
    failed = [s for s in result.samples if s.error]
    if failed:
        items = "".join(f"<li>{_h(s.sample_id)}: {_h(s.error or '')}</li>" for s in failed)
        parts.append(f"<p><b>Samples not evaluated ({len(failed)}):</b></p><ul>{items}</ul>")
    env = dict(sorted(result.env.items()))
    if not any(key.startswith("ocr_") for key in env):
        env["ocr_engine"] = "off (no OCR KPIs)"
    parts.append(_table("environment", env))
    if result.stage_seconds:
        parts.append(_table("stage", {k: f"{v:.2f} s" for k, v in result.stage_seconds.items()}))
    return "\n".join(parts)


def _table(header: str, rows: dict[str, str]) -> str:
    cell = "padding:1px 12px 1px 0;text-align:left;vertical-align:top"
    body = "".join(f'<tr><td style="{cell}">{_h(k)}</td><td style="{cell}"><code>{_h(str(v))}</code></td></tr>'
                   for k, v in rows.items())
    return f'<table style="margin:6px 0"><tr><th style="{cell}" colspan="2">{_h(header)}</th></tr>{body}</table>'


def _attach_sample(record: SampleRecord, sample: Sample, plan: TokenPlan, method: tuple | None = None) -> None:
    try:
        image = sample.load()
    except SampleError:
        return  # the engine recorded why; nothing to show
    keys = (_sample_key("ocr_wer_drift"), _sample_key("feature_cosine_mean"), _sample_key("tokens_after"))
    shown = {k: v for k, v in record.kpis.items() if k in keys}
    with allure.step(f"sample {record.sample_id} ({record.doc_type}): "
                     + ", ".join(f"{k} = {_number(v)}" for k, v in shown.items())):
        small = _fit(image)
        allure.attach(_png(small), "original", allure.attachment_type.PNG)
        sent = _sent_image(image, method)
        if sent is not None:  # what a hosted model is sent: smaller than the original (evalsuite.image_side)
            allure.attach(_png(_fit(sent)), f"image sent ({sent.width}x{sent.height})", allure.attachment_type.PNG)
        if plan.is_identity:
            allure.attach("The plan keeps every patch: overlay and reconstruction equal the original.",
                          "token plan", allure.attachment_type.TEXT)
        else:
            # drawn at the attached size so group outlines stay one pixel wide; the reconstruction is
            # made at full size (what the OCR read), then shrunk
            allure.attach(_png(overlay(small, plan)), "token plan overlay", allure.attachment_type.PNG)
            allure.attach(_png(_fit(reconstruct(image, plan))), "reconstruction", allure.attachment_type.PNG)
        metrics = {"sample_id": record.sample_id, "doc_type": record.doc_type, "image_size": list(image.size),
                   "plan": {"grid": list(plan.grid), "tokens": plan.num_tokens, "input_scale": plan.input_scale},
                   "kpis": record.kpis, "info": record.info}
        allure.attach(json.dumps(_json_safe(metrics), indent=2), "metrics", allure.attachment_type.JSON)


def _sent_image(image: Image.Image, method: tuple | None) -> Image.Image | None:
    """The image the case's method sends, where it acts on the image (``crop``, ``slim``, ``pack``,
    ``downscale``) and the guard did not send the original; else None."""
    if method is None or method[0] not in ("crop", "slim", "pack", "downscale"):
        return None
    from ..image_side import send

    name, params = method
    sent = send(name, image, target=str(params.get("target", "qwen2_vl")), cell=int(params.get("cell", 28)),
                keep=float(params.get("keep", 1.0)))
    return None if sent.image is image else sent.image


# -- controller: run-wide files ---------------------------------------------------------

def write_environment(alluredir: Path, run: RunInfo, results: list[CaseResult]) -> None:
    """``environment.properties`` (the report's Environment widget) and ``categories.json``."""
    alluredir = Path(alluredir)
    alluredir.mkdir(parents=True, exist_ok=True)
    props = {
        "run_id": run.run_id, "started_at": run.started_at, "git_commit": run.git_commit, "host": run.host,
        "gpu": run.gpu, "tenant_id": run.tenant_id, "seed": str(run.seed),
        **{f"version.{name}": version for name, version in sorted(run.versions.items())},
    }
    for key in ("device", "dtype"):
        props[key] = _joined(r.env.get(key) for r in results)
    ocr_keys = sorted({key for r in results for key in r.env if key.startswith("ocr_")})
    props.update({key: _joined(r.env.get(key) for r in results) for key in ocr_keys})
    props.setdefault("ocr_engine", "off (no OCR KPIs)")
    text = "".join(f"{_escape(key, True)} = {_escape(value)}\n" for key, value in props.items())
    (alluredir / "environment.properties").write_text(text, encoding="utf-8")
    (alluredir / "categories.json").write_text(json.dumps(CATEGORIES, indent=2), encoding="utf-8")


# -- helpers ----------------------------------------------------------------------------

def _closed_step(title: str, outcome: BaseException | None) -> None:
    """An empty step whose status comes from ``outcome`` as allure-pytest reads exceptions:
    None passed, AssertionError failed, pytest's Skipped skipped. No traceback: the title
    and message say everything."""
    step = allure.step(title)
    step.__enter__()
    step.__exit__(type(outcome) if outcome else None, outcome, None)


def _breach_error(breach: Breach | None) -> AssertionError | None:
    return None if breach is None else AssertionError(str(breach))


def _limit_text(limit: Limit) -> str:
    return f"limit {limit.op} {limit.value:g} from [{limit.source}]"


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _number(value: float | None) -> str:
    """4 significant digits, but no exponent for big numbers of ms."""
    if value is None:
        return "missing"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def _fit(image: Image.Image) -> Image.Image:
    small = image.convert("RGB")
    if max(small.size) > MAX_SIDE:
        small = small.copy()
        small.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return small


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None so the attachment is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value if isinstance(value, (str, int, bool, type(None))) else str(value)


def _joined(values: Iterable[str | None]) -> str:
    """The distinct values over all cases, comma-separated ('-' if none)."""
    distinct = sorted({v for v in values if v})
    return ", ".join(distinct) if distinct else "-"


def _h(text: str) -> str:
    return html.escape(text, quote=True)


def _escape(text: str, key: bool = False) -> str:
    r"""Java .properties escaping (keys also escape ``=``, ``:`` and spaces).

    >>> _escape("a b=c", key=True)
    'a\\ b\\=c'
    """
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if key:
        text = text.replace(" ", "\\ ").replace("=", "\\=").replace(":", "\\:")
    return text
