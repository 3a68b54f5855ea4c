"""A case whose model is a hosted VLM API: each sample is sent as the original and as the image
the method sends, with the dataset's prompt; usage, answers and latency are recorded.

The matrix names an API model by factory (``openai_compat`` or ``gigachat``) with its
endpoint, model and the *name* of the environment variable holding the credential::

    [models.my_vllm]
    factory = "openai_compat"
    base_url = "http://127.0.0.1:8000/v1"
    model = "Qwen/Qwen2-VL-7B-Instruct"
    api_key_env = "OPENAI_API_KEY"
    cost_model = "qwen2_vl"        # the offline estimate shown beside the measured usage
    max_requests = 200             # the run's budget: it stops with a clear message when spent

Methods act on the image only (``none``, ``downscale``, ``crop``, ``slim``, ``pack``; a method
that drops tokens inside a local encoder sends the original). Per sample: the measured
usage of both calls, the answers scored against the ground-truth text (WER/CER, SROIE
fields), OCR of the sent image, and the cost model's estimate of the image-token saving
beside the measured one (``usage_vs_estimate`` in the row when they disagree).
Bad input fails the sample (unreachable endpoint, malformed response, refused image) or,
for a refused credential or a spent budget, the case; rows already scored stay.
"""

from __future__ import annotations

import io
import math
import os
import statistics
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import image_side
from ..billing import COST_MODELS, bill_kpis, image_tokens
from ..data.sample import Sample, SampleError
from ..ocr import wer
from ..ocr.fields import field_hits
from ..results import CaseResult, SampleRecord
from .cache import ResponseCache
from .client import ApiClient, ApiReply, Budget
from .redact import REDACTOR, ApiAuthError, ApiError, BudgetExceeded

PROMPTS = {  # by doc_type; a matrix's `prompt` wins
    "receipt": "Transcribe all text in this receipt, line by line.",
    "document": "Transcribe all text in this document, line by line.",
    "screenshot": "Transcribe all text in this screenshot, line by line.",
    "infographic": "Transcribe all text in this image, line by line.",
    "photo": "Describe this image and transcribe any text in it.",
}
DISAGREEMENT = 0.10  # measured vs estimated image-token saving differing by more than this is shown


@dataclass
class ApiModel:
    """What the matrix says of an API model; the credential is read from the environment when
    the client is built and never kept here."""

    name: str
    protocol: str  # "openai_compat" | "gigachat"
    base_url: str
    model: str
    credential_env: str
    cost_model: str | None = "qwen2_vl"
    prompt: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # auth_url, scope, detail, verify_ssl_certs
    concurrency: int = 4
    retries: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 60.0
    max_requests: int | None = None
    max_tokens: int | None = None
    cache_dir: str | None = None

    def credential(self) -> str:
        value = os.environ.get(self.credential_env)
        if not value:
            raise ApiAuthError(f"model {self.name}: environment variable {self.credential_env} is not set "
                               "(the matrix names the variable that holds the credential)")
        REDACTOR.add(value)
        return value

    def backend(self):
        from .backends import GigaChatBackend, OpenAICompat

        if self.protocol == "gigachat":
            return GigaChatBackend(self.base_url, self.model, self.credential(), timeout=self.timeout_s,
                                   **self.options)
        return OpenAICompat(self.base_url, self.model, self.credential(), **self.options)


_BUDGETS: dict[tuple[str, str], Budget] = {}  # per endpoint and model, for the whole run (this process)
_BUDGETS_LOCK = threading.Lock()


def run_budget(model: ApiModel) -> Budget:
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault((model.base_url, model.model), Budget(model.max_requests, model.max_tokens))


def _api_model(protocol: str, credential_default: str):
    def factory(name: str, image_size: int | None = None, *, base_url: str, model: str,
                cost_model: str | None = "qwen2_vl", prompt: str | None = None, concurrency: int = 4,
                retries: int = 4, backoff_s: float = 0.5, timeout_s: float = 60.0, max_requests: int | None = None,
                max_tokens: int | None = None, cache_dir: str | None = None, **options) -> ApiModel:
        env = options.pop("api_key_env" if protocol == "openai_compat" else "credentials_env", credential_default)
        if cost_model is not None and cost_model not in COST_MODELS:
            raise ValueError(f"model {name}: cost_model {cost_model!r} is not one of {COST_MODELS.names()}")
        allowed = {"detail"} if protocol == "openai_compat" else {"auth_url", "scope", "verify_ssl_certs"}
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"model {name}: unknown key(s) {sorted(unknown)} for factory {protocol}")
        return ApiModel(name, protocol, base_url, model, env, cost_model, prompt, options, concurrency, retries,
                        backoff_s, timeout_s, max_requests, max_tokens, cache_dir)

    factory.kind = "api"  # the engine dispatches models of this kind here
    return factory


