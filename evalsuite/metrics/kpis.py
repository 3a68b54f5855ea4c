"""Every KPI the harness reports: one declaration each, read by everything else.

A declaration (:class:`KPI`) says what the KPI is called, its unit and
direction (thresholds read it: a limit on a higher-is-better KPI is a floor,
on a lower-is-better KPI a ceiling), how a case's value is aggregated from
what the case measured (:class:`Aggregation`: a mean over samples, a
percentile, a corpus-level weighted rate, a ratio of means, a percentile of
the timed forwards ...), where it applies, and where it is shown (the
terminal table's column, the promoted database column).

The engine computes a case's KPIs with :func:`case_kpis` from the per-sample
values its stages wrote on each :class:`~evalsuite.results.SampleRecord`
(``feature_cosine``, ``ocr_wer`` ...); the session asks :func:`not_applicable`
which limits to skip; the sinks and reports take their columns from here.

Adding a KPI is one :func:`register` call: a stage writes the per-sample
value, the declaration says how to aggregate it. A KPI that exists only on
some cases (OCR drift: not on photos without words; a VLM or billing KPI: only
on the cases whose stage measures it) is declared ``applies="measured"``: it
is reported, and its limits checked, only where some sample carries its
per-sample value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..registry import Registry
from ..results import SampleRecord

ALWAYS = "always"  # every case reports it (NaN when nothing was measured)
MEASURED = "measured"  # only cases where some sample carries its per-sample value


@dataclass
class CaseData:
    """What one case measured, for the aggregations.

    ``records``: the samples that did not fail, each with its per-sample KPIs and info;
    ``series``: sequences of the case as a whole, in seconds (``encoder``, ``compression``:
    the timed forwards of the compressed model; ``reference_encoder``: of the uncompressed one);
    ``given``: values the engine computes from the case itself (``ideal_speedup``, from the
    method's token schedule); ``failed``: the samples that could not be scored (unreadable, OCR
    failed)."""

    records: Sequence[SampleRecord]
    series: Mapping[str, Sequence[float]] = field(default_factory=dict)
    given: Mapping[str, float] = field(default_factory=dict)
    failed: Sequence[SampleRecord] = ()  # samples that could not be scored, each with its error

    def values(self, key: str) -> list[float]:
        """``key`` of every sample that has it, NaN included."""
        return [r.kpis[key] for r in self.records if key in r.kpis]


class Aggregation:
    """How a case value comes from what the case measured. ``None``: not measured at all
    (a ``measured`` KPI is then left out of the case)."""

    #: per-sample KPI keys it reads (a sample having one of them means the KPI was measured there)
    sample_keys: tuple[str, ...] = ()

    def __call__(self, data: CaseData) -> float | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Mean(Aggregation):
    """Mean over samples of ``key``, NaN values left out.

    >>> Mean("x")(CaseData([SampleRecord("a", "d", {"x": 1.0}), SampleRecord("b", "d", {"x": float("nan")}),
    ...                     SampleRecord("c", "d", {"x": 3.0})]))
    2.0
    """

    key: str

    @property
    def sample_keys(self) -> tuple[str, ...]:
        return (self.key,)

    def __call__(self, data: CaseData) -> float | None:
        present = data.values(self.key)
        if not present:
            return None
        values = [v for v in present if not math.isnan(v)]
        return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class Percentile(Aggregation):
    """Linear-interpolated ``q``-th percentile over samples of ``key``."""

    key: str
    q: float

    @property
    def sample_keys(self) -> tuple[str, ...]:
        return (self.key,)

    def __call__(self, data: CaseData) -> float | None:
        from .similarity import percentile

        present = data.values(self.key)
        return percentile(present, self.q) if present else None


@dataclass(frozen=True)
class CorpusRate(Aggregation):
    """Corpus-level rate: per-sample rates of ``key`` weighted by the sample's ``weight`` (an
    info field, e.g. reference words), i.e. errors over all reference words, so a photo with
    two stray words does not weigh as much as a page of text. The plain mean when every weight
    is 0.

    >>> r = [SampleRecord("a", "photo", {"ocr_wer": 1.0}, {"ocr_reference_words": 2}),
    ...      SampleRecord("b", "document", {"ocr_wer": 0.1}, {"ocr_reference_words": 98})]
    >>> round(CorpusRate("ocr_wer", "ocr_reference_words")(CaseData(r)), 3)
    0.118
    """

    key: str
    weight: str

    @property
    def sample_keys(self) -> tuple[str, ...]:
        return (self.key,)

    def __call__(self, data: CaseData) -> float | None:
        pairs = [(r.kpis[self.key], r.info.get(self.weight, 0)) for r in data.records if self.key in r.kpis]
        if not pairs:
            return None
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else float(np.mean([v for v, _ in pairs]))


@dataclass(frozen=True)
class ReductionPct(Aggregation):
    """``100 * (1 - mean(after) / mean(before))``: a ratio of means over samples.

    >>> ReductionPct("b", "a").of(256.0, 128.0)
    50.0
    """

    before: str
    after: str

    @property
    def sample_keys(self) -> tuple[str, ...]:
        return (self.before, self.after)

    def __call__(self, data: CaseData) -> float | None:
        before, after = Mean(self.before)(data), Mean(self.after)(data)
        if before is None or after is None:
            return float("nan")
        return self.of(before, after)

    @staticmethod
    def of(before: float, after: float) -> float:
        return 100.0 * (1.0 - after / before) if before else float("nan")


@dataclass(frozen=True)
class SeriesPercentile(Aggregation):
    """``q``-th percentile of a timed series of the case, in ``scale`` units per second."""

    series: str
    q: float
    scale: float = 1e3

    def __call__(self, data: CaseData) -> float | None:
        from .similarity import percentile

        return percentile([x * self.scale for x in data.series.get(self.series, [])], self.q)


@dataclass(frozen=True)
class SeriesIQR(Aggregation):
    """Interquartile range (p75 - p25) of a timed series, in ``scale`` units per second: its spread."""

    series: str
    scale: float = 1e3

    def __call__(self, data: CaseData) -> float | None:
        from .similarity import percentile

        values = [x * self.scale for x in data.series.get(self.series, [])]
        return percentile(values, 75) - percentile(values, 25)


@dataclass(frozen=True)
class MedianRatio(Aggregation):
    """``median(numerator) / median(denominator)`` of two timed series (a speedup)."""

    numerator: str
    denominator: str

    def __call__(self, data: CaseData) -> float | None:
        from .similarity import percentile

        return (percentile(list(data.series.get(self.numerator, [])), 50)
                / percentile(list(data.series.get(self.denominator, [])), 50))


@dataclass(frozen=True)
class Given(Aggregation):
    """A value the engine computes from the case itself (``CaseData.given``); NaN when absent."""

    key: str

    def __call__(self, data: CaseData) -> float | None:
        return data.given.get(self.key, float("nan"))


@dataclass(frozen=True)
class ScoredShare(Aggregation):
    """Share of the case's samples that could be scored; NaN for a case without samples.

    >>> ScoredShare()(CaseData([SampleRecord("a", "d")], failed=[SampleRecord("b", "d", error="unreadable")]))
    0.5
    """

    def __call__(self, data: CaseData) -> float | None:
        total = len(data.records) + len(data.failed)
        return len(data.records) / total if total else float("nan")


@dataclass(frozen=True)
class Count(Aggregation):
    """How many samples were scored (or, with ``failed``, could not be)."""

    failed: bool = False

    def __call__(self, data: CaseData) -> float | None:
        return float(len(data.failed if self.failed else data.records))


@dataclass(frozen=True)
class KPI:
    name: str
    higher_is_better: bool | None  # None: informational, never thresholded
    unit: str = ""
    description: str = ""
    aggregate: Aggregation | None = None  # None: the KPI is written by someone else (a hook, a plugin)
    applies: str = ALWAYS  # or MEASURED: see the module docstring
    column: tuple[str, str] | None = None  # terminal table: (header, format)
    # promoted to a column of its own in the result tables (a column of the schema in
    # evalsuite/sinks/clickhouse.py: a new one needs a column there too)
    db_column: str | None = None

    @property
    def op(self) -> str:
        return ">=" if self.higher_is_better else "<="

    @property
    def sample_key(self) -> str | None:
        """The per-sample KPI it aggregates, when it aggregates exactly one."""
        keys = self.aggregate.sample_keys if self.aggregate is not None else ()
        return keys[0] if len(keys) == 1 else None


KPIS: Registry[KPI] = Registry("KPI")
_ORDER: list[str] = []  # registration order (the registry lists names sorted)


def register(name: str, higher: bool | None, unit: str = "", description: str = "", **declaration: Any) -> KPI:
    """Declare a KPI (see :class:`KPI` for the keywords). Registration order is the order of the
    case's KPIs, the terminal table's columns and the promoted database columns."""
    kpi = KPI(name, higher, unit, description, **declaration)
    KPIS.register(name, kpi)
    _ORDER.append(name)
    return kpi


def declared() -> list[KPI]:
    """Every KPI, in registration order."""
    return [KPIS.get(name) for name in _ORDER]


def case_kpis(data: CaseData) -> dict[str, float]:
    """A case's KPIs from what it measured, in declaration order. ``always`` KPIs are NaN when
    nothing was measured; ``measured`` ones are left out where no sample has their values."""
    kpis = {}
    for kpi in declared():
        if kpi.aggregate is None:
            continue
        value = kpi.aggregate(data)
        if kpi.applies == MEASURED and value is None:
            continue
        kpis[kpi.name] = float("nan") if value is None else value
    return kpis


@dataclass
class SampleCounts:
    """A case's samples: ``scored``; ``skipped``: scored, but without the per-sample value of a
    measured-only KPI that other samples of the case have (OCR: no text in the picture);
    ``failed``: (sample id, error) of those that could not be scored."""

    scored: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.scored + self.skipped + len(self.failed)

    def why_missing(self, shown: int = 3) -> str:
        """Why a case has no value to check: ``no sample could be scored (13 failed: a: why; ...)``."""
        return f"no sample could be scored ({self.failed_text(shown)})" if self.failed else "the case had no samples"

    def failed_text(self, shown: int = 3) -> str:
        """``11 of 13 failed: sroie/002: why; sroie/003: why; ... and 8 more``.

        >>> SampleCounts(2, 0, [("a", "unreadable"), ("b", "unreadable")]).failed_text(1)
        '2 of 4 failed: a: unreadable; ... and 1 more'
        """
        named = "; ".join(f"{sample}: {error}" for sample, error in self.failed[:shown])
        more = f"; ... and {len(self.failed) - shown} more" if len(self.failed) > shown else ""
        return f"{len(self.failed)} of {self.total} failed: {named}{more}"


def sample_counts(samples: Sequence[SampleRecord]) -> SampleCounts:
    """Scored, skipped and failed samples of a case (see :class:`SampleCounts`)."""
    ok = [s for s in samples if s.error is None]
    keys = {kpi.sample_key for kpi in declared() if kpi.applies == MEASURED and kpi.sample_key}
    present = {key for key in keys if any(key in s.kpis for s in ok)}
    skipped = sum(1 for s in ok if any(key not in s.kpis for key in present))
    return SampleCounts(len(ok) - skipped, skipped, [(s.sample_id, s.error) for s in samples if s.error is not None])


def not_applicable(measured: Iterable[str]) -> set[str]:
    """KPIs that do not apply to a case which reported ``measured``: its limits are not checked."""
    measured = set(measured)
    return {kpi.name for kpi in declared() if kpi.applies == MEASURED and kpi.name not in measured}


def table_columns() -> list[tuple[str, str, str]]:
    """The terminal table's ``(header, kpi, format)`` columns."""
    return [(kpi.column[0], kpi.name, kpi.column[1]) for kpi in declared() if kpi.column]


def promoted_columns() -> dict[str, str]:
    """Database column -> KPI, for the KPIs promoted to columns of their own."""
    return {kpi.db_column: kpi.name for kpi in declared() if kpi.db_column}


# -- the declarations --------------------------------------------------------------------
# Per-sample values written by the engine (tokens, cosine, EMD) and the OCR stage (ocr_*,
# sroie_fields_found, with the info fields ocr_reference_words / ocr_reference_chars).

register("tokens_before", None, "tokens", "patch tokens out of the uncompressed encoder (mean per image)",
         aggregate=Mean("tokens_before"), db_column="tokens_before")
register("tokens_after", None, "tokens", "patch tokens out of the compressed encoder (mean per image)",
         aggregate=Mean("tokens_after"), column=("tokens", "{:.0f}"), db_column="tokens_after")
register("tokens_reduction_pct", True, "%", "100 * (1 - tokens_after / tokens_before)",
         aggregate=ReductionPct("tokens_before", "tokens_after"), column=("saved%", "{:.1f}"))
register("feature_cosine_mean", True, "", "cosine of pooled embedding, compressed vs uncompressed, mean over images",
         aggregate=Mean("feature_cosine"), column=("cos", "{:.4f}"), db_column="clip_score")
register("feature_cosine_p5", True, "", "5th percentile over images of the same cosine",
         aggregate=Percentile("feature_cosine", 5), column=("cos_p5", "{:.4f}"))