openai_compat = _api_model("openai_compat", "OPENAI_API_KEY")
gigachat = _api_model("gigachat", "GIGACHAT_CREDENTIALS")


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def evaluate_api_case(case, samples: list[Sample], settings, model: ApiModel | None = None) -> CaseResult:
    """Run ``case`` (a CaseSpec whose model factory is of kind ``api``) on ``samples``."""
    from ..models import MODELS
    from ..paths import cache_dir

    if model is None:
        model = MODELS.get(case.model.factory)(case.model.id, **case.model.params)
    result = CaseResult(case.id, case.model.id, case.method, dict(case.params), case.dataset.id,
                        labels=["api"], env={"endpoint": model.base_url, "api_model": model.model,
                                             "protocol": model.protocol})
    try:
        backend = model.backend()
    except ApiError as exc:
        result.error = str(exc)
        return result
    cache = ResponseCache(model.cache_dir or cache_dir("api"))
    client = ApiClient(backend, cache=cache, budget=run_budget(model), retries=model.retries,
                       backoff_s=model.backoff_s, timeout_s=model.timeout_s, concurrency=model.concurrency)
    ocr = None
    if settings.ocr_engine:
        from ..ocr.engines import get_engine

        ocr = get_engine(settings.ocr_engine)
    target = model.cost_model or "qwen2_vl"
    sizes: list[tuple[tuple[int, int], tuple[int, int]]] = []
    per_chunk = max(1, model.concurrency // 2)  # two calls per sample: `concurrency` calls in flight
    for begin in range(0, len(samples), per_chunk):
        loaded = []
        for sample in samples[begin:begin + per_chunk]:
            record = SampleRecord(sample.sample_id, sample.doc_type)
            result.samples.append(record)
            try:
                image = sample.load()
            except SampleError as exc:
                record.error = str(exc)
                continue
            sent = image_side.send(case.method, image, target=target, cell=int(case.params.get("cell", 28)),
                                   keep=float(case.params.get("keep", 1.0)))
            prompt = model.prompt or PROMPTS.get(sample.doc_type, PROMPTS["document"])
            calls = [(prompt, png_bytes(image))] + ([] if sent.image is image else [(prompt, png_bytes(sent.image))])
            loaded.append((record, sample, image, sent, calls))
        replies = client.ask_many([call for *_, calls in loaded for call in calls])
        for record, sample, image, sent, calls in loaded:
            mine, replies = replies[:len(calls)], replies[len(calls):]
            failure = next((r for r in mine if isinstance(r, ApiError)), None)
            if failure is not None:
                record.error = f"sample {sample.sample_id}: {failure}"
                if isinstance(failure, (ApiAuthError, BudgetExceeded)) and result.error is None:
                    result.error = f"case {case.id} stopped at sample {sample.sample_id}: {failure}"
                continue
            sizes.append((image.size, sent.image.size))
            _score(record, sample, image, sent, mine[0], mine[-1], model.cost_model, ocr)
        if result.error is not None:  # a refused credential or a spent budget: no further call
            break
    result.kpis = _case_kpis(result.samples, sizes, model.cost_model)
    result.env["api_requests_sent"] = str(client.requests_sent)
    gap = result.kpis.get("api_estimate_gap_pct")
    if gap is not None and not math.isnan(gap) and abs(gap) > 100 * DISAGREEMENT:
        result.env["usage_vs_estimate"] = (f"measured image-token saving differs from the {model.cost_model} "
                                           f"estimate by {gap:+.1f}% (see rows' usage_vs_estimate)")
    return result


def _score(record: SampleRecord, sample: Sample, image, sent: image_side.Sent, original: ApiReply,
           reply: ApiReply, cost_model: str | None, ocr) -> None:
    k, info = record.kpis, record.info
    k.update({
        "api_prompt_tokens_original": float(original.prompt_tokens), "api_prompt_tokens_sent": float(reply.prompt_tokens),
        "api_completion_tokens_sent": float(reply.completion_tokens),
        "api_total_tokens_original": float(original.total_tokens), "api_total_tokens_sent": float(reply.total_tokens),
        "api_latency_s_sent": float(reply.latency_s),
    })
    info.update({"answer_original": original.answer, "answer_sent": reply.answer, "sent_size": list(sent.image.size),
                 "cached": reply.cached and original.cached})
    if sent.sent_original_reason:
        info["sent_original_reason"] = sent.sent_original_reason
    if cost_model:
        est_before, est_after = image_tokens(cost_model, *image.size), image_tokens(cost_model, *sent.image.size)
        k["estimated_image_tokens_original"], k["estimated_image_tokens_sent"] = float(est_before), float(est_after)
        measured, estimated = original.prompt_tokens - reply.prompt_tokens, est_before - est_after
        if estimated and abs(measured - estimated) > DISAGREEMENT * abs(estimated):
            info["usage_vs_estimate"] = (f"prompt tokens fell by {measured}, {cost_model} estimates "
                                         f"{estimated} fewer image tokens")
    truth = sample.reference_text
    if truth is not None:
        k["answer_wer"] = wer.word_error_rate(reply.answer, truth)
        k["answer_cer"] = wer.char_error_rate(reply.answer, truth)
        k["answer_wer_original"] = wer.word_error_rate(original.answer, truth)
        info["ocr_reference_words"] = len(truth.split())
    if sample.fields:
        hits = field_hits(reply.answer, sample.fields)
        k["answer_fields_found"] = sum(hits.values()) / len(hits)
    if ocr is not None and truth is not None:
        from ..ocr.cache import cached_read

        try:
            k["ocr_wer_original"] = wer.word_error_rate(cached_read(ocr, np.asarray(image.convert("RGB"))).text, truth)
            k["ocr_wer"] = wer.word_error_rate(cached_read(ocr, np.asarray(sent.image.convert("RGB"))).text, truth)
            k["ocr_wer_drift"] = k["ocr_wer"] - k["ocr_wer_original"]
        except Exception as exc:  # OCR is a second opinion here: its failure must not lose the API row
            info["ocr_error"] = f"OCR failed on sample {sample.sample_id}: {type(exc).__name__}: {exc}"


def _case_kpis(records: list[SampleRecord], sizes, cost_model: str | None) -> dict[str, float]:
    ok = [r for r in records if r.error is None and "api_total_tokens_sent" in r.kpis]

    def mean(key):
        values = [r.kpis[key] for r in ok if key in r.kpis]
        return float(np.mean(values)) if values else float("nan")

    kpis: dict[str, float] = {}
    if not ok:
        return kpis
    before, after = mean("api_total_tokens_original"), mean("api_total_tokens_sent")
    kpis.update({
        "api_total_tokens_before": before, "api_total_tokens_after": after,
        "api_tokens_reduction_pct": 100.0 * (1 - after / before) if before else float("nan"),
        "api_prompt_tokens_before": mean("api_prompt_tokens_original"),
        "api_prompt_tokens_after": mean("api_prompt_tokens_sent"),
        "api_latency_s_p50": float(statistics.median(r.kpis["api_latency_s_sent"] for r in ok)),
    })
    models = tuple(dict.fromkeys(m for m in ("qwen2_vl", "gpt4o", cost_model) if m))
    kpis.update(bill_kpis([s for s, _ in sizes], [t for _, t in sizes], models=models))
    if cost_model:
        measured = kpis["api_prompt_tokens_before"] - kpis["api_prompt_tokens_after"]
        estimated = kpis[f"billed_tokens_{cost_model}_before"] - kpis[f"billed_tokens_{cost_model}_after"]
        kpis["api_estimate_gap_pct"] = 100.0 * (measured - estimated) / estimated if estimated else float("nan")
    for key in ("answer_wer", "answer_cer", "answer_wer_original", "answer_fields_found", "ocr_wer",
                "ocr_wer_original", "ocr_wer_drift"):
        if not math.isnan(mean(key)):
            kpis[key] = mean(key)
    return kpis