register("emd", False, "", "earth mover's distance (1 - cosine cost, size-weighted) between output token sets, mean",
         aggregate=Mean("emd"), column=("emd", "{:.4f}"))
register("compression_latency_ms_p50", False, "ms", "time of the compression step itself per forward, median",
         aggregate=SeriesPercentile("compression", 50), db_column="compression_latency_ms_p50")
register("compression_latency_ms_p95", False, "ms", "time of the compression step itself per forward, 95th percentile",
         aggregate=SeriesPercentile("compression", 95), column=("comp_p95ms", "{:.2f}"),
         db_column="compression_latency_ms_p95")
register("encoder_ms_p50", False, "ms", "whole encoder forward, median",
         aggregate=SeriesPercentile("encoder", 50), column=("enc_p50ms", "{:.1f}"), db_column="encoder_ms_p50")
register("encoder_ms_p95", False, "ms", "whole encoder forward, 95th percentile",
         aggregate=SeriesPercentile("encoder", 95), db_column="encoder_ms_p95")
register("throughput_speedup", True, "x", "encoder images/s against the same model's `none` case",
         aggregate=MedianRatio("reference_encoder", "encoder"), column=("speedup", "{:.2f}"))
register("ideal_speedup", None, "x", "speedup implied by the method's token schedule (FLOP model)",
         aggregate=Given("ideal_speedup"), column=("ideal", "{:.2f}"))
# OCR: not on samples whose original holds no text and that have no ground truth (the OCR stage
# writes no values there), so not on a dataset of such photos at all.
register("ocr_wer", False, "",
         "word error rate of OCR of the masked image that would be sent (dropped patches blank, merged groups one colour; not what a VLM reads inside itself) against the reference, corpus-level (weighted by reference words)",
         aggregate=CorpusRate("ocr_wer", "ocr_reference_words"), applies=MEASURED, column=("WER", "{:.3f}"),
         db_column="ocr_wer")
register("ocr_cer", False, "",
         "character error rate of OCR(reconstruction) against the reference, corpus-level (weighted by characters)",
         aggregate=CorpusRate("ocr_cer", "ocr_reference_chars"), applies=MEASURED)
register("ocr_wer_original", None, "", "word error rate of OCR(original) against the reference, corpus-level",
         aggregate=CorpusRate("ocr_wer_original", "ocr_reference_words"), applies=MEASURED)
register("ocr_cer_original", None, "", "character error rate of OCR(original) against the reference, corpus-level",
         aggregate=CorpusRate("ocr_cer_original", "ocr_reference_chars"), applies=MEASURED)
register("ocr_wer_drift", False, "", "ocr_wer - ocr_wer_original (corpus-level, over samples with text)",
         aggregate=CorpusRate("ocr_wer_drift", "ocr_reference_words"), applies=MEASURED,
         column=("WERdrift", "{:+.3f}"))
register("ocr_cer_drift", False, "", "ocr_cer - ocr_cer_original (corpus-level, over samples with text)",
         aggregate=CorpusRate("ocr_cer_drift", "ocr_reference_chars"), applies=MEASURED,
         column=("CERdrift", "{:+.3f}"))
# only where samples have key fields (SROIE)
register("sroie_fields_found", True, "",
         "fraction of SROIE key fields (company, date, address, total) found in the OCR text",
         aggregate=Mean("sroie_fields_found"), applies=MEASURED)
# The samples themselves: a case where too few could be scored fails (``scored_share = 0.9`` in
# thresholds.toml), instead of passing on the two images that happened to load.
register("scored_share", True, "", "share of the case's samples that could be scored (read, and OCR'd where it runs)",
         aggregate=ScoredShare())
register("samples_scored", None, "samples", "samples scored", aggregate=Count())
register("samples_failed", None, "samples", "samples that could not be scored (unreadable, OCR failed)",
         aggregate=Count(failed=True))
# The spread of each timed series: a p95 far above the p50, or a wide IQR, is a loaded host, not the method
# (the noisy flag: evalsuite.thresholds.TimingNoise).
register("compression_latency_ms_iqr", None, "ms", "interquartile range of the compression step's time per forward",
         aggregate=SeriesIQR("compression"))
register("encoder_ms_iqr", None, "ms", "interquartile range of the whole encoder forward",
         aggregate=SeriesIQR("encoder"))
# Retrieval stability (evalsuite.metrics.retrieval): does the compressed embedding still find its own image
# among the dataset's uncompressed ones (recorded per sample only where the dataset has more than k images).
register("retrieval_recall_at_1", True, "",
         "share of images whose compressed embedding retrieves their own uncompressed one first, among the dataset's",
         aggregate=Mean("retrieval_hit_at_1"), applies=MEASURED)
register("retrieval_recall_at_5", True, "", "the same within the 5 nearest (datasets of more than 5 images)",
         aggregate=Mean("retrieval_hit_at_5"), applies=MEASURED)
# Written by the stages that measure them, as case values (no per-sample aggregation here): in-LM
# dropping (evalsuite.vlm.lm_drop, each against the unpatched model's run on the same inputs) and
# text as pixels (evalsuite.metrics.text_tokens: ratios of totals over the case's pages).
register("lm_visual_tokens_per_layer", None, "tokens", "visual tokens each language-model layer saw, per layer (mean per sample)",
         applies=MEASURED)
register("lm_visual_tokens_layer_avg", None, "tokens", "mean over LM layers of the visual tokens each saw (576 x 2 + 144 x 30 over 32 layers = 171)",
         applies=MEASURED)
register("lm_kv_cache_bytes", False, "B", "K/V cache bytes stored after prefill (kept tokens per layer, batch padding included)",
         applies=MEASURED)
register("lm_kv_cache_reduction_pct", True, "%", "100 * (1 - lm_kv_cache_bytes / the unpatched model's)",
         applies=MEASURED)
register("lm_prefill_ms", False, "ms", "language-model prefill (time to first token after the vision tower), CUDA-synchronised",
         applies=MEASURED)
register("lm_prefill_speedup", True, "x", "unpatched lm_prefill_ms / this one",
         applies=MEASURED)
register("lm_decode_ms_per_token", False, "ms", "greedy decode time per generated token (decode path recorded beside it)",
         applies=MEASURED)
register("lm_decode_speedup", True, "x", "unpatched lm_decode_ms_per_token / this one, same decode path",
         applies=MEASURED)
register("lm_generation_ms", False, "ms", "end to end: embedding, vision tower, prefill and decode of max_new_tokens",
         applies=MEASURED)
register("lm_generation_speedup", True, "x", "unpatched lm_generation_ms / this one",
         applies=MEASURED)
register("text_tokens", None, "tokens", "text_pixels pages: tokens of the drawn text under the text tokenizer (Qwen2 BPE unless the case brings its own), mean per page",
         applies=MEASURED)
register("vision_tokens", None, "tokens", "text_pixels pages: vision tokens the page cost (encoder tokens after compression, a VLM's or a provider's count where recorded), mean per page",
         applies=MEASURED)
register("optical_compression_ratio", True, "x", "text_pixels pages: text_tokens / vision_tokens (ratio of totals): tokens against tokens, as DeepSeek-OCR counts",
         applies=MEASURED)
register("char_accuracy", True, "", "text_pixels pages: 1 - CER of the PP-OCR read-back of what the compressed tokens kept, weighted by reference characters",
         applies=MEASURED)
register("char_accuracy_vlm", True, "", "text_pixels pages: 1 - CER of the VLM's read-back (VLM cases), weighted by reference characters",
         applies=MEASURED)
register("bytes_ratio_text_over_vision", None, "x", "BYTES, not tokens: UTF-8 bytes of the text over bytes of the vision-token activations (tokens x dim x dtype bytes), the way the 40-80x claims count",
         applies=MEASURED)
# What a hosted model is billed for the image it is sent (evalsuite.billing's cost models; computed by
# evalsuite.billing.bill_kpis for every case, so a method that lowers no bill reads 0%).
for _model, _label in (("qwen2_vl", "Qwen2-VL (smart_resize, 28-px cells + 2)"), ("gpt4o", "GPT-4o (85 + 170 per 512-px tile)")):
    register(f"billed_tokens_{_model}_before", None, "tokens", f"billed image tokens of the original under {_label}, mean per image",
             applies=MEASURED)
    register(f"billed_tokens_{_model}_after", None, "tokens", f"billed image tokens of the image sent under {_label}, mean per image",
             applies=MEASURED)
register("billed_tokens_qwen2_vl_reduction_pct", True, "%", "100 * (1 - after / before) of the billed image tokens under Qwen2-VL",
         applies=MEASURED, column=("bill_qwen%", "{:.1f}"))
register("billed_tokens_gpt4o_reduction_pct", True, "%", "100 * (1 - after / before) of the billed image tokens under GPT-4o",
         applies=MEASURED, column=("bill_4o%", "{:.1f}"))
# Hosted VLM cases (evalsuite.api.case), measured from the responses' usage.
register("api_total_tokens_before", None, "tokens", "usage.total_tokens of the hosted VLM for the original image, mean per sample",
         applies=MEASURED)
register("api_total_tokens_after", None, "tokens", "usage.total_tokens of the hosted VLM for the image sent, mean per sample",
         applies=MEASURED)
register("api_tokens_reduction_pct", True, "%", "100 * (1 - api_total_tokens_after / api_total_tokens_before): the measured bill",
         applies=MEASURED)
register("api_prompt_tokens_before", None, "tokens", "usage.prompt_tokens for the original image, mean per sample",
         applies=MEASURED)
register("api_prompt_tokens_after", None, "tokens", "usage.prompt_tokens for the image sent, mean per sample",
         applies=MEASURED)
register("api_latency_s_p50", False, "s", "latency of the hosted VLM's call for the image sent, median",
         applies=MEASURED)
register("api_estimate_gap_pct", None, "%", "measured prompt-token saving vs the cost model's image-token saving, in % of the estimate",
         applies=MEASURED)
register("answer_wer", False, "", "word error rate of the VLM's answer (local: corpus-level; hosted: the image sent, mean) against the ground truth",
         applies=MEASURED)
register("answer_cer", False, "", "character error rate of the VLM's answer (local: corpus-level; hosted: the image sent, mean) against the ground truth",
         applies=MEASURED)
register("answer_wer_original", None, "", "word error rate of the hosted VLM's answer for the original image, mean",
         applies=MEASURED)
register("answer_fields_found", True, "", "fraction of SROIE key fields found in the hosted VLM's answer (image sent)",
         applies=MEASURED)
# VLM cases (evalsuite.vlm.case computes them): tokens_* and compression_latency_* above count the visual
# tokens into the language model and the pre-LLM selection step (one batch's selections, repeated after a
# warm-up as the encoder cases repeat their forward); the answers below gate (not from random
# weights). answer_wer/answer_cer are also the hosted VLM's (evalsuite.api.case) in API cases.
register("lm_tokens", None, "tokens", "VLM: tokens into the language model per sample (text + visual), mean",
         applies=MEASURED)
register("answer_wer_uncompressed", None, "", "VLM: answer_wer of the uncompressed model's answers",
         applies=MEASURED)
register("answer_cer_uncompressed", None, "", "VLM: answer_cer of the uncompressed model's answers",
         applies=MEASURED)
register("answer_wer_drift", False, "", "VLM: answer_wer - answer_wer_uncompressed",
         applies=MEASURED)
register("answer_cer_drift", False, "", "VLM: answer_cer - answer_cer_uncompressed",
         applies=MEASURED)
register("answer_agreement", True, "", "VLM: 1 - token edit distance / longer length, answer vs uncompressed answer, mean",
         applies=MEASURED)
register("answer_exact_match", True, "", "VLM: fraction of answers token-for-token equal to the uncompressed answer",
         applies=MEASURED)
register("answer_sroie_fields_found", True, "", "VLM: fraction of SROIE key fields found in the answer",
         applies=MEASURED)
register("vision_ms_p50", False, "ms", "VLM: vision tower (PatchMerger included) per batch, median",
         applies=MEASURED)
register("prefill_ms_p50", False, "ms", "VLM: language-model prefill per batch, median",
         applies=MEASURED)
register("ttft_ms_p50", False, "ms", "VLM: time to first token per batch (tower + compression + prefill), median",
         applies=MEASURED)
register("decode_ms_per_token_p50", False, "ms", "VLM: one eager decode step of the batch, median",
         applies=MEASURED)
register("generation_ms_p50", False, "ms", "VLM: image in to last token per batch, median",
         applies=MEASURED)
register("prefill_speedup", None, "x", "VLM: uncompressed prefill time / this case's, medians",
         applies=MEASURED)
